"""preprocess.labeling.batch: both turns as Batch API jobs, through the real google-genai
client, against the simulated VLM's batch endpoints (inline and JSONL jobs, partial failures,
expired and failed jobs, expired uploads, cost, and a killed run that re-attaches)."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from google.genai import batches as genai_batches
from labeling import KEY, config, make_videos, sha, truth_of, write_real_video

from hemo_jax.contract.shards import open_shards
from preprocess import run as preprocess_run
from preprocess.__main__ import main as preprocess_main
from preprocess.corpora.imigue import CorpusLayout, build_manifest
from preprocess.labeling import batch
from preprocess.labeling.batch_state import BatchError
from preprocess.labeling.config import LabelerConfig
from preprocess.labeling.cost import BATCH_PRICE_FACTOR, format_plan, plan_videos
from preprocess.labeling.results import Failure, LabelResult, VideoItem
from preprocess.synthetic import vlm_http, vlm_oracle, vlm_sim
from preprocess.synthetic.corpus import write_corpus
from preprocess.synthetic.plan import SynthConfig

REPO = Path(__file__).resolve().parents[1]
QUICK = batch.BatchSettings(poll_initial_s=0.001, poll_max_s=0.01)


def run_batch(items, cfg, settings=QUICK):
    return batch.label_videos(items, cfg, settings, api_key=KEY)


def creates_in(log: list[vlm_http.RequestRecord], turn: int) -> int:
    return sum(r.kind == "batch_create" and r.turn == turn for r in log)


def creates(sim: vlm_sim.SimulatedVLM, turn: int) -> int:
    return creates_in(sim.log, turn)


def asked(sim: vlm_sim.SimulatedVLM, video_sha: str) -> list[int]:
    """Batch requests answered for (turn 1, turn 2) of one video."""
    records = [r for r in sim.log if r.kind == "batch_request" and r.video_sha == video_sha]
    return [sum(r.turn == t for r in records) for t in (1, 2)]


def test_two_jobs_label_every_video_at_half_price(tmp_path):
    items = make_videos(tmp_path / "v", 4)
    with vlm_sim.SimulatedVLM(truth_of(items), accuracy=1.0, api_key=KEY) as sim:
        sim.batches.polls_until_done = 2
        results, spend = run_batch(items, config(tmp_path, sim))
        assert (creates(sim, 1), creates(sim, 2)) == (1, 1)
        assert all(asked(sim, sha(v)) == [1, 1] for v in items)
        assert not [r for r in sim.log if r.kind in ("generate", "upload_start")]
    for item in items:
        result = results[item.video_id]
        assert isinstance(result, LabelResult) and not result.from_cache
        assert result.pseudo_label == item.label  # accuracy 1.0
        assert result.model_version == "simulated-vlm"
        assert result.usage.prompt > 0 and result.usage.thoughts > 0
    assert spend.batch_replies == 8 and spend.sync_replies == 0
    assert spend.usd == pytest.approx(BATCH_PRICE_FACTOR * spend.usd_at_standard)
    assert spend.usd > 0
    state = json.loads((tmp_path / "cache" / "batch_state.json").read_text())
    assert state == {"jobs": [], "uploads": {}}

    # Everything is cached now: a rerun submits nothing.
    with vlm_sim.SimulatedVLM(api_key=KEY) as sim:
        again, spend = run_batch(items, config(tmp_path, sim))
        assert sim.log == []
    assert all(r.from_cache for r in again.values()) and spend.usd == 0


def test_a_job_too_large_to_send_inline_goes_as_a_jsonl_file(tmp_path):
    items = make_videos(tmp_path / "v", 3, size=4096)
    settings = batch.BatchSettings(
        poll_initial_s=0.001, poll_max_s=0.01, inline_request_limit_bytes=5000
    )
    plan = vlm_oracle.FaultPlan(by_video={sha(items[0]): ["500"]})  # an error line in the file
    with vlm_sim.SimulatedVLM(truth_of(items), accuracy=1.0, faults=plan, api_key=KEY) as sim:
        # One video over the labeler's inline limit: referenced by its upload's URI.
        cfg = config(tmp_path, sim, inline_limit_bytes=4097)
        results, _ = run_batch(items, cfg, settings)
        log = sim.log
    kinds = [r.kind for r in log]
    assert (creates_in(log, 1), creates_in(log, 2)) == (2, 1)  # the 500 asked again
    assert kinds.count("file_download") == 3  # each job's responses file
    assert kinds.count("upload_start") == 1 + 3  # the large video, then each job's JSONL
    # Uploaded inputs and the video are deleted once the labels are in.
    assert kinds.count("file_delete") == 4
    sources = {r.video_sha: r.video_source for r in log if r.kind == "batch_request"}
    assert sorted(sources.values()) == ["file", "inline", "inline"]
    assert sources[sha(items[2])] == "file"
    assert all(results[v.video_id].pseudo_label == v.label for v in items)


def test_failed_requests_are_asked_again_in_the_next_job(tmp_path):
    items = make_videos(tmp_path / "v", 3)
    plan = vlm_oracle.FaultPlan(
        by_video={sha(items[0]): ["429"], sha(items[1]): ["ok", "malformed", "schema"]}
    )
    with vlm_sim.SimulatedVLM(truth_of(items), faults=plan, api_key=KEY) as sim:
        results, spend = run_batch(items, config(tmp_path, sim))
        assert (creates(sim, 1), creates(sim, 2)) == (2, 3)
        assert asked(sim, sha(items[0])) == [2, 1]
        assert asked(sim, sha(items[1])) == [1, 3]
        assert asked(sim, sha(items[2])) == [1, 1]
    assert all(isinstance(r, LabelResult) for r in results.values())
    # The bad replies were paid for and are counted; the 429 had no reply.
    assert spend.batch_replies == 2 * 3 + 2
    assert json.loads((tmp_path / "cache" / "failures.json").read_text()) == {}


def test_a_request_that_keeps_failing_is_a_failure_after_max_tries(tmp_path):
    items = make_videos(tmp_path / "v", 2)
    plan = vlm_oracle.FaultPlan(by_video={sha(items[0]): ["500"] * 5})
    settings = batch.BatchSettings(poll_initial_s=0.001, poll_max_s=0.01, max_tries=2)
    with vlm_sim.SimulatedVLM(truth_of(items), faults=plan, api_key=KEY) as sim:
        cfg = config(tmp_path, sim)
        results, _ = run_batch(items, cfg, settings)
        assert asked(sim, sha(items[0])) == [2, 0]
    failure = results[items[0].video_id]
    assert isinstance(failure, Failure)
    assert (failure.reason, failure.attempts, failure.video_sha256) == (
        "server_error",
        2,
        sha(items[0]),
    )
    assert isinstance(results[items[1].video_id], LabelResult)
    assert list(json.loads(cfg.failures_file.read_text())) == [items[0].video_id]


def test_sync_retry_sends_failed_requests_through_generate_content(tmp_path):
    items = make_videos(tmp_path / "v", 2)
    plan = vlm_oracle.FaultPlan(by_video={sha(items[0]): ["503"]})
    settings = batch.BatchSettings(poll_initial_s=0.001, poll_max_s=0.01, retry="sync")
    with vlm_sim.SimulatedVLM(truth_of(items), faults=plan, api_key=KEY) as sim:
        results, spend = run_batch(items, config(tmp_path, sim), settings)
        assert (creates(sim, 1), creates(sim, 2)) == (1, 1)
        generated = [r for r in sim.log if r.kind == "generate"]
        assert [(r.video_sha, r.turn) for r in generated] == [(sha(items[0]), 1)]
    assert all(isinstance(r, LabelResult) for r in results.values())
    assert (spend.batch_replies, spend.sync_replies) == (3, 1)
    assert spend.usd_at_standard > spend.usd > BATCH_PRICE_FACTOR * spend.usd_at_standard


@pytest.mark.parametrize(
    ("fault", "reason"), [("expire", "batch_expired"), ("fail", "batch_failed")]
)
def test_expired_and_failed_jobs_are_submitted_again(tmp_path, fault, reason):
    items = make_videos(tmp_path / "v", 2)
    with vlm_sim.SimulatedVLM(truth_of(items), api_key=KEY) as sim:
        sim.batches.job_faults = [fault]
        results, _ = run_batch(items, config(tmp_path, sim))
        assert (creates(sim, 1), creates(sim, 2)) == (2, 1)
        assert all(asked(sim, sha(v)) == [1, 1] for v in items)  # the lost job answered none
    assert all(isinstance(r, LabelResult) for r in results.values())

    # With one try per turn, the job's end is the videos' failure.
    with vlm_sim.SimulatedVLM(api_key=KEY) as sim:
        sim.batches.job_faults = [fault]
        settings = batch.BatchSettings(poll_initial_s=0.001, poll_max_s=0.01, max_tries=1)
        failed, _ = run_batch(items, config(tmp_path / "other", sim), settings)
    assert {f.reason for f in failed.values()} == {reason}


def test_an_expired_upload_is_uploaded_again(tmp_path):
    items = make_videos(tmp_path / "v", 1, size=4096)
    with vlm_sim.SimulatedVLM(truth_of(items), api_key=KEY) as sim:
        cfg = config(tmp_path, sim, inline_limit_bytes=1000, delete_uploads=False)
        # First run: the job fails, the upload stays recorded; then the file expires.
        sim.batches.job_faults = ["fail"]
        settings = batch.BatchSettings(poll_initial_s=0.001, poll_max_s=0.01, max_tries=1)
        (failure,) = run_batch(items, cfg, settings)[0].values()
        assert failure.reason == "batch_failed"
        assert sim.batches.expire_files()
        # Second run: the request finds its video gone (403), the retry uploads it again.
        (result,) = run_batch(items, cfg)[0].values()
        uploads = sum(r.kind == "upload_start" for r in sim.log)
        gone = [r for r in sim.log if r.kind == "batch_request" and r.status == 403]
    assert isinstance(result, LabelResult)
    assert (uploads, len(gone)) == (2, 1)


def test_an_upload_too_close_to_its_expiry_is_replaced_before_a_job_uses_it(tmp_path):
    items = make_videos(tmp_path / "v", 1, size=4096)
    # A margin longer than a file's 48 hours: every job needs a fresh upload.
    settings = batch.BatchSettings(
        poll_initial_s=0.001, poll_max_s=0.01, upload_margin_s=batch.FILE_LIFETIME_S + 1
    )
    with vlm_sim.SimulatedVLM(truth_of(items), api_key=KEY) as sim:
        (result,) = run_batch(items, config(tmp_path, sim, inline_limit_bytes=1000), settings)[
            0
        ].values()
        uploads = sum(r.kind == "upload_start" for r in sim.log)
    assert isinstance(result, LabelResult)
    assert uploads == 2  # one per turn's job


def test_dry_run_prices_the_batch_at_half_the_standard_price(tmp_path):
    video = tmp_path / "clip.mp4"
    write_real_video(video, seconds=3.0)
    settings = LabelerConfig(cache_dir=tmp_path / "cache")
    plans = plan_videos([VideoItem("clip", video)], settings)
    text = format_plan(plans, settings)
    standard = sum(p.cost_usd for p in plans)
    assert standard > 0
    assert f"ESTIMATED at batch price (--batch, 50% of standard): ${standard / 2:.2f}" in text


def test_a_run_stopped_before_it_learns_its_job_finds_the_job_by_name(tmp_path, monkeypatch):
    items = make_videos(tmp_path / "v", 2)
    create = genai_batches.Batches.create

    def create_then_stop(self, **kwargs):
        create(self, **kwargs)  # the API has the job; its name never reaches the state file
        raise KeyboardInterrupt

    with vlm_sim.SimulatedVLM(truth_of(items), api_key=KEY) as sim:
        cfg = config(tmp_path, sim)
        monkeypatch.setattr(genai_batches.Batches, "create", create_then_stop)
        with pytest.raises(KeyboardInterrupt):
            run_batch(items, cfg)
        monkeypatch.undo()
        assert json.loads((cfg.cache_dir / "batch_state.json").read_text())["jobs"] == []
        results, _ = run_batch(items, cfg)
        assert (creates(sim, 1), creates(sim, 2)) == (1, 1)
        assert any(r.kind == "batch_list" for r in sim.log)
        assert all(asked(sim, sha(v)) == [1, 1] for v in items)
    assert all(isinstance(r, LabelResult) for r in results.values())


def _label_command(videos: Path, cache: Path, sim: vlm_sim.SimulatedVLM) -> list[str]:
    return [
        sys.executable,
        "-m",
        "preprocess",
        "label",
        "--batch",
        "--videos",
        str(videos),
        "--cache-dir",
        str(cache),
        "--base-url",
        sim.base_url,
        "--batch-poll-initial",
        "0.05",
        "--batch-poll-max",
        "0.1",
    ]


def test_a_killed_run_re_attaches_to_its_jobs_and_submits_nothing_new(tmp_path):
    items = make_videos(tmp_path / "v", 3)
    cache = tmp_path / "cache"
    env = {**os.environ, "GOOGLE_API_KEY": KEY, "PYTHONPATH": str(REPO)}
    with vlm_sim.SimulatedVLM(truth_of(items), accuracy=1.0, api_key=KEY) as sim:
        sim.batches.hold = True  # the first job stays RUNNING: the command waits on it
        command = _label_command(tmp_path / "v", cache, sim)
        first = subprocess.Popen(
            command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 60
            while not any(r.kind == "batch_get" for r in sim.log):
                assert first.poll() is None, first.stdout.read().decode()
                assert time.monotonic() < deadline, "the command never polled its job"
                time.sleep(0.02)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait()
        recorded = json.loads((cache / "batch_state.json").read_text())["jobs"]
        assert [j["turn"] for j in recorded] == [1] and len(recorded[0]["requests"]) == 3
        assert creates(sim, 1) == 1 and not any(r.kind == "batch_request" for r in sim.log)

        sim.batches.release()
        rerun = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        # The rerun polled the recorded job instead of submitting the first turn again.
        assert creates(sim, 1) == 1 and creates(sim, 2) == 1
        assert all(asked(sim, sha(v)) == [1, 1] for v in items)
    assert "re-attaching to 1 recorded batch job(s)" in rerun.stderr
    labels = json.loads((cache / "labels.json").read_text())
    assert {v: r["status"] for v, r in labels.items()} == {v.video_id: "labelled" for v in items}
    assert all(labels[v.video_id]["pseudo_label"] == v.label for v in items)
    assert "at batch price" in rerun.stdout


def test_run_with_the_batch_labeler_labels_the_corpus_from_two_jobs(tmp_path, monkeypatch):
    root, out = tmp_path / "corpus", tmp_path / "shards"
    synth = SynthConfig(videos=3, fps=10, width=160, height=120, min_seconds=1, max_seconds=1)
    write_corpus(synth, root)
    rows = build_manifest(CorpusLayout(root))
    truth = vlm_oracle.truth_for_videos([(r.video_path, r.label) for r in rows])
    monkeypatch.setenv("GOOGLE_API_KEY", KEY)
    quick = functools.partial(batch.BatchLabeler, settings=QUICK)
    monkeypatch.setattr(preprocess_run, "BatchLabeler", quick)
    with vlm_sim.SimulatedVLM(truth, accuracy=1.0, api_key=KEY) as sim:
        command = ["run", "--corpus", "synthetic", "--root", str(root), "--out", str(out)]
        command += ["--no-progress", "--labeler", "gemini-batch", "--base-url", sim.base_url]
        assert preprocess_main(command) == 0
        assert (creates(sim, 1), creates(sim, 2)) == (1, 1)
        assert not any(r.kind == "generate" for r in sim.log)
    shards = open_shards(out)
    labels = {r.video_id: (r.pseudo_label, r.label) for r in shards.records()}
    shards.close()
    assert len(labels) == 3 and all(p == t for p, t in labels.values())


def test_jobs_are_polled_with_growing_delays_up_to_the_maximum(tmp_path, monkeypatch):
    items = make_videos(tmp_path / "v", 1)
    delays = []
    monkeypatch.setattr(batch.time, "sleep", delays.append)
    settings = batch.BatchSettings(poll_initial_s=1.0, poll_max_s=3.0, poll_multiplier=2.0)
    with vlm_sim.SimulatedVLM(api_key=KEY) as sim:
        sim.batches.polls_until_done = 4
        run_batch(items, config(tmp_path, sim), settings)
    # Per turn: PENDING -> RUNNING, then 4 polls RUNNING; a wait between each two polls.
    assert delays == [1.0, 2.0, 3.0, 3.0] * 2


def test_a_state_file_that_cannot_be_read_stops_the_run_and_is_kept(tmp_path):
    items = make_videos(tmp_path / "v", 1)
    state = tmp_path / "cache" / "batch_state.json"
    state.parent.mkdir()
    state.write_text("{not json")
    with vlm_sim.SimulatedVLM(api_key=KEY) as sim:
        with pytest.raises(BatchError, match="batch_state.json"):
            run_batch(items, config(tmp_path, sim))
        assert sim.log == []
    assert state.read_text() == "{not json"
