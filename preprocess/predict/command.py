"""From video files to predictions: ``python -m preprocess predict --workdir RUN VIDEO...``.

The torch side orchestrates; the JAX side runs as the commands it is, never imported:

1. the videos → raw records (``preprocess.run`` over the ``videos`` corpus) with the
   preprocessing the run was trained on (its detector, image rate and keypoint source,
   read from its files by ``preprocess.predict.trained_run``), transcripts from speech
   when the run reads text, and a labeler's verdict and reasoning when asked for;
2. each record is checked for what the run's branches need (keypoints, person crops, a
   transcript); the usable ones → ``OUT/inputs``;
3. ``python -m hemo_jax.encode`` with the run's encoder settings, when it reads images;
4. ``python -m hemo_jax.predict`` with ``--windows`` for the evidence along each video;
5. ``OUT/predictions.csv`` (P(win), P(lose), the verdict, the model and the checkpoint)
   and one page per video, ``OUT/pages/<video>.html`` (``preprocess.predict.page``).

A video that cannot be used (not a video, corrupt, no person, no audio for a run that
reads speech, …) is listed with the step and the reason in ``OUT/predict_summary.json``
and in the printed summary; the others go on. Settings that make every video unusable
(a run trained on another keypoint source than ``--pose``, a text run without ``--asr``)
stop the command before any work, naming both sides.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from hemo_jax.contract import atomic
from hemo_jax.contract.schema import VideoRecord
from hemo_jax.contract.shards import open_shards
from preprocess.corpora.imigue import CorpusError
from preprocess.corpora.videos import video_rows
from preprocess.keypoints.wholebody import POSE_ESTIMATORS
from preprocess.labeling.config import LabelerConfig
from preprocess.predict.evidence import read_windows
from preprocess.predict.page import render_page
from preprocess.predict.trained_run import (
    ENCODER_KEYS,
    TrainedRun,
    encode_overrides,
    read_trained_run,
)
from preprocess.run import RunConfig, run_corpus
from preprocess.shards import write_records
from preprocess.video.crops import CropParams

ENCODE_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "encode.py"
SUMMARY_FILE = "predict_summary.json"
OPENPOSE_CHOICES = ("openpose-json", "openpose-bin")


class PredictError(ValueError):
    """Settings or a run that make every video unusable; names what and why."""


@dataclasses.dataclass(frozen=True)
class PredictConfig:
    """One ``preprocess predict``; None: what the run was trained with, else the default."""

    workdir: Path
    videos: tuple[str, ...]
    out: Path
    pose: str | None = None
    pose_weights: str | None = None
    asr: str | None = None
    detector: str | None = None
    yolo_weights: str | None = None
    device: str | None = None
    image_fps: float | str | None = None
    labeler: str = "none"
    labeler_config: LabelerConfig | None = None
    checkpoint: str = "latest"
    openpose_binary: Path | None = None  # for a run trained on OpenPose's keypoints
    openpose_models: Path | None = None
    windows_per_video: int = 32
    subject: str = ""
    python: str = sys.executable  # runs the JAX side's commands


@dataclasses.dataclass
class PredictSummary:
    out: str
    predicted: list[str]
    failed: dict[str, dict[str, str]]  # video (or input) → {"step", "reason"}

    def text(self) -> str:
        lines = [f"{len(self.predicted)} videos predicted, {len(self.failed)} failed"]
        if self.failed:
            lines += ["", "| video | step | reason |", "|---|---|---|"]
            for vid, f in self.failed.items():
                reason = f["reason"].replace("|", "/").replace("\n", " ")
                lines.append(f"| {vid} | {f['step']} | {reason} |")
        lines.append(f"predictions: {Path(self.out) / 'predictions.csv'}")
        return "\n".join(lines)


def keypoint_choice(run: TrainedRun, pose: str | None) -> str:
    """The ``--pose`` to use: the one asked for when the run was trained on its keypoints,
    else the run's own; refuses one that makes other keypoints than the run learnt."""
    known = sorted(run.keypoint_sources - {""})
    if "keypoints" not in run.branches:
        return pose or "openpose-json"
    if pose is not None:
        source = "openpose" if pose in OPENPOSE_CHOICES else pose
        if known and source not in known:
            raise PredictError(
                f"{run.workdir} was trained on keypoints from {', '.join(known)}; --pose {pose} "
                f"makes them with {source}, whose points the model never saw: use --pose "
                f"{_pose_for(known[0])} or a run trained on {source} keypoints"
            )
        return pose
    if len(known) == 1:
        return _pose_for(known[0])
    raise PredictError(
        f"{run.workdir}: its training records do not say which keypoint source made them "
        f"({known or 'none recorded'}); give --pose"
    )


def _pose_for(source: str) -> str:
    return "openpose-bin" if source == "openpose" else source


def _inputs(videos: tuple[str, ...]) -> tuple[list[str], dict[str, dict[str, str]]]:
    """The inputs that name video files, and a failure for each that names none."""
    good, failed = [], {}
    for item in videos:
        try:
            video_rows([item])
        except CorpusError as e:
            failed[str(item)] = {"step": "input", "reason": str(e)}
        else:
            good.append(item)
    return good, failed


def _missing_inputs(record: VideoRecord, run: TrainedRun, notes: list[str]) -> str | None:
    """Why the run cannot read this record, or None."""
    seen = {"keypoints", "image"} & set(run.branches)
    if seen and any(n.startswith("no person found") for n in notes):
        # The crops (and the keypoints found in them) are of the fallback box: nobody.
        return f"the run reads {' and '.join(sorted(seen))} and no person was found in the video"
    if "keypoints" in run.branches and not (record.keypoints[..., 2] > 0).any():
        return "the run reads keypoints and none were found in the video"
    if "image" in run.branches and not record.num_images:  # read without the crops
        return "the run reads person crops and the video gave none"
    if "text" in run.branches and not record.transcript.strip():
        heard = [n for n in notes if "audio" in n or "speech" in n]
        return "the run reads a transcript and " + (heard[0] if heard else "there is none")
    return None


def _subprocess(cmd: list[str], what: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    if done.returncode != 0:
        tail = (done.stderr or done.stdout)[-3000:]
        raise PredictError(f"{what} failed (exit {done.returncode}): {' '.join(cmd)}\n{tail}")


def _encode(config: PredictConfig, run: TrainedRun, inputs: Path, out: Path) -> Path:
    assert run.encoder is not None
    _subprocess(
        [
            config.python,
            "-m",
            "hemo_jax.encode",
            f"--config={ENCODE_CONFIG}",
            f"--config.input={inputs}",
            f"--config.output={out}",
            "--config.overwrite=True",
            "--config.progress=False",
            *encode_overrides(run.encoder),
        ],
        "encoding the crops",
    )
    made = json.loads(json.loads((out / "manifest.json").read_text())["created"]["description"])
    differ = [k for k in ENCODER_KEYS if made.get(k) != run.encoder.get(k)]
    if differ:
        raise PredictError(
            f"the features of {out} differ from those {run.workdir} trained on in "
            + "; ".join(f"{k}: {made.get(k)!r} here, {run.encoder.get(k)!r} there" for k in differ)
        )
    return out


def _predictions_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(
        buf,
        [
            "video_id",
            "video",
            "probability_win",
            "probability_lose",
            "prediction",
            "model",
            "checkpoint",
            "page",
        ],
    )
    w.writeheader()
    w.writerows(rows)
    atomic.write_text(path, buf.getvalue())


def _page_name(video_id: str) -> str:
    return video_id.replace("/", "__") + ".html"


def predict_videos(config: PredictConfig) -> PredictSummary:
    """Runs the steps of the module doc; raises ``PredictError`` for settings that fail all."""
    run = read_trained_run(config.workdir, config.checkpoint)
    pose = keypoint_choice(run, config.pose)
    if "text" in run.branches and config.asr is None:
        raise PredictError(
            f"{run.workdir} reads transcripts (its text branch): give --asr MODEL (a Whisper "
            "model name or folder) so speech becomes text"
        )
    if "image" in run.branches and run.encoder is None:
        raise PredictError(
            f"{run.shards}: the run's image features do not say how they were encoded (no "
            "hemo_jax.encode settings in its manifest)"
        )
    trained = run.preprocess or {}
    good, failed = _inputs(config.videos)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    if not good:
        return _finish(out, [], failed)
    image_fps = config.image_fps or trained.get("image_fps") or CropParams().image_fps
    detector = config.detector or trained.get("detector")
    if detector == "keypoints" or (detector is None and pose in POSE_ESTIMATORS):
        detector = "yolo"  # new videos come without keypoints to box
    raw = out / "raw"
    summary = run_corpus(
        RunConfig(
            corpus="videos",
            root=Path("."),
            out=raw,
            videos=tuple(good),
            subject=config.subject,
            detector=detector,
            labeler=config.labeler,
            labeler_config=config.labeler_config or LabelerConfig(cache_dir=raw / "label_cache"),
            keep_unlabelled=True,
            crop=CropParams(image_fps=image_fps),
            yolo_weights=config.yolo_weights or trained.get("yolo_weights") or "yolo11x.pt",
            device=config.device,
            pose=pose,
            pose_weights=config.pose_weights,
            openpose_binary=config.openpose_binary,
            openpose_models=config.openpose_models,
            asr=config.asr,
            progress=False,
        )
    )
    ids = [r.video_id for r in video_rows(good, subject_id=config.subject)]
    files = {r.video_id: str(r.video_path) for r in video_rows(good)}
    for vid in ids:
        if vid in summary.failed:
            failed[vid] = summary.failed[vid]
    raw_set = open_shards(raw)
    usable = []
    for vid in ids:
        if vid in failed:
            continue
        record = raw_set.read(raw_set.index_of(vid), skip=("crops", "image_features"))
        why = _missing_inputs(record, run, summary.warnings.get(vid, []))
        if why:
            failed[vid] = {"step": "inputs", "reason": why}
        else:
            usable.append(vid)
    if not usable:
        return _finish(out, [], failed)
    inputs = out / "inputs"
    write_records(
        (raw_set.read(raw_set.index_of(v)) for v in usable),
        inputs,
        records_per_shard=16,
        overwrite=True,
    )
    shards = _encode(config, run, inputs, out / "features") if "image" in run.branches else inputs
    model_csv, windows_csv = out / "model_predictions.csv", out / "windows.csv"
    _subprocess(
        [
            config.python,
            "-m",
            "hemo_jax.predict",
            f"--workdir={run.workdir}",
            f"--shards={shards}",
            "--splits=unlabeled",
            f"--checkpoint={config.checkpoint}",
            f"--out={model_csv}",
            f"--windows={windows_csv}",
            f"--windows_per_video={config.windows_per_video}",
        ],
        "the model's prediction",
    )
    with open(model_csv, newline="", encoding="utf-8") as f:
        probability = {r["video_id"]: float(r["probability_win"]) for r in csv.DictReader(f)}
    windows = read_windows(windows_csv)
    checkpoint = ", ".join(f"{w} step {s}" for w, s in run.checkpoints.items())
    if config.checkpoint != "latest":
        checkpoint = f"{config.checkpoint} ({checkpoint})"
    pages = out / "pages"
    pages.mkdir(exist_ok=True)
    with_crops = open_shards(inputs)
    rows = []
    for vid in usable:
        p = probability[vid]
        page = pages / _page_name(vid)
        record = with_crops.read(with_crops.index_of(vid), skip=("image_features",))
        notes = list(summary.warnings.get(vid, []))
        if run.uses_labeler and config.labeler == "none":
            notes.append("the stacked fusion weighs a labeler's verdict; none ran, so none")
        atomic.write_text(
            page,
            render_page(
                record,
                windows.get(vid, []),
                probability_win=p,
                model=f"{run.model} ({run.workdir})",
                checkpoint=checkpoint,
                notes=notes,
            ),
        )
        rows.append(
            {
                "video_id": vid,
                "video": files[vid],
                "probability_win": f"{p:.6f}",
                "probability_lose": f"{1 - p:.6f}",
                "prediction": "win" if p >= 0.5 else "lose",
                "model": f"{run.model} ({run.workdir})",
                "checkpoint": checkpoint,
                "page": str(page.relative_to(out)),
            }
        )
    _predictions_csv(out / "predictions.csv", rows)
    return _finish(out, usable, failed)


def _finish(out: Path, predicted: list[str], failed: dict[str, dict[str, str]]) -> PredictSummary:
    summary = PredictSummary(str(out), predicted, failed)
    if not predicted:
        _predictions_csv(out / "predictions.csv", [])
    atomic.write_json(
        out / SUMMARY_FILE, {"predicted": predicted, "failed": failed, "text": summary.text()}
    )
    return summary
