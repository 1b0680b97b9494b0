"""``python -m hemo_jax.train`` end to end: every smoke config, stage 2 from stage 1,
resuming after SIGTERM, and the errors that must stop a run.

Runs are subprocesses sharing a persistent compilation cache (compiling is most
of a smoke run on a CPU); runs that do not depend on each other go in parallel.
"""

from __future__ import annotations

import csv
import json
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from records import FEATURE_DIM, launch_train, run_env, train_rows, write_learnable_shards

from configs import finetune, pretrain
from hemo_jax.contract.shards import open_shards
from hemo_jax.data import splits
from hemo_jax.training import checkpoint, stacked_runs, stacking

SMOKE_STEPS = 6


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.mktemp("train")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return run_env(tmp_path_factory.getbasetemp() / "jax-cache")


@pytest.fixture(scope="module")
def data_args(base):
    shards = write_learnable_shards(base / "shards")
    return (f"--config.data.shards={shards}", f"--config.model.image_feature_dim={FEATURE_DIM}")


@pytest.fixture(scope="module")
def first_runs(base, env, data_args):
    """Every run that needs no other, launched together: the three stage-1 smoke runs
    (text in mixed precision), the image run on two folds (for the stacked fusion)
    and one with a misspelt override."""
    runs = {
        name: launch_train(f"pretrain.py:{name},smoke", base / name, *data_args, env=env)
        for name in ("keypoints", "image")
    }
    runs["text"] = launch_train(
        "pretrain.py:text,smoke",
        base / "text",
        *data_args,
        "--config.train.compute_dtype=bfloat16",
        env=env,
    )
    for k in range(2):
        runs[f"image_fold{k}"] = launch_train(
            "pretrain.py:image,smoke",
            base / f"image_fold{k}",
            *data_args,
            f"--config.data.fold={k}/2",
            env=env,
        )
    runs["misspelt"] = launch_train(
        "pretrain.py:image,smoke", base / "misspelt", *data_args, "--config.optim.lrr=1", env=env
    )
    return runs


def _finished(run, what: str):
    rc, out = run.finish()
    assert rc == 0, f"{what} failed:\n{out[-4000:]}"
    return run.workdir


def _wait_for_rows(run, n: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while len(run.train_rows()) < n:
        assert run.proc.poll() is None, f"run ended early:\n{run.finish()[1][-4000:]}"
        assert time.time() < deadline, "no train rows within the timeout"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def second_runs(base, env, data_args, first_runs):
    """Runs that start from the image and text stage-1 workdirs, launched together
    (the keypoints run goes on meanwhile): a stage-2 smoke run over those two
    branches (all three would double the compile time) with the loaded branches'
    learning rate at 0, two stage-2 runs that must
    refuse their init_from, and an image run sent SIGTERM once it has logged 2 steps
    (it stops within steps 2-5: its smoke config saves at step 3, which takes a while)."""
    stage1 = {b: _finished(first_runs[b], f"stage-1 {b} smoke run") for b in ("image", "text")}
    branches = "--config.branches=('image', 'text')"
    init = [f"--config.init_from.{b}={stage1[b]}" for b in ("image", "text")]
    runs = {
        "stage2": launch_train(
            "finetune.py:smoke",
            base / "stage2",
            *data_args,
            branches,
            *init,
            "--config.optim.init_lr_scale=0",
            env=env,
        ),
        "missing": launch_train(
            "finetune.py:smoke",
            base / "missing",
            *data_args,
            branches,
            *init,
            # A text run has no image branch.
            f"--config.init_from.image={stage1['text']}",
            env=env,
        ),
        "mismatched": launch_train(
            "finetune.py:smoke",
            base / "mismatched",
            *data_args,
            branches,
            *init,
            f"--config.init_from.image={_mismatched_checkpoint(stage1['image'], base)}",
            env=env,
        ),
        "interrupted": launch_train(
            "pretrain.py:image,smoke", base / "interrupted", *data_args, env=env
        ),
    }
    _wait_for_rows(runs["interrupted"], 2)
    runs["interrupted"].proc.send_signal(signal.SIGTERM)
    return runs


def _mismatched_checkpoint(image_workdir, base) -> str:
    """A stage-1 image checkpoint with a kernel of the wrong shape, a missing bias and
    a parameter the model does not have."""
    params, _ = checkpoint.load_params(str(image_workdir))
    branch = params["branches"]["image"]
    branch["proj"]["kernel"] = np.zeros((FEATURE_DIM + 1, branch["proj"]["kernel"].shape[1]))
    del branch["proj"]["bias"]
    branch["extra"] = {"w": np.zeros(3, np.float32)}
    workdir = base / "mismatched_stage1"
    store = checkpoint.CheckpointStore(str(workdir), best_metric=None)
    store.save(1, {"params": params, "opt": {}}, data_iterator=None, config={})
    store.close()
    return str(workdir)


def _losses(rows) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in rows}


def _leaves(tree):
    if isinstance(tree, dict):
        return [leaf for _, v in sorted(tree.items()) for leaf in _leaves(v)]
    return [tree]


@pytest.mark.slow
def test_stage2_smoke_run_starts_from_the_stage1_branches(second_runs):
    rc, out = second_runs["stage2"].finish()
    assert rc == 0, out[-4000:]
    assert "starting at step 0 from init_from" in out
    assert "branches ('image', 'text'), stage 2" in out
    rows = second_runs["stage2"].train_rows()
    assert [r["step"] for r in rows] == list(range(1, SMOKE_STEPS + 1))
    params, step = checkpoint.load_params(str(second_runs["stage2"].workdir))
    assert step == SMOKE_STEPS and set(params) == {"branches", "fusion"}
    # With init_lr_scale 0 every loaded parameter ends as stage 1 left it; the heads
    # (not loaded) and the fusion trained.
    for name in ("image", "text"):
        stage1, _ = checkpoint.load_params(str(second_runs["stage2"].workdir.parent / name))
        got, want = params["branches"][name], stage1["branches"][name]
        assert set(got) == set(want)
        for part in set(got) - {"head"}:
            for a, b in zip(_leaves(got[part]), _leaves(want[part]), strict=True):
                np.testing.assert_array_equal(a, b)
        assert any(
            not np.array_equal(a, b)
            for a, b in zip(_leaves(got["head"]), _leaves(want["head"]), strict=True)
        )


@pytest.mark.slow
def test_stage2_refuses_a_stage1_checkpoint_without_the_branch(second_runs, base):
    rc, out = second_runs["missing"].finish()
    assert rc != 0
    assert f"stage-1 checkpoint in '{base / 'text'}'" in out
    assert "has no branch 'image'" in out
    # It fails before compiling anything.
    assert "starting at step" not in out


@pytest.mark.slow
def test_stage2_refuses_a_mismatched_stage1_checkpoint(second_runs, base):
    rc, out = second_runs["mismatched"].finish()
    assert rc != 0
    assert f"cannot load branch 'branches/image' from '{base / 'mismatched_stage1'}'" in out
    assert "shape of branches/image/proj/kernel: checkpoint (9, 16), model (8, 16)" in out
    assert "missing in checkpoint: branches/image/proj/bias" in out
    assert "unexpected in checkpoint: branches/image/extra/w" in out
    assert "starting at step" not in out


@pytest.mark.slow
def test_sigterm_then_rerun_gives_the_uninterrupted_losses(second_runs, base, env, data_args):
    interrupted = second_runs["interrupted"]
    rc, out = interrupted.finish()
    assert rc == 0, out[-4000:]
    stopped = re.search(r"stopped by SIGTERM after step (\d+)", out)
    assert stopped, f"the run was not stopped by SIGTERM:\n{out[-4000:]}"
    stop_step = int(stopped.group(1))
    assert 2 <= stop_step < SMOKE_STEPS, "SIGTERM arrived too late to test resuming"

    resumed = launch_train("pretrain.py:image,smoke", base / "interrupted", *data_args, env=env)
    rc, out = resumed.finish()
    assert rc == 0, out[-4000:]
    assert f"starting at step {stop_step} from {base / 'interrupted'}" in out

    # metrics.jsonl holds the steps of both runs; the data iterator, optimizer and
    # step RNG all resumed, so every step matches the uninterrupted stage-1 run.
    reference = _losses(train_rows(base / "image"))
    got = _losses(resumed.train_rows())
    assert sorted(got) == sorted(reference) == list(range(1, SMOKE_STEPS + 1))
    np.testing.assert_allclose(
        [got[s] for s in sorted(got)], [reference[s] for s in sorted(reference)], rtol=1e-6
    )
    final, _ = checkpoint.load_params(str(base / "interrupted"), step=SMOKE_STEPS)
    expected, _ = checkpoint.load_params(str(base / "image"), step=SMOKE_STEPS)
    for a, b in zip(_leaves(final), _leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_a_misspelt_override_is_an_error(first_runs):
    rc, out = first_runs["misspelt"].finish()
    assert rc != 0
    assert "lrr" in out
    assert "starting at step" not in out


@pytest.mark.slow
# Last: the keypoints run, the slowest to compile, goes on while the tests above run.
@pytest.mark.parametrize("branch", ("image", "text", "keypoints"))
def test_stage1_smoke_run_trains_and_checkpoints(first_runs, branch):
    workdir = _finished(first_runs[branch], f"stage-1 {branch} smoke run")
    out = first_runs[branch].log_path.read_text()
    assert "mesh: data=8 fsdp=1 seq=1 over 8 cpu devices, 1 process(es)" in out
    assert re.search(rf"parameters: [\d,]+ \([\d,]+ trainable\); branches \('{branch}',\)", out)
    rows = first_runs[branch].train_rows()
    assert [r["step"] for r in rows] == list(range(1, SMOKE_STEPS + 1))
    assert all(np.isfinite(r["loss"]) for r in rows)
    params, step = checkpoint.load_params(str(workdir))
    assert step == SMOKE_STEPS
    assert list(params["branches"]) == [branch]
    # Parameters stay float32, mixed precision (text) included.
    assert {a.dtype for a in _leaves(params)} == {np.dtype(np.float32)}


@pytest.mark.slow
def test_stacked_fusion_is_fitted_on_out_of_fold_predictions(first_runs, base, env):
    full = str(_finished(first_runs["image"], "stage-1 image smoke run"))
    folds = [str(_finished(first_runs[f"image_fold{k}"], f"image fold {k} run")) for k in (0, 1)]
    assert "fold 1/2 held out of training" in first_runs["image_fold1"].log_path.read_text()
    out = base / "stacked"
    stacked_runs.stack(str(out), [full, *folds], pool="unlabeled", num_bootstrap=50)

    saved = json.loads((out / "stack.json").read_text())
    assert saved["features"] == ["image", "labeler"]
    assert saved["fit_rows"] == {"out_of_fold": 16, "pool": 8}
    with open(out / "fit_rows.csv") as f:
        rows = list(csv.DictReader(f))
    oof = {r["video_id"]: float(r["image"]) for r in rows if r["source"] == "out_of_fold"}
    assert sorted(oof) == [f"v{i:03d}" for i in range(16)]  # every training video, once
    pool = [r for r in rows if r["source"] == "pool"]
    assert {(r["labeler"], r["weight"]) for r in pool} == {("0.000000", "0.900000")}

    # Each training video's feature is the prediction of the run that did not train on it.
    shards = open_shards(str(base / "shards"))
    fold_of = splits.assign_folds(shards.infos, ("train",), 2)
    preds = [stacked_runs.Stage1Run(w, "latest").predict(shards, "train") for w in folds]
    for i, r in enumerate(shards.infos):
        if r.split == "train":
            k = fold_of[splits.group_of(r)]
            assert oof[r.video_id] == pytest.approx(stacking.log_odds(preds[k][i]), abs=1e-5)
    assert json.loads((out / "report" / "metrics.json").read_text())["num_videos"] == 8

    def predict(splits: str, csv_path) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "hemo_jax.predict", f"--workdir={out}"]
        cmd += [f"--splits={splits}", f"--out={csv_path}"]
        return subprocess.run(cmd, env=env, capture_output=True, text=True)

    # hemo_jax.predict on the stacked workdir gives the report's test predictions.
    done = predict("test", base / "stacked_test.csv")
    assert done.returncode == 0, done.stderr[-3000:]
    with open(base / "stacked_test.csv") as f, open(out / "report" / "predictions.csv") as g:
        assert list(csv.DictReader(f)) == list(csv.DictReader(g))

    with pytest.raises(ValueError, match="no run of fold 1/2"):
        stacked_runs.stack(str(base / "stacked_bad"), [full, folds[0]])
    with pytest.raises(ValueError, match="no full run"):
        stacked_runs.stack(str(base / "stacked_bad"), folds)
    with pytest.raises(ValueError, match="no fold runs among the runs"):
        stacked_runs.stack(str(base / "stacked_bad"), [full])

    # A misspelt split is an error, not an empty file.
    done = predict("tset", base / "misspelt.csv")
    assert done.returncode != 0
    assert "unknown splits ['tset']" in done.stderr
    assert not (base / "misspelt.csv").exists()


def test_configs_refuse_unknown_variants_and_keys():
    with pytest.raises(ValueError, match="modality 'video'"):
        pretrain.get_config("video,smoke")
    with pytest.raises(ValueError, match="unknown config variants"):
        pretrain.get_config("image,smok")
    with pytest.raises(ValueError, match="unknown config variants"):
        finetune.get_config("fast")
    config = finetune.get_config("smoke")
    with pytest.raises(AttributeError, match="lrr"):
        config.optim.lrr = 1.0
