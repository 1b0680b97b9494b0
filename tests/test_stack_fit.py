"""Folds for out-of-fold runs, and the stacked fusion's fit (``hemo_jax.training.stack_fit``)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from records import record_info
from sklearn.linear_model import LogisticRegression

from hemo_jax.contract.shards import RecordInfo
from hemo_jax.data import splits
from hemo_jax.training import stack_fit


def corpus() -> list[RecordInfo]:
    """23 labelled training videos of 9 subjects (1-5 videos each), 4 test, 3 unlabelled."""
    infos = []
    for s, count in enumerate((5, 4, 3, 3, 2, 2, 2, 1, 1)):
        infos += [record_info(f"v{s}_{j}", f"s{s}", label=(s + j) % 2) for j in range(count)]
    infos += [record_info(f"t{j}", f"s{j}", "test", label=j % 2) for j in range(4)]
    infos += [
        record_info(f"u{j}", "s0", "unlabeled", -1, pseudo_label=1, pseudo_confidence=0.7)
        for j in range(3)
    ]
    return infos


def test_parse_fold_reads_k_of_K_and_names_a_bad_spec():
    assert splits.parse_fold("") is None
    assert splits.parse_fold("1/3") == (1, 3)
    for bad in ("3/3", "0/1", "-1/2", "a/2", "1", "1/2/3"):
        with pytest.raises(ValueError, match=re.escape(repr(bad))):
            splits.parse_fold(bad)


@pytest.mark.parametrize("k_folds", (2, 3, 5))
def test_folds_are_subject_disjoint_near_equal_and_fixed_by_the_ids(k_folds):
    infos = corpus()
    folds = splits.assign_folds(infos, ("train",), k_folds)
    train = [r for r in infos if r.split == "train"]
    # Every training subject has one fold, and only training subjects have one.
    assert set(folds) == {splits.group_of(r) for r in train}
    sizes = np.bincount([folds[splits.group_of(r)] for r in train], minlength=k_folds)
    assert sizes.sum() == len(train) and sizes.min() > 0
    assert sizes.max() - sizes.min() <= 5  # within the largest subject's 5 videos
    # The same ids in another order give the same folds.
    assert splits.assign_folds(infos[::-1], ("train",), k_folds) == folds


def test_videos_without_a_subject_are_their_own_group():
    infos = [record_info(f"v{i}", "", label=i % 2) for i in range(6)]
    folds = splits.assign_folds(infos, ("train",), 3)
    assert sorted(folds) == sorted(f"video:v{i}" for i in range(6))
    assert sorted(np.bincount(list(folds.values()))) == [2, 2, 2]


def test_too_few_subjects_for_the_folds_is_an_error():
    infos = [record_info("a", "s0"), record_info("b", "s1", label=0)]
    with pytest.raises(ValueError, match="2 subjects .* too few for 3 folds"):
        splits.assign_folds(infos, ("train",), 3)


def test_holding_out_a_fold_drops_its_labelled_videos_and_keeps_the_pool():
    infos = corpus()
    folds = splits.assign_folds(infos, ("train",), 2)
    kept = {}
    for k in range(2):
        sel = splits.select(infos, splits=("train",), pseudo_pool="unlabeled", hold_out=(k, 2))
        chosen = [infos[i] for i in sel.indices]
        kept[k] = {r.video_id for r in chosen if r.split == "train"}
        assert all(folds[splits.group_of(r)] != k for r in chosen if r.split == "train")
        assert sum(r.split == "unlabeled" for r in chosen) == 3
    # The two runs together trained on every labelled video once.
    assert kept[0].isdisjoint(kept[1])
    assert kept[0] | kept[1] == {r.video_id for r in infos if r.split == "train"}


def test_labeler_evidence_is_the_signed_log_odds_of_the_confidence():
    ev = stack_fit.labeler_evidence(np.array([1, 0, -1, 1]), np.array([0.9, 0.6, 0.0, 0.3]))
    # An unsure verdict (confidence below 0.5) is no evidence, not evidence for the other side.
    np.testing.assert_allclose(ev, [np.log(9.0), -np.log(1.5), 0.0, 0.0], atol=1e-12)


def test_balanced_weights_give_each_class_the_same_total():
    target = np.array([1, 1, 1, 0])
    w = stack_fit.balanced_weights(target, np.array([1.0, 1.0, 0.5, 1.0]))
    assert w[target == 1].sum() == pytest.approx(w[target == 0].sum())
    assert w.sum() == pytest.approx(3.5)
    assert w[0] == pytest.approx(2 * w[2])  # within a class the ratios stay


def test_fit_weighs_an_informative_feature_over_noise():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    signal = (2 * y - 1) * 2.0 + rng.normal(0, 1, 400)
    noise = rng.normal(0, 3, 400)
    fusion = stack_fit.fit(("a", "b"), np.c_[signal, noise], y, np.ones(400))
    assert fusion.coef[0] > 1.0 and abs(fusion.coef[1]) < 0.15 * fusion.coef[0]
    p = fusion.probability(np.c_[signal, noise])
    assert ((p > 0.5) == y).mean() > 0.9
    z = np.c_[signal, noise] @ fusion.coef + fusion.intercept
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-z)))


@pytest.mark.parametrize("l2", (0.1, 1.0, 10.0))
def test_fit_matches_scikit_learn(l2):
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 150)
    x = np.c_[(2 * y - 1) + rng.normal(0, 1.5, 150), rng.normal(0, 2, 150), rng.normal(1, 1, 150)]
    w = rng.uniform(0.5, 1.0, 150)
    fusion = stack_fit.fit(("a", "b", "c"), x, y, w, l2=l2)
    ref = LogisticRegression(C=1 / l2, tol=1e-12, max_iter=10_000)
    ref.fit(x, y, sample_weight=stack_fit.balanced_weights(y, w))
    np.testing.assert_allclose(fusion.coef, ref.coef_[0], atol=1e-5)
    assert fusion.intercept == pytest.approx(ref.intercept_[0], abs=1e-5)


def test_fit_with_a_heavier_penalty_shrinks_the_coefficients():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    x = ((2 * y - 1) + rng.normal(0, 1, 200))[:, None]
    loose = stack_fit.fit(("a",), x, y, np.ones(200), l2=0.01)
    tight = stack_fit.fit(("a",), x, y, np.ones(200), l2=100.0)
    assert 0 < tight.coef[0] < loose.coef[0] / 2


def test_fit_refuses_bad_input():
    x, y, w = np.zeros((4, 1)), np.array([0, 1, 0, 1]), np.ones(4)
    with pytest.raises(ValueError, match="both classes"):
        stack_fit.fit(("a",), x, np.ones(4, int), w)
    with pytest.raises(ValueError, match="non-finite"):
        stack_fit.fit(("a",), np.full((4, 1), np.inf), y, w)
    with pytest.raises(ValueError, match=r"features \(4, 1\) for 4 targets and features"):
        stack_fit.fit(("a", "b"), x, y, w)
    with pytest.raises(ValueError, match="l2 must be > 0"):
        stack_fit.fit(("a",), x, y, w, l2=0.0)


def test_saved_fusion_reads_back(tmp_path):
    fusion = stack_fit.StackedFusion(("keypoints", "labeler"), np.array([0.5, 2.0]), -0.25)
    stack_fit.save(str(tmp_path / "stack.json"), fusion, {"folds": 2})
    saved = json.loads((tmp_path / "stack.json").read_text())
    assert saved["folds"] == 2
    back = stack_fit.StackedFusion.from_json(saved)
    assert back.names == fusion.names
    x = np.array([[1.0, -1.0], [0.0, 1.0]])
    np.testing.assert_allclose(back.probability(x), fusion.probability(x))
    with pytest.raises(ValueError, match="1 coefficients for features"):
        stack_fit.StackedFusion.from_json({**saved, "coef": [1.0]})
