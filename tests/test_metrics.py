"""Evaluation metrics against scikit-learn on fixed predictions."""

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from hemo_jax.training import metrics


def _cases():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 100)
    probs = np.clip(labels * 0.3 + rng.uniform(0, 0.7, 100), 0, 1)
    yield labels, probs
    yield labels, np.round(probs, 1)  # many ties for AUROC
    yield np.array([0, 0, 1, 1, 1]), np.array([0.9, 0.8, 0.7, 0.6, 0.1])  # mostly wrong
    yield np.array([1, 1, 1, 0]), np.array([0.9, 0.9, 0.9, 0.9])  # one class predicted


@pytest.mark.parametrize("labels,probs", list(_cases()))
def test_point_metrics_match_sklearn(labels, probs):
    got = metrics.point_metrics(labels, probs)
    pred = (probs >= 0.5).astype(int)
    recall = skm.recall_score(labels, pred, average=None, labels=[0, 1], zero_division=0)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(labels, pred))
    assert got["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(labels, pred))
    assert got["macro_f1"] == pytest.approx(
        skm.f1_score(labels, pred, average="macro", zero_division=0)
    )
    assert got["recall_lose"] == pytest.approx(recall[0])
    assert got["recall_win"] == pytest.approx(recall[1])
    assert got["auroc"] == pytest.approx(skm.roc_auc_score(labels, probs))
    np.testing.assert_array_equal(
        metrics.confusion(labels, pred), skm.confusion_matrix(labels, pred, labels=[0, 1])
    )


def test_bootstrap_interval_brackets_point_and_narrows_with_more_videos():
    rng = np.random.default_rng(1)

    def width(n):
        labels = rng.integers(0, 2, n)
        probs = np.clip(labels * 0.4 + rng.uniform(0, 0.6, n), 0, 1)
        iv, cm = metrics.evaluate_with_intervals(labels, probs, num_bootstrap=300)
        acc = iv["accuracy"]
        assert acc.low <= acc.value <= acc.high
        assert cm.sum() == n
        return acc.high - acc.low

    assert width(2000) < width(100) / 2


def test_classification_sums_ignore_padding_rows():
    logits = jnp.array([[2.0, 0.0], [0.0, 2.0], [5.0, -5.0]])
    labels = jnp.array([0, 0, 1])
    full = metrics.classification_sums(logits[:2], labels[:2], jnp.ones(2), jnp.ones(2))
    padded = metrics.classification_sums(logits, labels, jnp.ones(3), jnp.array([1.0, 1.0, 0.0]))
    for k in full:
        assert float(full[k]) == pytest.approx(float(padded[k]))
    assert metrics.finalize_sums(padded)["accuracy"] == pytest.approx(0.5)


def test_intervals_print_one_aligned_line_per_metric():
    text = metrics.format_intervals(
        {
            "balanced_accuracy": metrics.Interval(0.8864, 0.8125, 0.95),
            "auroc": metrics.Interval(0.97, 0.9412, 0.9923),
        }
    )
    assert text.splitlines() == [
        " balanced_accuracy: 0.886  [0.812, 0.950]",
        "             auroc: 0.970  [0.941, 0.992]",
    ]
