"""The audio track of a video container, decoded by PyAV (FFmpeg) as 16 kHz mono float32.

Streamed in blocks, so a three-hour interview holds one block in memory, not its whole
track (3 h at 16 kHz float32 would be 690 MB). Packets FFmpeg cannot decode are skipped
and counted in the log, not fatal: a damaged stretch costs its own seconds only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000  # what Whisper's feature extractor expects


class NoAudioTrack(ValueError):
    """The container has no audio stream: there is no speech to transcribe."""

    def __init__(self, path: str | Path):
        super().__init__(f"{path}: the video has no audio track")
        self.path = Path(path)


class AudioReadError(ValueError):
    """The file could not be opened as a media container."""


def audio_blocks(
    path: str | Path, block_seconds: float = 600.0, sample_rate: int = SAMPLE_RATE
) -> Iterator[tuple[float, np.ndarray]]:
    """Yields ``(start in seconds, float32 mono samples)`` of the first audio track, in
    blocks of ``block_seconds`` (the last one shorter). ``NoAudioTrack`` if there is none."""
    block = round(block_seconds * sample_rate)
    if block <= 0:
        raise ValueError(f"block_seconds must be positive; got {block_seconds}")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as err:
        raise AudioReadError(f"{path}: not a readable media file ({err})") from err
    with container:
        if not container.streams.audio:
            raise NoAudioTrack(path)
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        pending: list[np.ndarray] = []
        held = 0
        emitted = 0
        skipped = 0
        for frames in _decoded(container, stream):
            if frames is None:
                skipped += 1
                continue
            for frame in frames:
                for out in resampler.resample(frame):
                    pending.append(out.to_ndarray().reshape(-1))
                    held += pending[-1].size
            while held >= block:
                samples = np.concatenate(pending)
                yield emitted / sample_rate, samples[:block]
                emitted += block
                pending, held = [samples[block:]], samples.size - block
        for out in resampler.resample(None):  # what the resampler still holds
            pending.append(out.to_ndarray().reshape(-1))
        if skipped:
            log.warning("%s: skipped %d audio packets FFmpeg could not decode", path, skipped)
        rest = np.concatenate(pending) if pending else np.zeros(0, np.float32)
        for start in range(0, rest.size, block):
            yield (emitted + start) / sample_rate, rest[start : start + block]


def _decoded(container: av.container.InputContainer, stream) -> Iterator[list | None]:
    """Each packet's decoded frames, or None for a packet that does not decode."""
    for packet in container.demux(stream):
        try:
            yield packet.decode()
        except av.InvalidDataError:
            yield None
