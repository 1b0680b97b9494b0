"""The paired tests of the research-question tables, against known values."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from hemo_jax.ablation.stats import (
    Corpus,
    balanced_accuracy,
    discordant,
    mcnemar_exact,
    paired_bootstrap,
)
from hemo_jax.training import metrics


@pytest.mark.parametrize("b,c", [(0, 0), (1, 0), (5, 5), (3, 12), (12, 3), (0, 9), (40, 61)])
def test_mcnemar_matches_scipy_binomtest(b, c):
    want = 1.0 if b + c == 0 else scipy_stats.binomtest(b, b + c, 0.5).pvalue
    assert mcnemar_exact(b, c) == pytest.approx(want, rel=1e-12)


def test_mcnemar_textbook_value_and_bad_counts():
    # b=2, c=8: 2 * P(X <= 2 | n=10) = 2 * 56 / 1024.
    assert mcnemar_exact(2, 8) == pytest.approx(112 / 1024)
    with pytest.raises(ValueError, match="b=-1"):
        mcnemar_exact(-1, 3)


def test_discordant_counts():
    labels = np.array([1, 1, 0, 0, 1])
    assert discordant(labels, np.array([1, 0, 0, 1, 1]), np.array([0, 1, 0, 0, 1])) == (1, 2)


def test_balanced_accuracy_matches_the_metrics_module():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 40)
    pred = rng.integers(0, 2, (3, 40))
    got = balanced_accuracy(labels, (pred == labels).astype(float), np.ones((1, 40)))[0]
    for s in range(3):
        want = metrics.point_metrics(labels, pred[s].astype(float))["balanced_accuracy"]
        assert got[s] == pytest.approx(want)


def _corpus(rng, n, acc_a, acc_b, seeds=3):
    labels = rng.integers(0, 2, n)
    flip = lambda acc: np.where(rng.random((seeds, n)) < acc, labels, 1 - labels)  # noqa: E731
    return Corpus(labels, flip(acc_a), flip(acc_b))


def test_bootstrap_resolves_a_large_gap_and_not_identical_models():
    rng = np.random.default_rng(1)
    big = paired_bootstrap([_corpus(rng, 200, 0.9, 0.6) for _ in range(3)], num_resamples=500)
    assert big.resolved and big.low > 0.2 and big.p_value < 0.01
    assert big.difference == pytest.approx(0.3, abs=0.05)
    c = _corpus(rng, 80, 0.7, 0.7)
    same = paired_bootstrap([Corpus(c.labels, c.pred_a, c.pred_a)], num_resamples=200)
    assert (same.difference, same.low, same.high) == (0.0, 0.0, 0.0) and not same.resolved


def test_bootstrap_interval_width_is_the_known_binomial_one():
    """A beats B on a random half of 100 videos and loses none: the difference in accuracy
    (balanced, classes of 50) is 0.5 with standard error about sqrt(.25/100) = 0.05."""
    labels = np.repeat([0, 1], 50)
    a = labels.copy()
    b = labels.copy()
    b[::2] = 1 - b[::2]
    res = paired_bootstrap([Corpus(labels, a[None], b[None])], num_resamples=4000, seed=3)
    assert res.difference == pytest.approx(0.5)
    assert res.high - res.low == pytest.approx(2 * 1.96 * 0.05, rel=0.15)


def test_bootstrap_refuses_unpaired_predictions():
    with pytest.raises(ValueError, match="do not pair"):
        paired_bootstrap([Corpus(np.zeros(4), np.zeros((2, 4)), np.zeros((3, 4)))])
