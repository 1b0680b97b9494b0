"""preprocess.labeling.results: video items, token sums, the cache round trip, the summary."""

from __future__ import annotations

from pathlib import Path

import pytest

from preprocess.labeling.results import (
    Failure,
    LabelResult,
    TokenUsage,
    VideoItem,
    format_summary,
    summarize,
    video_items,
)


def result(video_id: str, label: int, first: int, *, from_cache: bool = False) -> LabelResult:
    return LabelResult(
        video_id, "0" * 64, "m", "p", label, 0.7, "why", ("cue",), "said", first, 0.6,
        TokenUsage(10, 2, 3, 15), from_cache=from_cache,
    )  # fmt: skip


def test_video_items_from_tuples_refuse_bad_labels_and_repeated_ids():
    items = video_items([("a", "a.mp4"), ("b", Path("b.mp4"), 0), VideoItem("c", Path("c.mp4"))])
    assert [(v.video_id, v.label) for v in items] == [("a", None), ("b", 0), ("c", None)]
    with pytest.raises(ValueError, match="video x: ground-truth label 2"):
        video_items([("x", "x.mp4", 2)])
    with pytest.raises(ValueError, match=r"duplicate video ids: \['a'\]"):
        video_items([("a", "1.mp4"), ("a", "2.mp4")])


def test_label_result_round_trips_through_json():
    original = result("v", 1, 0)
    back = LabelResult.from_json(original.to_json(), from_cache=True)
    assert back == LabelResult(**{**original.__dict__, "from_cache": True})
    assert TokenUsage(1, 2, 3, 4) + TokenUsage(10, 20, 30, 40) == TokenUsage(11, 22, 33, 44)


def test_summary_counts_fresh_tokens_agreement_and_flips():
    results = {
        "a": result("a", 1, 1),
        "b": result("b", 0, 1),  # reflection flipped it
        "c": result("c", 1, 1, from_cache=True),
        "d": Failure("d", "blocked", "finish reason SAFETY", usage=TokenUsage(5, 0, 0, 5)),
    }
    truth = [VideoItem("a", Path("a"), 1), VideoItem("b", Path("b"), 1), VideoItem("c", Path("c"))]
    summary = summarize(results, truth)
    assert (summary.labelled, summary.cached, summary.failed) == (2, 1, 1)
    assert summary.failures_by_reason == {"blocked": 1}
    assert summary.usage == TokenUsage(25, 4, 6, 35)  # a, b and the failure; not the cached c
    assert (summary.correct, summary.with_truth, summary.flipped_by_reflection) == (1, 2, 1)
    text = format_summary(summary)
    assert "labelled 2, cached 1, failed 1 ({'blocked': 1})" in text
    assert "agreement with ground truth: 1/2 = 0.500" in text
