"""The labeler's command line (`python -m preprocess.labeling.cli`) against the simulated VLM
server: the key stays secret, the dry run sends nothing, a killed run resumes."""

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

import pytest
from labeling import KEY, make_videos, sha, truth_of, turn_counts_in, write_real_video

from preprocess.labeling import cli, prompts
from preprocess.labeling.config import API_KEY_ENV_VARS
from preprocess.synthetic import vlm_oracle, vlm_sim

REPO = Path(__file__).resolve().parents[1]


def cli_args(tmp_path: Path, videos: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(
        ["--videos", str(videos), "--cache-dir", str(tmp_path / "cache")]
        + ["--backoff-initial", "0.001", "--backoff-max", "0.01", "--file-poll-interval", "0.01"]
        + list(extra)
    )


def test_key_never_reaches_logs_cache_or_errors(tmp_path, monkeypatch, caplog, capfd):
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    items = make_videos(tmp_path / "v", 4, size=3000)
    plan = vlm_oracle.FaultPlan(
        by_video={sha(items[0]): ["echo_key"], sha(items[1]): ["429"], sha(items[2]): ["slow"]}
    )
    caplog.set_level(logging.DEBUG)
    with vlm_sim.SimulatedVLM(truth_of(items), faults=plan, api_key=KEY, slow_s=5) as sim:
        args = cli_args(
            tmp_path, tmp_path / "v", "--base-url", sim.base_url, "--timeout", "0.5",
            "--inline-limit-mb", str(3000 / 2**20),
        )  # fmt: skip
        assert cli.main(args) == 1  # the echoed-key video failed
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


def test_dry_run_sends_nothing_and_estimates_cost(tmp_path, monkeypatch, capsys):
    for name in API_KEY_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    videos = tmp_path / "v"
    videos.mkdir()
    write_real_video(videos / "real.mp4", seconds=4.0)
    (videos / "noise.mp4").write_bytes(os.urandom(5000))
    with vlm_sim.SimulatedVLM() as sim:
        args = cli_args(tmp_path, videos, "--dry-run", "--base-url", sim.base_url)
        assert cli.main(args) == 0
        assert sim.log == []
    out = capsys.readouterr().out
    for expected in ("DRY RUN", "gemini-2.5-pro", prompts.PROMPT_VERSION, "| real |", "inline",
                     "ESTIMATED", "not estimated (duration unreadable): noise"):  # fmt: skip
        assert expected in out


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

    def answered(sim: vlm_sim.SimulatedVLM) -> set[str]:
        return {r.video_sha for r in sim.log if r.kind == "generate"
                and r.turn == 2 and r.outcome == "answered"}  # fmt: skip

    def done() -> int:
        return len([p for p in cache.glob("*.json") if p.name.count(".") == 1
                    and len(p.stem) == 64])  # fmt: skip

    # The fifth request hangs (until its client goes away): the kill always lands on a request
    # in flight, after some videos are done, with no race against the answer.
    plan = vlm_oracle.FaultPlan(script=["ok"] * 4 + ["slow"])
    with vlm_sim.SimulatedVLM(truth_of(items), api_key=KEY, faults=plan, slow_s=60) as sim:
        first = launch(sim, "run1")
        deadline = time.monotonic() + 40
        while not any(r.fault == "slow" for r in sim.in_flight()):
            if time.monotonic() > deadline or first.poll() is not None:
                first.kill()
                pytest.fail(f"run 1 never reached the slow request: {sim.log}")
            time.sleep(0.01)
        # Worker threads store an answer just after it arrives; let those writes land so the
        # kill hits only the hanging request (an answer killed before its write is asked again).
        while done() < len(answered(sim)) and time.monotonic() < deadline:
            time.sleep(0.01)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        while sim.in_flight():
            time.sleep(0.01)
        killed_at = len(sim.log)
        done_in_first = answered(sim)
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
