"""The stacked fusion over stage-1 runs: gather the runs, predict out of fold, fit, apply.

``stack`` fits and reports (the ``hemo_jax.stack`` command); ``predict`` applies a
fitted ``stack.json`` to any shard set (``hemo_jax.predict`` on a stacked workdir).
The fit itself, and why it is honest: ``hemo_jax.training.stack_fit``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from collections.abc import Sequence

import numpy as np

from hemo_jax.contract import atomic
from hemo_jax.contract.shards import ShardSet, open_shards
from hemo_jax.data import splits as splits_lib
from hemo_jax.experiment.experiment import load_trained
from hemo_jax.training import metrics, report, stack_fit

STACK_FILE = "stack.json"


class Stage1Run:
    """One stage-1 workdir: its branch, its fold (None for a full run), its model."""

    def __init__(self, workdir: str, checkpoint_step: str):
        self.workdir = workdir
        self.trained = load_trained(workdir, checkpoint_step=checkpoint_step)
        self.config = self.trained.config
        c = self.config
        if c.stage != 1 or len(c.branches) != 1:
            raise ValueError(
                f"{workdir}: stacking takes stage-1 runs of one branch; this one is stage "
                f"{c.stage} with branches {tuple(c.branches)}"
            )
        if c.pseudo.pool != "none":
            raise ValueError(
                f"{workdir}: trained on the pseudo pool {c.pseudo.pool!r}, so its predictions "
                "on those videos are not out of sample"
            )
        self.branch = c.branches[0]
        self.fold = splits_lib.parse_fold(c.data.get("fold", ""))

    def predict(self, shards: ShardSet, split: str) -> dict[int, float]:
        """P(win) per record index of ``split``."""
        trained = self.trained
        pred = trained.experiment.evaluator(shards, trained.mesh, split).predict(trained.model)
        return {int(i): float(p) for i, p in zip(pred.record_index, pred.probability, strict=True)}


def group_runs(runs: Sequence[Stage1Run]) -> tuple[dict[str, Stage1Run], dict[str, list], int]:
    """Checks the set of runs; returns the full run and the fold runs of every branch, and K."""
    first = runs[0].config.data
    for r in runs[1:]:
        d = r.config.data
        if (d.shards, tuple(d.train_splits), d.eval_split) != (
            first.shards,
            tuple(first.train_splits),
            first.eval_split,
        ):
            raise ValueError(
                f"{r.workdir} trained on {d.shards} {tuple(d.train_splits)} (eval "
                f"{d.eval_split!r}); {runs[0].workdir} on {first.shards} "
                f"{tuple(first.train_splits)} (eval {first.eval_split!r})"
            )
    full: dict[str, Stage1Run] = {}
    folds: dict[str, dict[int, Stage1Run]] = {}
    num_folds = {r.fold[1] for r in runs if r.fold}
    if not num_folds:
        raise ValueError(
            "no fold runs among the runs: the fusion is fitted on out-of-fold predictions, "
            "so every branch needs, beside its full run, one run per fold k of K "
            "(config.data.fold=k/K)"
        )
    if len(num_folds) != 1:
        raise ValueError(f"fold runs must share one K; got K in {sorted(num_folds)}")
    (k_folds,) = num_folds
    for r in runs:
        if r.fold is None:
            if r.branch in full:
                raise ValueError(
                    f"two full runs of {r.branch}: {full[r.branch].workdir}, {r.workdir}"
                )
            full[r.branch] = r
        else:
            seen = folds.setdefault(r.branch, {})
            if r.fold[0] in seen:
                raise ValueError(f"two runs of {r.branch} fold {r.fold[0]}/{k_folds}")
            seen[r.fold[0]] = r
    for branch in sorted(set(full) | set(folds)):
        missing = [f"{k}/{k_folds}" for k in range(k_folds) if k not in folds.get(branch, {})]
        if branch not in full or missing:
            raise ValueError(
                f"branch {branch}: "
                + ("no full run" if branch not in full else f"no run of fold {', '.join(missing)}")
            )
    return full, {b: [folds[b][k] for k in range(k_folds)] for b in full}, k_folds


def _feature_rows(
    shards: ShardSet,
    indices: Sequence[int],
    branch_probs: dict[str, dict[int, float]],
    names: Sequence[str],
    *,
    labeler_hidden: bool,
) -> np.ndarray:
    infos = shards.infos
    cols = []
    for name in names:
        if name == stack_fit.LABELER:
            pl = np.array([infos[i].pseudo_label for i in indices])
            conf = np.array([infos[i].pseudo_confidence for i in indices])
            ev = stack_fit.labeler_evidence(pl, conf)
            cols.append(np.zeros_like(ev) if labeler_hidden else ev)
        else:
            probs = branch_probs[name]
            absent = [infos[i].video_id for i in indices if i not in probs]
            if absent:
                raise ValueError(f"branch {name} has no prediction for videos {absent[:5]}")
            cols.append(stack_fit.log_odds(np.array([probs[i] for i in indices])))
    return np.stack(cols, axis=1)


@dataclasses.dataclass
class FitRows:
    """The rows the fusion is fitted on: features, target, weight, and where each came from."""

    index: list[int]
    source: list[str]
    x: np.ndarray
    y: np.ndarray
    w: np.ndarray


def _out_of_fold(shards: ShardSet, fold_runs: dict[str, list[Stage1Run]], k_folds: int):
    """P(win) of every labelled training video from the fold run that left it out."""
    infos = shards.infos
    train_splits = tuple(next(iter(fold_runs.values()))[0].config.data.train_splits)
    fold_of = splits_lib.assign_folds(infos, train_splits, k_folds)
    oof: dict[str, dict[int, float]] = {}
    for branch, runs_k in fold_runs.items():
        oof[branch] = {}
        for k, run in enumerate(runs_k):
            for split in train_splits:
                for i, p in run.predict(shards, split).items():
                    info = infos[i]
                    if info.label >= 0 and fold_of[splits_lib.group_of(info)] == k:
                        oof[branch][i] = p
    return oof


def _fit_rows(
    shards: ShardSet,
    full: dict[str, Stage1Run],
    fold_runs: dict[str, list[Stage1Run]],
    k_folds: int,
    names: tuple[str, ...],
    pool: str,
) -> FitRows:
    infos = shards.infos
    oof = _out_of_fold(shards, fold_runs, k_folds)
    index = sorted(oof[names[0]])
    rows = FitRows(
        index=index,
        source=["out_of_fold"] * len(index),
        x=_feature_rows(shards, index, oof, names, labeler_hidden=False),
        y=np.array([infos[i].label for i in index]),
        w=np.ones(len(index)),
    )
    if pool == "none":
        return rows
    probs = {b: r.predict(shards, pool) for b, r in full.items()}
    index = sorted(i for i in probs[names[0]] if infos[i].pseudo_label >= 0)
    rows.index += index
    rows.source += ["pool"] * len(index)
    rows.x = np.concatenate(
        [rows.x, _feature_rows(shards, index, probs, names, labeler_hidden=True)]
    )
    rows.y = np.concatenate([rows.y, [infos[i].pseudo_label for i in index]])
    rows.w = np.concatenate([rows.w, [infos[i].pseudo_confidence for i in index]])
    return rows


def stack(
    workdir: str,
    run_dirs: Sequence[str],
    *,
    pool: str = "none",
    use_labeler: bool = True,
    l2: float = 1.0,
    checkpoint_step: str = "latest",
    num_bootstrap: int = 1000,
) -> dict[str, metrics.Interval]:
    """Fits the stacked fusion of ``run_dirs`` and writes it and its report to ``workdir``."""
    runs = [Stage1Run(w, checkpoint_step) for w in run_dirs]
    full, fold_runs, k_folds = group_runs(runs)
    config = runs[0].config
    shards = open_shards(config.data.shards)
    names = (*sorted(full), *((stack_fit.LABELER,) if use_labeler else ()))
    fit_rows = _fit_rows(shards, full, fold_runs, k_folds, names, pool)
    fusion = stack_fit.fit(names, fit_rows.x, fit_rows.y, fit_rows.w, l2=l2)

    split = config.data.get("test_split", "test")
    rows = [r for r in _apply(fusion, full, shards, split) if r.label >= 0]
    if not rows:
        raise ValueError(f"split {split!r} of {config.data.shards} has no labelled videos")

    os.makedirs(workdir, exist_ok=True)
    counts = {src: fit_rows.source.count(src) for src in ("out_of_fold", "pool")}
    stack_fit.save(
        os.path.join(workdir, STACK_FILE),
        fusion,
        {
            "full_runs": {b: os.path.abspath(r.workdir) for b, r in full.items()},
            "fold_runs": {
                b: [os.path.abspath(r.workdir) for r in rs] for b, rs in fold_runs.items()
            },
            "folds": k_folds,
            "pool": pool,
            "l2": l2,
            "fit_rows": counts,
            "shards": config.data.shards,
        },
    )
    _write_fit_rows(os.path.join(workdir, "fit_rows.csv"), shards, fit_rows, names)
    coefs = ", ".join(f"{n} {c:+.3f}" for n, c in zip(fusion.names, fusion.coef, strict=True))
    notes = [
        f"Stacked fusion of {', '.join(sorted(full))}: a logistic regression (L2 {l2}) fitted on "
        f"{counts['out_of_fold']} labelled training videos predicted out of fold ({k_folds} "
        "subject-disjoint folds)"
        + (f" and {counts['pool']} pseudo-labelled {pool!r} videos" if counts["pool"] else "")
        + f"; coefficients {coefs}, intercept {fusion.intercept:+.3f}.",
        f"Split {split!r}, predicted by the full stage-1 runs "
        f"({', '.join(r.workdir for r in full.values())}).",
    ]
    if use_labeler:
        notes.append(
            "The labeler's verdict is a feature: it is known for every video, test ones included."
        )
    return report.write_report(
        os.path.join(workdir, "report"),
        rows,
        title=f"hemo_jax stacked fusion: {os.path.basename(os.path.abspath(workdir))}",
        notes=notes,
        num_bootstrap=num_bootstrap,
    )


def _apply(
    fusion: stack_fit.StackedFusion, runs: dict[str, Stage1Run], shards: ShardSet, split: str
) -> list[report.VideoPrediction]:
    """The fusion on every video of ``split``, from the full runs' predictions."""
    probs = {b: r.predict(shards, split) for b, r in runs.items()}
    index = sorted(probs[min(runs)])
    x = _feature_rows(shards, index, probs, fusion.names, labeler_hidden=False)
    return report.video_predictions(shards, index, fusion.probability(x))


def is_stacked(workdir: str) -> bool:
    return os.path.exists(os.path.join(workdir, STACK_FILE))


def load(workdir: str) -> dict:
    """A stacked workdir's ``stack.json``."""
    with open(os.path.join(workdir, STACK_FILE)) as f:
        return json.load(f)


def predict(
    workdir: str, shards: ShardSet, splits: Sequence[str], *, checkpoint_step: str = "latest"
) -> list[report.VideoPrediction]:
    """The fitted stacked fusion of ``workdir`` on every video of ``splits`` in ``shards``:
    the full stage-1 runs named in its ``stack.json`` predict, the coefficients combine."""
    saved = load(workdir)
    fusion = stack_fit.StackedFusion.from_json(saved)
    runs = {b: Stage1Run(w, checkpoint_step) for b, w in saved["full_runs"].items()}
    branches = sorted(n for n in fusion.names if n != stack_fit.LABELER)
    if sorted(runs) != branches:
        raise ValueError(f"{workdir}: features {list(fusion.names)} but full runs {sorted(runs)}")
    held = {info.split for info in shards.infos}
    return [row for split in splits if split in held for row in _apply(fusion, runs, shards, split)]


def _write_fit_rows(path: str, shards: ShardSet, rows: FitRows, names: Sequence[str]) -> None:
    buf = io.StringIO()
    out = csv.writer(buf)
    out.writerow(["video_id", "source", "target", "weight", *names])
    for n, (i, src) in enumerate(zip(rows.index, rows.source, strict=True)):
        feats = [f"{v:.6f}" for v in rows.x[n]]
        out.writerow([shards.infos[i].video_id, src, int(rows.y[n]), f"{rows.w[n]:.6f}", *feats])
    atomic.write_bytes(path, buf.getvalue().encode())
