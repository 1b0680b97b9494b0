"""Speech transcripts: Whisper through transformers' speech-recognition pipeline.

``load_asr("openai/whisper-small", "cuda")`` (a Hugging Face model name, fetched through
the hub's own cache, or a local directory written by ``save_pretrained``) and
``transcribe(video, asr)`` give the record's transcript text and its timed segments.
The audio is read in blocks (``preprocess.speech.audio``); within a block Whisper runs
its own long-form decoding (30 s windows, each started where the last segment ended), so
only a word that straddles a block boundary (every 10 minutes by default) can be cut.
A video with no audio track raises ``NoAudioTrack`` naming the file: the caller says so
and carries on without a transcript.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from preprocess.speech.audio import SAMPLE_RATE, audio_blocks


@dataclasses.dataclass(frozen=True)
class Segment:
    """A stretch of speech: start and end in seconds from the start of the audio track."""

    start: float
    end: float
    text: str


@dataclasses.dataclass(frozen=True)
class Transcript:
    text: str
    segments: tuple[Segment, ...]


def load_asr(model_name_or_dir: str | Path, device: str = "cpu"):
    """A transformers speech-recognition pipeline for a Whisper model (float16 on CUDA)."""
    import torch
    from transformers import pipeline

    dtype = torch.float16 if str(device).startswith("cuda") else torch.float32
    return pipeline(
        "automatic-speech-recognition", model=str(model_name_or_dir), device=device, dtype=dtype
    )


def transcribe(video_path: str | Path, asr, *, block_seconds: float = 600.0) -> Transcript:
    """The speech of the video's first audio track, as text and timed segments."""
    pieces: list[str] = []
    segments: list[Segment] = []
    for start, samples in audio_blocks(video_path, block_seconds):
        if samples.size == 0:
            continue
        duration = samples.size / SAMPLE_RATE
        out = asr({"raw": samples, "sampling_rate": SAMPLE_RATE}, return_timestamps=True)
        pieces.append(out["text"])
        for chunk in out["chunks"]:
            begin, end = chunk["timestamp"]
            # The last segment of a window can come without an end; no segment may run
            # past the block it was heard in.
            begin = min(max(begin or 0.0, 0.0), duration)
            end = duration if end is None else min(max(end, begin), duration)
            if text := chunk["text"].strip():
                segments.append(Segment(start + begin, start + end, text))
    return Transcript("".join(pieces).strip(), tuple(segments))
