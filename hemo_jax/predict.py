"""Run a trained model on shards: ``python -m hemo_jax.predict --workdir W --shards S --out F.csv``.

Writes one row per video (id, true label if known, pseudo label, prediction,
P(win), the labeler's reasoning) for every record of the chosen splits. A
workdir of ``hemo_jax.stack`` predicts with its full stage-1 runs and the
fitted stacked fusion.

``--windows W.csv`` also writes the evidence along each video: windows of the trained
length laid over the whole video (``--windows_per_video`` at most), one row per window
with its source-frame range, P(win) and log-odds; a stacked workdir's rows are its
fusion applied to each full run's window log-odds (with the video's labeler verdict).
"""

from __future__ import annotations

import csv
import io

import numpy as np
from absl import app, flags

from hemo_jax.contract import atomic
from hemo_jax.contract.schema import SPLITS
from hemo_jax.contract.shards import ShardSet, open_shards
from hemo_jax.data import pipeline
from hemo_jax.experiment import stack
from hemo_jax.experiment.experiment import load_trained
from hemo_jax.training import report, stack_fit

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "A training workdir or a stacked one.", required=True
)
_SHARDS = flags.DEFINE_string("shards", None, "Shard set to predict on (default: the config's).")
_SPLITS = flags.DEFINE_list("splits", list(SPLITS), "Splits to predict.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "latest", "latest, best or a step number.")
_OUT = flags.DEFINE_string("out", None, "Output CSV.", required=True)
_WINDOWS = flags.DEFINE_string("windows", None, "Also write per-window P(win) to this CSV.")
_WINDOWS_PER_VIDEO = flags.DEFINE_integer(
    "windows_per_video", 32, "Most windows laid over one video for --windows.", lower_bound=1
)


def predict(
    workdir: str, out: str, *, shards: str | None, splits: list[str], checkpoint_step: str
) -> list[report.VideoPrediction]:
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown splits {unknown}; expected some of {SPLITS}")
    if stack.is_stacked(workdir):
        shard_set = open_shards(shards or stack.load(workdir)["shards"])
        rows = stack.predict(workdir, shard_set, splits, checkpoint_step=checkpoint_step)
        report.write_predictions_csv(out, rows)
        return rows
    trained = load_trained(workdir, checkpoint_step=checkpoint_step, shards=shards)
    shard_set = open_shards(trained.config.data.shards)
    rows = []
    for split in splits:
        if not any(info.split == split for info in shard_set.infos):
            continue
        evaluator = trained.experiment.evaluator(shard_set, trained.mesh, split)
        pred = evaluator.predict(trained.model)
        rows += report.video_predictions(shard_set, pred.record_index, pred.probability)
    report.write_predictions_csv(out, rows)
    return rows


def _run_windows(
    workdir: str, shards: ShardSet, splits: list[str], checkpoint_step: str, windows: int
) -> dict[tuple[int, int], tuple[int, int, float]]:
    """(record index, window) -> (first source frame, last source frame, P(win)) of one run,
    for ``windows`` evenly spaced windows over each video."""
    trained = load_trained(workdir, checkpoint_step=checkpoint_step, shards=str(shards.root))
    out = {}
    for split in splits:
        if not any(info.split == split for info in shards.infos):
            continue
        evaluator = trained.experiment.evaluator(shards, trained.mesh, split, windows=windows)
        for (index, w), prob in evaluator.window_predictions(trained.model).items():
            frames = shards.read(index, skip=("crops", "image_features")).keypoint_frames
            first, last = 0, 0
            if len(frames):
                start = pipeline.window_starts(len(frames), trained.window_rows, windows)[w]
                first = int(frames[start])
                last = int(frames[min(start + trained.window_rows, len(frames)) - 1])
            out[index, w] = (first, last, prob)
    return out


def write_window_predictions(
    workdir: str,
    out: str,
    *,
    shards: str | None,
    splits: list[str],
    checkpoint_step: str,
    windows: int,
) -> int:
    """The per-window evidence of ``--windows`` (see the module doc); the number of rows."""
    if stack.is_stacked(workdir):
        saved = stack.load(workdir)
        shard_set = open_shards(shards or saved["shards"])
        fusion = stack_fit.StackedFusion.from_json(saved)
        runs = saved["full_runs"]
    else:
        trained = load_trained(workdir, checkpoint_step=checkpoint_step, shards=shards)
        shard_set = open_shards(trained.config.data.shards)
        fusion, runs = None, {"model": workdir}
    per_run = {
        name: _run_windows(run, shard_set, splits, checkpoint_step, windows)
        for name, run in runs.items()
    }
    keys = sorted(set.intersection(*(set(v) for v in per_run.values())))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["video_id", "window", "first_frame", "last_frame", "probability_win", "log_odds"])
    for index, window in keys:
        first, last, prob = per_run[min(per_run)][index, window]
        if fusion is not None:
            info = shard_set.infos[index]
            feats = [
                float(
                    stack_fit.labeler_evidence(
                        np.array([info.pseudo_label]), np.array([info.pseudo_confidence])
                    )[0]
                )
                if name == stack_fit.LABELER
                else float(stack_fit.log_odds(np.array([per_run[name][index, window][2]]))[0])
                for name in fusion.names
            ]
            prob = float(fusion.probability(np.array([feats]))[0])
        odds = float(stack_fit.log_odds(np.array([prob]))[0])
        vid = shard_set.infos[index].video_id
        w.writerow([vid, window, first, last, f"{prob:.6f}", f"{odds:.6f}"])
    atomic.write_bytes(out, buf.getvalue().encode())
    return len(keys)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    rows = predict(
        _WORKDIR.value,
        _OUT.value,
        shards=_SHARDS.value,
        splits=_SPLITS.value,
        checkpoint_step=_CHECKPOINT.value,
    )
    print(f"wrote {len(rows)} predictions to {_OUT.value}")
    if _WINDOWS.value:
        n = write_window_predictions(
            _WORKDIR.value,
            _WINDOWS.value,
            shards=_SHARDS.value,
            splits=_SPLITS.value,
            checkpoint_step=_CHECKPOINT.value,
            windows=_WINDOWS_PER_VIDEO.value,
        )
        print(f"wrote {n} windows to {_WINDOWS.value}")


if __name__ == "__main__":
    app.run(main)
