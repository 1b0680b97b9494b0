"""The labeler, through the real google-genai client, against the simulated VLM server."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from preprocess import gemini, prompts, vlm_sim

KEY = "AIzaSy-TEST-hemo-secret-key-0123456789"
REPO = Path(__file__).resolve().parents[1]


def make_videos(root: Path, n: int, size: int = 2048) -> list[gemini.VideoItem]:
    """Random bytes named .mp4: the labeler only hashes and sends the bytes."""
    root.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(n):
        path = root / f"vid{i:02d}.mp4"
        path.write_bytes(os.urandom(size + i))
        items.append(gemini.VideoItem(f"vid{i:02d}", path, i % 2))
    return items


def truth_of(items: list[gemini.VideoItem]) -> dict[str, int]:
    return vlm_sim.truth_for_videos([(v.path, v.label) for v in items])


def sha(item: gemini.VideoItem) -> str:
    return vlm_sim.sha256_file(item.path)


def config(tmp_path: Path, sim: vlm_sim.SimulatedVLM, **overrides) -> gemini.LabelerConfig:
    settings = {
        "cache_dir": tmp_path / "cache",
        "base_url": sim.base_url,
        "timeout_s": 5.0,
        "backoff_initial_s": 0.001,
        "backoff_max_s": 0.01,
        "file_poll_interval_s": 0.001,
        "concurrency": 2,
    }
    return gemini.LabelerConfig(**(settings | overrides))


def run(items, cfg, **kw):
    return gemini.label_videos(items, cfg, api_key=KEY, progress=False, **kw)


def turn_counts(sim: vlm_sim.SimulatedVLM, video_sha: str, outcome: str | None = None):
    records = [r for r in sim.log if r.kind == "generate" and r.video_sha == video_sha]
    if outcome:
        records = [r for r in records if r.outcome == outcome]
    return [sum(r.turn == t for r in records) for t in (1, 2)]


def test_labels_every_video_with_two_turns(tmp_path):
    items = make_videos(tmp_path / "v", 4)
    with vlm_sim.SimulatedVLM(truth_of(items), accuracy=1.0, api_key=KEY) as sim:
        results = run(items, config(tmp_path, sim))
        for item in items:
            assert turn_counts(sim, sha(item), "answered") == [1, 1]
        assert {r.video_source for r in sim.log} == {"inline"}
    for item in items:
        result = results[item.video_id]
        assert isinstance(result, gemini.LabelResult)
        assert result.pseudo_label == item.label  # accuracy 1.0
        assert 0.0 <= result.pseudo_confidence <= 1.0
        assert result.reasoning and result.observations and result.transcript_summary
        assert result.model_version == "simulated-vlm"
        assert result.prompt_version == prompts.PROMPT_VERSION
        assert result.usage.total > 0 and result.usage.thoughts > 0
        assert set(result.record_fields()) == {"pseudo_label", "pseudo_confidence", "reasoning"}
    summary = gemini.summarize(results, items)
    assert (summary.labelled, summary.cached, summary.failed) == (4, 0, 0)
    assert (summary.correct, summary.with_truth) == (4, 4)
    assert summary.usage.total == sum(r.usage.total for r in results.values())


@pytest.mark.parametrize(("faults", "turn1_requests"), [(["429", "429"], 3), (["500"], 2)])
def test_rate_limits_and_server_errors_are_retried(tmp_path, faults, turn1_requests):
    items = make_videos(tmp_path / "v", 2)
    plan = vlm_sim.FaultPlan(by_video={sha(items[0]): faults})
    with vlm_sim.SimulatedVLM(truth_of(items), faults=plan, api_key=KEY) as sim:
        results = run(items, config(tmp_path, sim))
        assert turn_counts(sim, sha(items[0])) == [turn1_requests, 1]
        assert turn_counts(sim, sha(items[1])) == [1, 1]
    assert all(isinstance(r, gemini.LabelResult) for r in results.values())


def test_retries_stop_after_max_attempts(tmp_path):
    items = make_videos(tmp_path / "v", 1)
    plan = vlm_sim.FaultPlan(by_video={sha(items[0]): ["503"] * 10})
    with vlm_sim.SimulatedVLM(faults=plan, api_key=KEY) as sim:
        (result,) = run(items, config(tmp_path, sim, max_attempts=3)).values()
        assert turn_counts(sim, sha(items[0])) == [3, 0]
    assert isinstance(result, gemini.Failure)
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
    plan = vlm_sim.FaultPlan(by_video={sha(bad): [fault, fault]})
    with vlm_sim.SimulatedVLM(truth_of(items), faults=plan, api_key=KEY) as sim:
        cfg = config(tmp_path, sim, bad_response_attempts=2)
        results = run(items, cfg)
        assert turn_counts(sim, sha(bad)) == [2, 0]
        failure = results[bad.video_id]
        assert isinstance(failure, gemini.Failure)
        assert (failure.reason, failure.attempts, failure.video_sha256) == (reason, 2, sha(bad))
        assert failure.usage.prompt > 0  # the bad replies were paid for
        others = [results[v.video_id] for v in items if v is not bad]
        assert all(isinstance(r, gemini.LabelResult) for r in others)
        recorded = json.loads(cfg.failures_file.read_text())
        assert list(recorded) == [bad.video_id]
        assert recorded[bad.video_id]["reason"] == reason

        # The rerun skips the labelled videos and redoes the failed one.
        before = len(sim.log)
        rerun = run(items, cfg)
        assert {r.video_sha for r in sim.log[before:] if r.kind == "generate"} == {sha(bad)}
    assert isinstance(rerun[bad.video_id], gemini.LabelResult)
    assert json.loads(cfg.failures_file.read_text()) == {}


def test_one_bad_reply_is_asked_again(tmp_path):
    items = make_videos(tmp_path / "v", 1)
    plan = vlm_sim.FaultPlan(by_video={sha(items[0]): ["malformed"]})
    with vlm_sim.SimulatedVLM(faults=plan, api_key=KEY) as sim:
        (result,) = run(items, config(tmp_path, sim)).values()
        assert turn_counts(sim, sha(items[0])) == [2, 1]
    assert isinstance(result, gemini.LabelResult)


def test_slow_reply_times_out_and_is_retried_or_fails(tmp_path):
    items = make_videos(tmp_path / "v", 2)
    plan = vlm_sim.FaultPlan(by_video={sha(items[0]): ["slow"], sha(items[1]): ["slow"] * 5})
    with vlm_sim.SimulatedVLM(faults=plan, slow_s=30.0, api_key=KEY) as sim:
        start = time.monotonic()
        cfg = config(tmp_path, sim, timeout_s=0.3, max_attempts=2)
        results = run(items, cfg)
        assert time.monotonic() - start < 10
        assert turn_counts(sim, sha(items[0])) == [2, 1]
        assert turn_counts(sim, sha(items[0]), "abandoned") == [1, 0]
        assert turn_counts(sim, sha(items[1])) == [2, 0]
    assert isinstance(results[items[0].video_id], gemini.LabelResult)
    failure = results[items[1].video_id]
    assert isinstance(failure, gemini.Failure)
    assert (failure.reason, failure.attempts) == ("timeout", 2)


def test_large_videos_go_through_the_files_api(tmp_path):
    items = make_videos(tmp_path / "v", 3, size=4096)
    small = gemini.VideoItem("small", tmp_path / "v" / "small.mp4", 1)
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
        renamed = [gemini.VideoItem("copy", items[0].path)]  # same bytes, other id
        assert run(renamed, cfg)["copy"].pseudo_label == first[items[0].video_id].pseudo_label
        assert len(sim.log) == n_requests
        other_model = run(items[:1], config(tmp_path, sim, model="gemini-2.5-flash"))
        assert len(sim.log) > n_requests  # the model is part of the key
    for item in items:
        assert again[item.video_id].from_cache
        assert again[item.video_id].pseudo_label == first[item.video_id].pseudo_label
        assert again[item.video_id].reasoning == first[item.video_id].reasoning
    assert not other_model[items[0].video_id].from_cache
    summary = gemini.summarize(again, items)
    assert (summary.labelled, summary.cached, summary.usage.total) == (0, 3, 0)
    base = (sha(items[0]), "m", prompts.PROMPT_VERSION, "gemini-api")
    keys = {gemini.cache_key(*base)}
    for i, other in enumerate((sha(items[1]), "m2", "other-prompt", "127.0.0.1")):
        keys.add(gemini.cache_key(*base[:i], other, *base[i + 1 :]))
    assert len(keys) == 5
    assert gemini.LabelerConfig(cache_dir=tmp_path).endpoint == "gemini-api"
    local = gemini.LabelerConfig(cache_dir=tmp_path, base_url="http://127.0.0.1:8765")
    assert local.endpoint == "127.0.0.1"  # any port: a restarted simulation finds its answers


def test_first_turn_is_checkpointed_when_the_second_fails(tmp_path):
    items = make_videos(tmp_path / "v", 1)
    plan = vlm_sim.FaultPlan(by_video={sha(items[0]): ["ok", "empty", "empty"]})
    with vlm_sim.SimulatedVLM(faults=plan, api_key=KEY) as sim:
        cfg = config(tmp_path, sim)
        (failed,) = run(items, cfg).values()
        assert isinstance(failed, gemini.Failure) and failed.reason == "empty"
        (labelled,) = run(items, cfg).values()
        assert turn_counts(sim, sha(items[0])) == [1, 3]  # turn 1 never asked again
    assert isinstance(labelled, gemini.LabelResult)
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
        gemini.VideoItem("missing", tmp_path / "v" / "missing.mp4"),
        gemini.VideoItem("notes", text),
    ]
    with vlm_sim.SimulatedVLM(api_key=KEY) as sim:
        results = run(items, config(tmp_path, sim))
    assert isinstance(results[items[0].video_id], gemini.LabelResult)
    assert results["missing"].reason == "unreadable" and "missing.mp4" in results["missing"].detail
    assert results["notes"].reason == "unsupported" and ".txt" in results["notes"].detail


def test_unexpected_error_fails_one_video_without_leaking_the_key(tmp_path, monkeypatch, caplog):
    items = make_videos(tmp_path / "v", 2)
    real_parse = gemini.parse_reply
    calls = []

    def parse_then_break_once(response):
        calls.append(response)
        if len(calls) == 1:
            raise RuntimeError(f"bug while holding {KEY}")
        return real_parse(response)

    monkeypatch.setattr(gemini, "parse_reply", parse_then_break_once)
    with vlm_sim.SimulatedVLM(api_key=KEY) as sim:
        results = run(items, config(tmp_path, sim, concurrency=1))
    outcomes = sorted(type(r).__name__ for r in results.values())
    assert outcomes == ["Failure", "LabelResult"]
    (failure,) = [r for r in results.values() if isinstance(r, gemini.Failure)]
    assert failure.reason == "error" and "[redacted]" in failure.detail
    assert "RuntimeError" in caplog.text and KEY not in caplog.text


def test_wrong_key_is_not_retried(tmp_path):
    items = make_videos(tmp_path / "v", 1)
    with vlm_sim.SimulatedVLM(api_key="the-right-key") as sim:
        (result,) = run(items, config(tmp_path, sim)).values()
        assert len(sim.log) == 1
    assert (result.reason, result.attempts) == ("api_error", 1)


def test_missing_key_is_a_clear_error(tmp_path, monkeypatch):
    for name in gemini.API_KEY_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    cfg = gemini.LabelerConfig(cache_dir=tmp_path)
    with pytest.raises(gemini.MissingAPIKeyError, match="GOOGLE_API_KEY or GEMINI_API_KEY"):
        gemini.label_videos([], cfg)
    monkeypatch.setenv("GEMINI_API_KEY", "from-gemini")
    assert gemini.resolve_api_key() == "from-gemini"
    monkeypatch.setenv("GOOGLE_API_KEY", "from-google")
    assert gemini.resolve_api_key() == "from-google"  # google-genai's precedence


def cli_args(tmp_path: Path, videos: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    gemini.add_arguments(parser)
    return parser.parse_args(
        ["--videos", str(videos), "--cache-dir", str(tmp_path / "cache")]
        + ["--backoff-initial", "0.001", "--backoff-max", "0.01", "--file-poll-interval", "0.01"]
        + list(extra)
    )


def test_key_never_reaches_logs_cache_or_errors(tmp_path, monkeypatch, caplog, capfd):
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    items = make_videos(tmp_path / "v", 4, size=3000)
    plan = vlm_sim.FaultPlan(
        by_video={sha(items[0]): ["echo_key"], sha(items[1]): ["429"], sha(items[2]): ["slow"]}
    )
    caplog.set_level(logging.DEBUG)
    with vlm_sim.SimulatedVLM(truth_of(items), faults=plan, api_key=KEY, slow_s=5) as sim:
        args = cli_args(
            tmp_path, tmp_path / "v", "--base-url", sim.base_url, "--timeout", "0.5",
            "--inline-limit-mb", str(3000 / 2**20),
        )  # fmt: skip
        assert gemini.main(args) == 1  # the echoed-key video failed
        assert any(r.kind == "upload_start" and r.outcome == "answered" for r in sim.log)
    failure = json.loads((tmp_path / "cache" / "failures.json").read_text())[items[0].video_id]
    assert "[redacted]" in failure["detail"]  # the server did echo it; it was scrubbed
    out, err = capfd.readouterr()
    assert "labelled 3" in out
    texts = {"log": caplog.text, "stdout": out, "stderr": err}
    texts |= {str(p): p.read_text() for p in (tmp_path / "cache").rglob("*") if p.is_file()}
    assert len(texts) >= 6
    assert [where for where, text in texts.items() if KEY in text] == []
    assert "retrying" in caplog.text  # the retried errors were logged (scrubbed)


def write_real_video(path: Path, seconds: float, fps: int = 10) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (64, 48))
    for i in range(round(seconds * fps)):
        writer.write(np.full((48, 64, 3), i % 255, np.uint8))
    writer.release()


def test_dry_run_sends_nothing_and_estimates_cost(tmp_path, monkeypatch, capsys):
    for name in gemini.API_KEY_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    videos = tmp_path / "v"
    videos.mkdir()
    write_real_video(videos / "real.mp4", seconds=4.0)
    (videos / "noise.mp4").write_bytes(os.urandom(5000))
    with vlm_sim.SimulatedVLM() as sim:
        args = cli_args(tmp_path, videos, "--dry-run", "--base-url", sim.base_url)
        assert gemini.main(args) == 0
        assert sim.log == []
    out = capsys.readouterr().out
    for expected in ("DRY RUN", "gemini-2.5-pro", prompts.PROMPT_VERSION, "| real |", "inline",
                     "ESTIMATED", "not estimated (duration unreadable): noise"):  # fmt: skip
        assert expected in out

    cfg = gemini.LabelerConfig(cache_dir=tmp_path / "cache", inline_limit_bytes=10)
    (plan,) = gemini.plan_videos([gemini.VideoItem("real", videos / "real.mp4")], cfg)
    assert plan.transport == "upload"
    assert plan.duration_s == pytest.approx(4.0, abs=0.2)
    video_tokens = 4.0 * 300
    assert 2 * video_tokens < plan.prompt_tokens < 2 * video_tokens + 3000
    low = gemini.LabelerConfig(cache_dir=tmp_path / "cache", media_resolution="low")
    (low_plan,) = gemini.plan_videos([gemini.VideoItem("real", videos / "real.mp4")], low)
    assert low_plan.prompt_tokens < plan.prompt_tokens and low_plan.cost_usd < plan.cost_usd


def test_price_tiers():
    pro = gemini.PRICES["gemini-2.5-pro"]
    assert pro.cost(1_000_000 // 10, 0) == pytest.approx(0.125)
    assert pro.cost(300_000, 1000) == pytest.approx(300_000 * 2.5e-6 + 1000 * 15e-6)


def test_killed_run_resumes_without_paying_twice(tmp_path):
    """Kill the CLI with SIGKILL mid-batch and rerun it: every (video, turn) is answered
    exactly once over both runs; only the request cut off by the kill is sent again."""
    items = make_videos(tmp_path / "v", 6)
    cache = tmp_path / "cache"
    env = {**os.environ, "GEMINI_API_KEY": KEY}
    env.pop("GOOGLE_API_KEY", None)

    def launch(sim: vlm_sim.SimulatedVLM, name: str) -> subprocess.Popen:
        command = [sys.executable, "-m", "preprocess.gemini", "--videos", str(tmp_path / "v"),
                   "--cache-dir", str(cache), "--base-url", sim.base_url, "--concurrency", "1",
                   "--backoff-initial", "0.001"]  # fmt: skip
        log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115 (closed with the process)
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=log)

    def done() -> int:
        return len([p for p in cache.glob("*.json") if p.name.count(".") == 1
                    and len(p.stem) == 64])  # fmt: skip

    # The fifth request hangs (until its client goes away): the kill always lands on a request
    # in flight, after some videos are done, with no race against the answer.
    plan = vlm_sim.FaultPlan(script=["ok"] * 4 + ["slow"])
    with vlm_sim.SimulatedVLM(truth_of(items), api_key=KEY, faults=plan, slow_s=60) as sim:
        first = launch(sim, "run1")
        deadline = time.monotonic() + 40
        while not any(r.fault == "slow" for r in sim.in_flight()):
            if time.monotonic() > deadline or first.poll() is not None:
                first.kill()
                pytest.fail(f"run 1 never reached the slow request: {sim.log}")
            time.sleep(0.01)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        while sim.in_flight():
            time.sleep(0.01)
        killed_at = len(sim.log)
        done_in_first = {r.video_sha for r in sim.log if r.kind == "generate"
                         and r.turn == 2 and r.outcome == "answered"}  # fmt: skip
        assert 1 <= len(done_in_first) <= 2 and done() == len(done_in_first)
        assert [r.outcome for r in sim.log if r.outcome == "abandoned"] == ["abandoned"]

        second = launch(sim, "run2")
        assert second.wait(timeout=60) == 0, (tmp_path / "run2.log").read_text()
        log = sim.log

    for item in items:
        assert turn_counts_in(log, sha(item), "answered") == [1, 1], item.video_id
    resent = [r for r in log[killed_at:] if r.video_sha in done_in_first]
    assert resent == []  # finished videos were not requested again
    (abandoned,) = [r for r in log if r.outcome == "abandoned"]
    repeats = [(r.video_sha, r.turn) for r in log if r.kind == "generate"]
    assert [k for k in set(repeats) if repeats.count(k) > 1] == [
        (abandoned.video_sha, abandoned.turn)
    ]  # only the request cut off by the kill, which was never answered, was sent again
    labels = json.loads((cache / "labels.json").read_text())
    assert sorted(labels) == [v.video_id for v in items]
    assert {entry["status"] for entry in labels.values()} == {"labelled"}
    for name in ("run1", "run2"):
        assert KEY not in (tmp_path / f"{name}.log").read_text()


def turn_counts_in(log, video_sha: str, outcome: str):
    records = [r for r in log if r.kind == "generate" and r.video_sha == video_sha]
    return [sum(r.turn == t and r.outcome == outcome for r in records) for t in (1, 2)]
