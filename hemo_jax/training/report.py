"""Evaluation artefacts: per-video CSV, PNG plots and one self-contained HTML report."""

from __future__ import annotations

import base64
import csv
import dataclasses
import html
import io
import json
import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from hemo_jax.contract import atomic
from hemo_jax.contract.shards import ShardSet  # noqa: E402
from hemo_jax.training import metrics  # noqa: E402


@dataclasses.dataclass(frozen=True)
class VideoPrediction:
    video_id: str
    label: int
    pseudo_label: int
    probability: float  # P(win)
    reasoning: str = ""

    @property
    def prediction(self) -> int:
        return int(self.probability >= 0.5)


def video_predictions(
    shards: ShardSet, record_index: Sequence[int], probability: Sequence[float]
) -> list[VideoPrediction]:
    """One row per record: its id, labels and reasoning from the shards, beside P(win)."""
    rows = []
    for index, prob in zip(record_index, probability, strict=True):
        rec = shards.read(int(index), skip=("crops", "image_features"))
        rows.append(
            VideoPrediction(rec.video_id, rec.label, rec.pseudo_label, float(prob), rec.reasoning)
        )
    return rows


def write_predictions_csv(path: str, rows: Sequence[VideoPrediction]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["video_id", "label", "pseudo_label", "prediction", "probability_win", "reasoning"])
    for r in rows:
        w.writerow(
            [r.video_id, r.label, r.pseudo_label, r.prediction, f"{r.probability:.6f}", r.reasoning]
        )
    atomic.write_bytes(path, buf.getvalue().encode())


def read_metrics_log(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def plot_curves(log: Sequence[Mapping]) -> bytes:
    fig, (ax_loss, ax_eval) = plt.subplots(1, 2, figsize=(10, 3.6))
    train = [r for r in log if r.get("kind") == "train"]
    evals = [r for r in log if r.get("kind") == "eval"]
    if train:
        ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    ax_loss.set_xlabel("step")
    ax_loss.set_title("training loss")
    for key in ("balanced_accuracy", "accuracy", "auroc"):
        pts = [(r["step"], r[key]) for r in evals if key in r]
        if pts:
            ax_eval.plot(*zip(*pts, strict=True), marker="o", label=key)
    ax_eval.set_ylim(0, 1)
    ax_eval.set_xlabel("step")
    ax_eval.set_title("evaluation")
    ax_eval.legend(loc="lower right")
    return _png(fig)


def plot_confusion(cm: np.ndarray) -> bytes:
    fig, ax = plt.subplots(figsize=(3.6, 3.2))
    ax.imshow(cm, cmap="Blues")
    names = ["lose", "win"]
    ax.set_xticks([0, 1], names)
    ax.set_yticks([0, 1], names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", color="black")
    ax.set_title("confusion matrix")
    return _png(fig)


def plot_roc(labels: np.ndarray, probs: np.ndarray) -> bytes:
    order = np.argsort(-probs, kind="mergesort")
    y = labels[order].astype(bool)
    tpr = np.concatenate([[0], np.cumsum(y) / max(y.sum(), 1)])
    fpr = np.concatenate([[0], np.cumsum(~y) / max((~y).sum(), 1)])
    fig, ax = plt.subplots(figsize=(3.6, 3.4))
    ax.plot(fpr, tpr, label=f"AUROC {metrics.auroc(labels, probs):.3f}")
    ax.plot([0, 1], [0, 1], "--", color="gray")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(loc="lower right")
    ax.set_title("ROC (positive = win)")
    return _png(fig)


def write_report(
    out_dir: str,
    rows: Sequence[VideoPrediction],
    *,
    title: str,
    notes: Sequence[str] = (),
    log: Sequence[Mapping] = (),
    num_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, metrics.Interval]:
    """Writes predictions.csv, the PNG plots, metrics.json and report.html to ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    labels = np.array([r.label for r in rows])
    probs = np.array([r.probability for r in rows])
    intervals, cm = metrics.evaluate_with_intervals(
        labels, probs, num_bootstrap=num_bootstrap, seed=seed
    )
    write_predictions_csv(os.path.join(out_dir, "predictions.csv"), rows)
    pngs = {
        **({"curves.png": plot_curves(log)} if log else {}),  # no curves without a training log
        "confusion.png": plot_confusion(cm),
        "roc.png": plot_roc(labels, probs),
    }
    for name, data in pngs.items():
        atomic.write_bytes(os.path.join(out_dir, name), data)
    if len(set(labels.tolist())) == 1:
        only = "win" if labels[0] == 1 else "lose"
        notes = [
            *notes,
            f"Only {only} videos here: AUROC is undefined (nan), and balanced accuracy "
            "and macro-F1 cover that one class.",
        ]
    summary = {
        "num_videos": len(rows),
        "class_counts": {"lose": int((labels == 0).sum()), "win": int((labels == 1).sum())},
        "metrics": {k: dataclasses.asdict(v) for k, v in intervals.items()},
        "confusion": cm.tolist(),
        "notes": list(notes),
    }
    atomic.write_bytes(
        os.path.join(out_dir, "metrics.json"), json.dumps(summary, indent=2).encode()
    )

    table = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v.value:.3f}</td>"
        f"<td>[{v.low:.3f}, {v.high:.3f}]</td></tr>"
        for k, v in intervals.items()
    )
    n = len(rows)
    half_width = 1.96 * np.sqrt(0.25 / max(n, 1))
    chance = (
        f"With {n} test videos, accuracy moves by about ±{half_width * 100:.0f} points "
        "(95%) by chance alone; read differences smaller than the intervals as noise."
    )
    imgs = "".join(
        f'<img alt="{name}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'
        for name, data in pngs.items()
    )
    body = (
        f"<h1>{html.escape(title)}</h1>"
        + "".join(f"<p>{html.escape(s)}</p>" for s in notes)
        + f"<p>{html.escape(chance)}</p>"
        + f"<p>{n} videos: {summary['class_counts']['win']} win, "
        f"{summary['class_counts']['lose']} lose.</p>"
        "<table><tr><th>metric</th><th>value</th><th>bootstrap 95% interval</th></tr>"
        + table
        + "</table>"
        + imgs
        + '<p>Per-video predictions: <a href="predictions.csv">predictions.csv</a></p>'
    )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;"
        "max-width:1100px;margin:2em auto}td,th{padding:2px 12px;text-align:left}"
        "img{margin:8px;vertical-align:top}</style></head><body>" + body + "</body></html>"
    )
    atomic.write_bytes(os.path.join(out_dir, "report.html"), page.encode())
    return intervals
