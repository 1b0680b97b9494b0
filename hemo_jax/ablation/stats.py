"""Paired tests of a model against a reference on the same test videos.

Two tests, as the protocol asks of "A beats B":

- ``paired_bootstrap``: the difference in balanced accuracy, averaged over training
  seeds and corpora, with a percentile interval from resampling the test videos of each
  corpus (the same draw for both models and every seed, so the pairing is kept); the
  difference is resolved when the interval excludes 0.
- ``mcnemar_exact``: the exact McNemar test on the discordant videos (one model right,
  the other wrong): a two-sided binomial test of ``b`` successes in ``b + c`` at 1/2.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for ``b`` and ``c`` discordant pairs; 1 when none.

    With n = b + c and k = min(b, c): p = min(1, 2 * P(X <= k)), X ~ Binomial(n, 1/2),
    which is the two-sided binomial test's p-value since the distribution is symmetric.
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    n, k = b + c, min(b, c)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def discordant(labels: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray) -> tuple[int, int]:
    """(videos A gets right and B wrong, videos B gets right and A wrong)."""
    right_a, right_b = pred_a == labels, pred_b == labels
    return int(np.sum(right_a & ~right_b)), int(np.sum(right_b & ~right_a))


def balanced_accuracy(labels: np.ndarray, correct: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Balanced accuracy of ``correct`` [S, N] (S seeds, N videos) under video ``counts``
    [B, N] (one row per resample; ones for the sample itself): [B, S]. A class absent from
    a resample is left out of that resample's mean."""
    recalls = []
    for cls in np.unique(labels):
        member = (labels == cls).astype(np.float64)
        hits = counts @ (correct * member).T  # [B, S]
        total = (counts @ member)[:, None]  # [B, 1]
        with np.errstate(invalid="ignore", divide="ignore"):
            recalls.append(np.where(total > 0, hits / total, np.nan))
    return np.nanmean(np.stack(recalls), axis=0)


@dataclasses.dataclass(frozen=True)
class Corpus:
    """One corpus's test videos: true labels [N] and each model's hard predictions per
    training seed [S, N] (the same seeds, in the same order, for both)."""

    labels: np.ndarray
    pred_a: np.ndarray
    pred_b: np.ndarray


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    difference: float  # mean balanced accuracy of A minus B
    low: float
    high: float
    p_value: float  # two-sided bootstrap p-value of no difference

    @property
    def resolved(self) -> bool:
        return self.low > 0 or self.high < 0


def paired_bootstrap(
    corpora: Sequence[Corpus], *, num_resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> PairedDifference:
    """Balanced accuracy of A minus B, averaged over seeds and corpora, with its interval."""
    if not corpora:
        raise ValueError("paired_bootstrap needs at least one corpus")
    rng = np.random.default_rng(seed)
    point, draws = [], []
    for corpus in corpora:
        labels = np.asarray(corpus.labels)
        a, b = np.atleast_2d(corpus.pred_a), np.atleast_2d(corpus.pred_b)
        if a.shape != b.shape or a.shape[1] != len(labels):
            raise ValueError(
                f"predictions {a.shape} and {b.shape} do not pair with {len(labels)} labels"
            )
        n = len(labels)
        ones = np.ones((1, n))
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=num_resamples).astype(np.float64)
        right_a, right_b = (a == labels).astype(np.float64), (b == labels).astype(np.float64)
        for target, weights in ((point, ones), (draws, counts)):
            acc_a = balanced_accuracy(labels, right_a, weights)
            target.append((acc_a - balanced_accuracy(labels, right_b, weights)).mean(axis=1))
    boot = np.nanmean(np.stack(draws), axis=0)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(boot, [tail, 1.0 - tail])
    p = min(1.0, 2.0 * min(np.mean(boot <= 0), np.mean(boot >= 0)))
    difference = float(np.mean([d[0] for d in point]))
    return PairedDifference(difference, float(low), float(high), float(p))
