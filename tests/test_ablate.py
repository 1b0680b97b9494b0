"""``python -m hemo_jax.ablate``: the grid, the tables from run reports, and an end-to-end
smoke run that resumes."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time

import numpy as np
import pytest
from records import ROOT, run_env, write_learnable_shards

from hemo_jax.ablation import grid, tables
from hemo_jax.ablation.runner import Job, Settings, commands


def test_grid_is_consistent_and_rows_share_runs():
    grid.check_grid()
    chosen, runs = grid.select(["rq4"])
    names = {r.name for r in runs}
    # RQ4's (pretrained, test) cell is the full method; its stage-1 runs come along.
    assert {"full", "s1_keypoints", "s1_image", "s1_text"} <= names
    assert "s2_cross_attention" not in names
    rq1 = {t.key: t for t in grid.TABLES}["rq1"]
    assert [run for _, run in rq1.rows][:4] == ["full", "s1_keypoints", "s1_image", "s1_text"]
    with pytest.raises(ValueError, match="unknown tables"):
        grid.select(["rq9"])


def test_stage2_commands_start_from_the_same_corpus_and_seed(tmp_path):
    job = Job(grid.RUN_NAMES["s2_text_transcript"], "c1", "/shards/c1", 2)
    train, evaluate = commands(job, Settings(out=tmp_path, variant=",smoke"))
    assert "--config=configs/paper.py:fused,smoke" in train and "--config.seed=2" in train
    start = tmp_path / "runs" / "c1" / "seed2"
    assert f"--config.init_from.text={start / 's1_text_transcript'}" in train
    assert f"--config.init_from.image={start / 's1_image'}" in train
    assert "--config.data.text_source=transcript" in train
    assert "--checkpoint=best" in evaluate  # chosen on the validation split
    scratch = commands(Job(grid.RUN_NAMES["s2_scratch_test"], "c1", "/s", 0), Settings(tmp_path))
    assert not any("init_from" in a for a in scratch[0])
    assert "--config.from_stage1=False" in scratch[0]


def _fake_report(out, run, corpus, seed, labels, predictions, pseudo):
    report = Job(grid.RUN_NAMES[run], corpus, "", seed).workdir(out) / "report"
    report.mkdir(parents=True)
    with open(report / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video_id", "label", "pseudo_label", "prediction", "probability_win", "x"])
        for i, (y, p, q) in enumerate(zip(labels, predictions, pseudo, strict=True)):
            w.writerow([f"{corpus}{i:03d}", y, q, p, f"{0.9 if p else 0.1}", ""])
    (report / "metrics.json").write_text("{}")


def test_tables_from_reports_resolve_a_real_gap_and_not_noise(tmp_path):
    rng = np.random.default_rng(0)
    accuracy = {"full": 0.95, "s1_keypoints": 0.55, "s1_image": 0.93, "s1_text": 0.95}
    for corpus in ("a", "b", "c"):
        labels = rng.integers(0, 2, 60)
        pseudo = np.where(rng.random(60) < 0.7, labels, 1 - labels)
        for seed in range(3):
            for run, acc in accuracy.items():
                pred = np.where(rng.random(60) < acc, labels, 1 - labels)
                _fake_report(tmp_path, run, corpus, seed, labels, pred, pseudo)
    rq1 = {t.key: t for t in grid.TABLES}["rq1"]
    text = tables.write_tables(tmp_path, [rq1], ["a", "b", "c"], [0, 1, 2], num_resamples=300)
    rows = {r.split("|")[1].strip(): r for r in text.splitlines() if r.startswith("| ")}
    assert "(n=9)" in rows["full method"] and "reference" in rows["full method"]
    assert "worse (resolved)" in rows["keypoints alone (stage 1)"]
    assert "within noise" in rows["text alone (stage 1)"]
    # The labeler row is the VLM's verdicts on the same videos (~0.7), one per corpus.
    assert "worse (resolved)" in rows["the labeler's verdicts (VLM)"]
    labeler_mean = float(rows["the labeler's verdicts (VLM)"].split("|")[2].split("±")[0])
    assert 0.6 < labeler_mean < 0.8
    for name in ("paper.md", "paper.html", "paper.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert (tmp_path / "paper.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
def test_smoke_grid_end_to_end_then_resumes(tmp_path):
    shards = write_learnable_shards(tmp_path / "corpus")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "hemo_jax.ablate", f"--shards=c0={shards}", f"--out={out}"]
    cmd += ["--seeds=1", "--smoke", "--jobs=2", "--tables=rq1", "--resamples=100"]
    cmd += ["--set=model.image_feature_dim=8"]  # tests/records.py features
    env = run_env(tmp_path / "jax-cache", devices=1)
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "wave 1: 3 runs to do" in done.stdout and "wave 2: 1 runs to do" in done.stdout
    md = (out / "paper.md").read_text()
    assert "RQ1" in md and "RQ2" not in md and md.count("(n=1)") == 5
    full = out / "runs" / "c0" / "seed0" / "full"
    metrics = json.loads((full / "report" / "metrics.json").read_text())
    assert metrics["num_videos"] == 8  # the test split
    # Selection on the carved validation split, stated in the run's report.
    assert any("on split 'val'" in note for note in metrics["notes"])
    # Rerun: every run has its report, nothing trains again.
    started = time.time()
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "3 done before" in again.stdout and "1 done before" in again.stdout
    assert time.time() - started < 60


def test_grid_stages_are_the_paper_configs():
    from configs import common, paper

    assert grid.BRANCHES == common.BRANCHES
    for spec in grid.RUNS:
        c = paper.get_config(f"{spec.stage},smoke")
        assert c.stage == (2 if spec.init or spec.stage == "fused" else 1)
    full = paper.get_config("fused")
    assert (full.pseudo.pool, full.data.text_source, full.data.eval_split) == (
        "test",
        "both",
        "val",
    )
