"""Text of a record (transcript, the labeler's reasoning) to token ids for the text branch.

Two tokenizers: a Hugging Face tokenizer loaded from the same directory as the
BERT weights (``AutoTokenizer.from_pretrained``; building one from a vocab
file alone maps every word to [UNK]), or a hashing word tokenizer for the
small text Transformer trained from scratch, which needs no vocabulary file.
"""

from __future__ import annotations

import re
import zlib

import numpy as np

from hemo_jax.contract.schema import VideoRecord

TEXT_SOURCES = ("transcript", "reasoning", "both")
_WORD = re.compile(r"[a-z0-9']+")


class HashingTokenizer:
    """Lower-cased words hashed (crc32) into ``vocab_size`` ids; 0 is padding, 1 is [CLS]."""

    def __init__(self, vocab_size: int = 8192):
        if vocab_size < 3:
            raise ValueError(f"vocab_size must be at least 3, got {vocab_size}")
        self.vocab_size = vocab_size

    def __call__(self, text: str, max_length: int) -> tuple[np.ndarray, np.ndarray]:
        words = _WORD.findall(text.lower())[: max_length - 1]
        ids = np.zeros(max_length, np.int32)
        ids[0] = 1
        for i, w in enumerate(words, start=1):
            ids[i] = 2 + zlib.crc32(w.encode()) % (self.vocab_size - 2)
        mask = np.arange(max_length) < len(words) + 1
        return ids, mask


class PretrainedTokenizer:
    """A Hugging Face tokenizer from a local model directory (offline)."""

    def __init__(self, directory: str):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        self.vocab_size = self.tokenizer.vocab_size

    def __call__(self, text: str, max_length: int) -> tuple[np.ndarray, np.ndarray]:
        enc = self.tokenizer(
            text, max_length=max_length, truncation=True, padding="max_length", return_tensors="np"
        )
        return enc["input_ids"][0].astype(np.int32), enc["attention_mask"][0].astype(bool)


class RecordText:
    """``record -> {"text_ids", "text_mask"}``, the pipeline's text hook. Picklable."""

    def __init__(
        self, tokenizer: HashingTokenizer | PretrainedTokenizer, source: str, max_length: int
    ):
        if source not in TEXT_SOURCES:
            raise ValueError(f"text source {source!r} not one of {TEXT_SOURCES}")
        self.tokenizer, self.source, self.max_length = tokenizer, source, max_length

    def text(self, record: VideoRecord) -> str:
        if self.source == "transcript":
            return record.transcript
        if self.source == "reasoning":
            return record.reasoning
        # The reasoning is short and carries the labeler's judgement; putting it first means
        # truncation to max_length cuts the tail of a long transcript, never the judgement.
        return f"{record.reasoning}\n{record.transcript}"

    def __call__(self, record: VideoRecord) -> dict[str, np.ndarray]:
        ids, mask = self.tokenizer(self.text(record), self.max_length)
        return {"text_ids": ids, "text_mask": mask}
