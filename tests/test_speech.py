"""preprocess.speech: audio out of real containers (PyAV), and transcripts from a small,
randomly initialised Whisper saved here (tests/speech_models.py) and loaded by the real
pipeline code, offline."""

import os
import socket

import av
import numpy as np
import pytest
from speech_models import CARPHONE, TONE_HZ, tiny_whisper, write_video_with_tone

from preprocess.speech.audio import SAMPLE_RATE, AudioReadError, NoAudioTrack, audio_blocks
from preprocess.speech.whisper_asr import Segment, Transcript, load_asr, transcribe


@pytest.fixture(scope="module")
def tone_video(tmp_path_factory):
    return write_video_with_tone(tmp_path_factory.mktemp("video") / "tone.mp4", 4.0)


def test_audio_blocks_give_the_tone_at_16k_mono_in_blocks(tone_video):
    blocks = list(audio_blocks(tone_video, block_seconds=1.5))
    starts = [s for s, _ in blocks]
    assert starts == [0.0, 1.5, 3.0]
    assert [b.size for _, b in blocks[:2]] == [24_000, 24_000]
    samples = np.concatenate([b for _, b in blocks])
    assert samples.dtype == np.float32
    # AAC adds its encoder delay: a few thousand samples at most.
    assert 4.0 * SAMPLE_RATE <= samples.size <= 4.0 * SAMPLE_RATE + 4096
    spectrum = np.abs(np.fft.rfft(samples))
    peak_hz = np.argmax(spectrum) * SAMPLE_RATE / samples.size
    assert abs(peak_hz - TONE_HZ) < 2.0
    # FFmpeg's default stereo-to-mono mix, (L + R) / sqrt(2), as Whisper's own loader
    # (`ffmpeg -ac 1`) hears it: the 0.3 tone in both channels comes out at 0.3 sqrt(2).
    middle = samples[SAMPLE_RATE : 3 * SAMPLE_RATE]
    assert np.sqrt(2 * np.mean(middle**2)) == pytest.approx(0.3 * np.sqrt(2), rel=0.02)


def test_damaged_audio_packets_are_skipped_and_counted_not_fatal(tone_video, tmp_path, caplog):
    data = bytearray(tone_video.read_bytes())
    rng = np.random.default_rng(0)
    for offset in range(len(data) // 3, len(data) // 3 + 3000, 7):  # the middle of the data
        data[offset] = rng.integers(0, 256)
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    samples = np.concatenate([b for _, b in audio_blocks(damaged)])
    assert "damaged.mp4: skipped" in caplog.text and "could not decode" in caplog.text
    assert 3.0 * SAMPLE_RATE < samples.size < 4.0 * SAMPLE_RATE  # only the damaged stretch lost


def test_a_video_without_audio_raises_no_audio_track_naming_it():
    with pytest.raises(NoAudioTrack, match="carphone_pristine.mp4: the video has no audio"):
        next(audio_blocks(CARPHONE))


def test_a_file_that_is_not_media_is_refused_by_name(tmp_path):
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video")
    with pytest.raises(AudioReadError, match="notes.mp4: not a readable media file"):
        next(audio_blocks(bad))


@pytest.fixture(scope="module")
def asr(tmp_path_factory):
    import torch

    torch.manual_seed(0)
    return load_asr(tiny_whisper(tmp_path_factory.mktemp("whisper")), "cpu")


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_loads_offline_from_a_saved_directory(tmp_path, no_network):
    asr = load_asr(tiny_whisper(tmp_path / "whisper"), "cpu")
    assert type(asr.model).__name__ == "WhisperForConditionalGeneration"
    assert asr.feature_extractor.sampling_rate == SAMPLE_RATE
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_transcribe_gives_the_text_and_segments_timed_on_the_whole_track(asr, tone_video):
    blocks = list(audio_blocks(tone_video, block_seconds=2.5))
    assert [start for start, _ in blocks] == [0.0, 2.5]
    heard = [asr(samples, return_timestamps=True) for _, samples in blocks]
    got = transcribe(tone_video, asr, block_seconds=2.5)

    assert isinstance(got, Transcript) and all(isinstance(s, Segment) for s in got.segments)
    assert got.text == "".join(h["text"] for h in heard).strip()
    per_block = [[c for c in h["chunks"] if c["text"].strip()] for h in heard]
    assert [s.text for s in got.segments] == [c["text"].strip() for b in per_block for c in b]
    first, second = got.segments[: len(per_block[0])], got.segments[len(per_block[0]) :]
    assert first and second
    # Times count from the start of the track and stay inside the block they were heard in.
    assert all(0.0 <= s.start <= s.end <= 2.5 for s in first)
    assert all(2.5 <= s.start <= s.end <= 2.5 + blocks[1][1].size / SAMPLE_RATE for s in second)
    own_start = min(per_block[1][0]["timestamp"][0], blocks[1][1].size / SAMPLE_RATE)
    assert second[0].start == pytest.approx(2.5 + own_start)


def test_speech_past_whispers_30_s_window_goes_through_its_long_form_decoding(asr, tmp_path):
    seconds, rate = 35.0, 22_050
    wav = tmp_path / "long.wav"
    with av.open(str(wav), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=rate, layout="mono")
        t = np.arange(round(seconds * rate)) / rate
        tone = (0.3 * 32767 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.int16)[None]
        frame = av.AudioFrame.from_ndarray(tone, format="s16", layout="mono")
        frame.sample_rate = rate
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    got = transcribe(wav, asr)
    assert got.segments and all(0.0 <= s.start <= s.end <= seconds for s in got.segments)
    assert max(s.end for s in got.segments) > 30.0  # past the first 30 s window


def test_transcribe_says_which_video_has_no_audio(asr):
    with pytest.raises(NoAudioTrack) as info:
        transcribe(CARPHONE, asr)
    assert info.value.path == CARPHONE
