"""Metrics: (sum, count) pairs for training, and the evaluation suite.

Training metrics are sums and counts under a validity mask, so they add up
across devices, hosts and a padded last batch. Evaluation metrics are computed
on the host from per-video labels and probabilities, in numpy, and each comes
with a bootstrap 95% interval.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def classification_sums(
    logits: jax.Array, labels: jax.Array, weights: jax.Array, valid: jax.Array
) -> dict[str, jax.Array]:
    """Per-batch sums for loss and accuracy; ``valid`` masks out padding rows.

    ``weights`` are the per-example loss weights (class weights times
    pseudo-label confidence); the weighted loss is sum(w * ce) / sum(w).
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    ce = -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
    w = weights * valid
    correct = (jnp.argmax(logits, axis=-1) == labels) * valid
    return {
        "loss_sum": jnp.sum(w * ce),
        "weight_sum": jnp.sum(w),
        "correct": jnp.sum(correct),
        "count": jnp.sum(valid),
    }


def finalize_sums(sums: dict[str, float]) -> dict[str, float]:
    """Turns accumulated sums into means."""
    return {
        "loss": float(sums["loss_sum"]) / max(float(sums["weight_sum"]), 1e-12),
        "accuracy": float(sums["correct"]) / max(float(sums["count"]), 1.0),
    }


def confusion(labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """2x2 counts, rows = true class (0 lose, 1 win), columns = predicted."""
    m = np.zeros((2, 2), np.int64)
    np.add.at(m, (labels.astype(int), predictions.astype(int)), 1)
    return m


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with tie correction); NaN if one class."""
    labels = labels.astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), np.float64)
    sorted_scores = scores[order]
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


# What point_metrics returns, and so what every evaluation logs.
METRIC_NAMES = ("accuracy", "balanced_accuracy", "macro_f1", "recall_lose", "recall_win", "auroc")


def point_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro-F1, per-class recall and AUROC.

    ``probabilities`` is P(win) per video; the prediction threshold is 0.5.
    """
    labels = np.asarray(labels).astype(int)
    probabilities = np.asarray(probabilities, np.float64)
    predictions = (probabilities >= 0.5).astype(int)
    m = confusion(labels, predictions)
    support = m.sum(axis=1)
    predicted = m.sum(axis=0)
    recall = np.divide(np.diag(m), support, out=np.zeros(2), where=support > 0)
    precision = np.divide(np.diag(m), predicted, out=np.zeros(2), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(2), where=denom > 0)
    present = support > 0
    return {
        "accuracy": float(np.mean(predictions == labels)),
        "balanced_accuracy": float(recall[present].mean()),
        "macro_f1": float(f1[present | (predicted > 0)].mean()),
        "recall_lose": float(recall[0]),
        "recall_win": float(recall[1]),
        "auroc": auroc(labels, probabilities),
    }


@dataclasses.dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float


def format_intervals(intervals: Mapping[str, Interval]) -> str:
    """One line per metric, ``name: value  [low, high]``, as the entry points print them."""
    return "\n".join(
        f"{name:>18}: {iv.value:.3f}  [{iv.low:.3f}, {iv.high:.3f}]"
        for name, iv in intervals.items()
    )


def _percentile_interval(point: float, samples: Sequence[float]) -> Interval:
    """The 2.5-97.5 percentiles of the defined samples (AUROC of a one-class split has
    none: NaN bounds)."""
    values = np.asarray(samples, np.float64)
    values = values[~np.isnan(values)]
    if not len(values):
        return Interval(point, float("nan"), float("nan"))
    return Interval(point, *np.percentile(values, [2.5, 97.5]).tolist())


def evaluate_with_intervals(
    labels: np.ndarray,
    probabilities: np.ndarray,
    *,
    num_bootstrap: int = 1000,
    seed: int = 0,
) -> tuple[dict[str, Interval], np.ndarray]:
    """Point metrics with percentile bootstrap 95% intervals, and the confusion matrix.

    Videos are resampled with replacement; a resample that lacks a class is
    redrawn so every metric is defined.
    """
    if num_bootstrap < 1:
        raise ValueError(f"num_bootstrap must be >= 1, got {num_bootstrap}")
    labels = np.asarray(labels).astype(int)
    probabilities = np.asarray(probabilities, np.float64)
    point = point_metrics(labels, probabilities)
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {k: [] for k in point}
    n = len(labels)
    both = len(np.unique(labels)) == 2
    while len(samples["accuracy"]) < num_bootstrap:
        idx = rng.integers(0, n, n)
        if both and len(np.unique(labels[idx])) < 2:
            continue
        for k, v in point_metrics(labels[idx], probabilities[idx]).items():
            samples[k].append(v)
    intervals = {k: _percentile_interval(point[k], v) for k, v in samples.items()}
    return intervals, confusion(labels, (probabilities >= 0.5).astype(int))
