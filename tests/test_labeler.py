"""preprocess.labeling.labeler: the two-turn conversation, through the real google-genai client,
against the simulated VLM server (retries, bad replies, uploads, cache, concurrency)."""

from __future__ import annotations

import json
import os
import time

import pytest
from labeling import KEY, config, make_videos, run, sha, truth_of, turn_counts

from preprocess.labeling import labeler, prompts
from preprocess.labeling.results import Failure, LabelResult, VideoItem, summarize
from preprocess.synthetic import vlm_oracle, vlm_sim


def test_labels_every_video_with_two_turns(tmp_path):
    items = make_videos(tmp_path / "v", 4)
    with vlm_sim.SimulatedVLM(truth_of(items), accuracy=1.0, api_key=KEY) as sim:
        results = run(items, config(tmp_path, sim))
        for item in items:
            assert turn_counts(sim, sha(item), "answered") == [1, 1]
        assert {r.video_source for r in sim.log} == {"inline"}
    for item in items:
        result = results[item.video_id]
        assert isinstance(result, LabelResult)
        assert result.pseudo_label == item.label  # accuracy 1.0
        assert 0.0 <= result.pseudo_confidence <= 1.0
        assert result.reasoning and result.observations and result.transcript_summary
        assert result.model_version == "simulated-vlm"
        assert result.prompt_version == prompts.PROMPT_VERSION
        assert result.usage.total > 0 and result.usage.thoughts > 0
        assert set(result.record_fields()) == {"pseudo_label", "pseudo_confidence", "reasoning"}
    summary = summarize(results, items)
    assert (summary.labelled, summary.cached, summary.failed) == (4, 0, 0)
    assert (summary.correct, summary.with_truth) == (4, 4)
    assert summary.usage.total == sum(r.usage.total for r in results.values())


@pytest.mark.parametrize(("faults", "turn1_requests"), [(["429", "429"], 3), (["500"], 2)])
def test_rate_limits_and_server_errors_are_retried(tmp_path, faults, turn1_requests):
    items = make_videos(tmp_path / "v", 2)
    plan = vlm_oracle.FaultPlan(by_video={sha(items[0]): faults})
    with vlm_sim.SimulatedVLM(truth_of(items), faults=plan, api_key=KEY) as sim:
        results = run(items, config(tmp_path, sim))
        assert turn_counts(sim, sha(items[0])) == [turn1_requests, 1]
        assert turn_counts(sim, sha(items[1])) == [1, 1]
    assert all(isinstance(r, LabelResult) for r in results.values())


def test_retries_stop_after_max_attempts(tmp_path):
    items = make_videos(tmp_path / "v", 1)
    plan = vlm_oracle.FaultPlan(by_video={sha(items[0]): ["503"] * 10})
    with vlm_sim.SimulatedVLM(faults=plan, api_key=KEY) as sim:
        (result,) = run(items, config(tmp_path, sim, max_attempts=3)).values()
        assert turn_counts(sim, sha(items[0])) == [3, 0]
    assert isinstance(result, Failure)
    assert (result.reason, result.attempts) == ("server_error", 3)


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("malformed", "malformed_json"),
        ("empty", "empty"),
        ("safety", "blocked"),
        ("schema", "schema_invalid"),
    ],
)
def test_reply_that_stays_bad_is_a_failure_and_the_batch_goes_on(tmp_path, fault, reason):
    items = make_videos(tmp_path / "v", 3)
    bad = items[1]
    plan = vlm_oracle.FaultPlan(by_video={sha(bad): [fault, fault]})
    with vlm_sim.SimulatedVLM(truth_of(items), faults=plan, api_key=KEY) as sim:
        cfg = config(tmp_path, sim, bad_response_attempts=2)
        results = run(items, cfg)
        assert turn_counts(sim, sha(bad)) == [2, 0]
        failure = results[bad.video_id]
        assert isinstance(failure, Failure)
        assert (failure.reason, failure.attempts, failure.video_sha256) == (reason, 2, sha(bad))
        assert failure.usage.prompt > 0  # the bad replies were paid for
        others = [results[v.video_id] for v in items if v is not bad]
        assert all(isinstance(r, LabelResult) for r in others)
        recorded = json.loads(cfg.failures_file.read_text())
        assert list(recorded) == [bad.video_id]
        assert recorded[bad.video_id]["reason"] == reason

        # The rerun skips the labelled videos and redoes the failed one.
        before = len(sim.log)
        rerun = run(items, cfg)
        assert {r.video_sha for r in sim.log[before:] if r.kind == "generate"} == {sha(bad)}
    assert isinstance(rerun[bad.video_id], LabelResult)
    assert json.loads(cfg.failures_file.read_text()) == {}


def test_one_bad_reply_is_asked_again(tmp_path):
    items = make_videos(tmp_path / "v", 1)
    plan = vlm_oracle.FaultPlan(by_video={sha(items[0]): ["malformed"]})
    with vlm_sim.SimulatedVLM(faults=plan, api_key=KEY) as sim:
        (result,) = run(items, config(tmp_path, sim)).values()
        assert turn_counts(sim, sha(items[0])) == [2, 1]
    assert isinstance(result, LabelResult)


def test_slow_reply_times_out_and_is_retried_or_fails(tmp_path):
    items = make_videos(tmp_path / "v", 2)
    plan = vlm_oracle.FaultPlan(by_video={sha(items[0]): ["slow"], sha(items[1]): ["slow"] * 5})
    with vlm_sim.SimulatedVLM(faults=plan, slow_s=30.0, api_key=KEY) as sim:
        start = time.monotonic()
        cfg = config(tmp_path, sim, timeout_s=0.3, max_attempts=2)
        results = run(items, cfg)
        assert time.monotonic() - start < 10
        assert turn_counts(sim, sha(items[0])) == [2, 1]
        assert turn_counts(sim, sha(items[0]), "abandoned") == [1, 0]
        assert turn_counts(sim, sha(items[1])) == [2, 0]
    assert isinstance(results[items[0].video_id], LabelResult)
    failure = results[items[1].video_id]
    assert isinstance(failure, Failure)
    assert (failure.reason, failure.attempts) == ("timeout", 2)


def test_large_videos_go_through_the_files_api(tmp_path):
    items = make_videos(tmp_path / "v", 3, size=4096)
    small = VideoItem("small", tmp_path / "v" / "small.mp4", 1)
    small.path.write_bytes(os.urandom(100))
    items.append(small)
    with vlm_sim.SimulatedVLM(
        truth_of(items), accuracy=1.0, api_key=KEY, processing_polls=2
    ) as sim:
        results = run(items, config(tmp_path, sim, inline_limit_bytes=1000))
        log = sim.log
    kinds = [r.kind for r in log]
    assert kinds.count("upload_start") == 3  # not the small one
    assert kinds.count("file_get") == 3 * 3  # PROCESSING twice, then ACTIVE
    assert kinds.count("file_delete") == 3
    sources = {r.video_sha: r.video_source for r in log if r.kind == "generate"}
    assert sources.pop(sha(small)) == "inline"
    assert set(sources.values()) == {"file"}
    # The server resolved each uploaded file to the right video: labels match the truth.
    assert all(results[v.video_id].pseudo_label == v.label for v in items)


def test_cache_means_nothing_is_paid_twice(tmp_path):
    items = make_videos(tmp_path / "v", 3)
    with vlm_sim.SimulatedVLM(truth_of(items), api_key=KEY) as sim:
        cfg = config(tmp_path, sim)
        first = run(items, cfg)
        n_requests = len(sim.log)
        again = run(items, cfg)
        assert len(sim.log) == n_requests
        renamed = [VideoItem("copy", items[0].path)]  # same bytes, other id
        assert run(renamed, cfg)["copy"].pseudo_label == first[items[0].video_id].pseudo_label
        assert len(sim.log) == n_requests
        other_model = run(items[:1], config(tmp_path, sim, model="gemini-2.5-flash"))
        assert len(sim.log) > n_requests  # the model is part of the key
    for item in items:
        assert again[item.video_id].from_cache
        assert again[item.video_id].pseudo_label == first[item.video_id].pseudo_label
        assert again[item.video_id].reasoning == first[item.video_id].reasoning
    assert not other_model[items[0].video_id].from_cache
    summary = summarize(again, items)
    assert (summary.labelled, summary.cached, summary.usage.total) == (0, 3, 0)


def test_first_turn_is_checkpointed_when_the_second_fails(tmp_path):
    items = make_videos(tmp_path / "v", 1)
    plan = vlm_oracle.FaultPlan(by_video={sha(items[0]): ["ok", "empty", "empty"]})
    with vlm_sim.SimulatedVLM(faults=plan, api_key=KEY) as sim:
        cfg = config(tmp_path, sim)
        (failed,) = run(items, cfg).values()
        assert isinstance(failed, Failure) and failed.reason == "empty"
        (labelled,) = run(items, cfg).values()
        assert turn_counts(sim, sha(items[0])) == [1, 3]  # turn 1 never asked again
    assert isinstance(labelled, LabelResult)
    assert labelled.usage.prompt > 0
    assert not list(cfg.cache_dir.glob("*.turn1.json"))


def test_concurrent_requests_stay_within_the_limit(tmp_path):
    items = make_videos(tmp_path / "v", 6)
    with vlm_sim.SimulatedVLM(api_key=KEY, latency_s=0.1) as sim:
        results = run(items, config(tmp_path, sim, concurrency=2))
        assert sim.max_in_flight == 2
    assert len(results) == 6


def test_unreadable_and_unsupported_videos_are_failures(tmp_path):
    items = make_videos(tmp_path / "v", 1)
    text = tmp_path / "v" / "notes.txt"
    text.write_text("x")
    items += [
        VideoItem("missing", tmp_path / "v" / "missing.mp4"),
        VideoItem("notes", text),
    ]
    with vlm_sim.SimulatedVLM(api_key=KEY) as sim:
        results = run(items, config(tmp_path, sim))
    assert isinstance(results[items[0].video_id], LabelResult)
    assert results["missing"].reason == "unreadable" and "missing.mp4" in results["missing"].detail
    assert results["notes"].reason == "unsupported" and ".txt" in results["notes"].detail


def test_unexpected_error_fails_one_video_without_leaking_the_key(tmp_path, monkeypatch, caplog):
    items = make_videos(tmp_path / "v", 2)
    real_parse = labeler.parse_reply
    calls = []

    def parse_then_break_once(response):
        calls.append(response)
        if len(calls) == 1:
            raise RuntimeError(f"bug while holding {KEY}")
        return real_parse(response)

    monkeypatch.setattr(labeler, "parse_reply", parse_then_break_once)
    with vlm_sim.SimulatedVLM(api_key=KEY) as sim:
        results = run(items, config(tmp_path, sim, concurrency=1))
    outcomes = sorted(type(r).__name__ for r in results.values())
    assert outcomes == ["Failure", "LabelResult"]
    (failure,) = [r for r in results.values() if isinstance(r, Failure)]
    assert failure.reason == "error" and "[redacted]" in failure.detail
    assert "RuntimeError" in caplog.text and KEY not in caplog.text


def test_wrong_key_is_not_retried(tmp_path):
    items = make_videos(tmp_path / "v", 1)
    with vlm_sim.SimulatedVLM(api_key="the-right-key") as sim:
        (result,) = run(items, config(tmp_path, sim)).values()
        assert len(sim.log) == 1
    assert (result.reason, result.attempts) == ("api_error", 1)
