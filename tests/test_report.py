"""The evaluation report: files, metrics and what it says of a one-class split."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hemo_jax.training import metrics, report


def _rows(labels, probs):
    return [
        report.VideoPrediction(f"v{i}", int(y), -1, float(p))
        for i, (y, p) in enumerate(zip(labels, probs, strict=True))
    ]


def test_report_files_and_metrics(tmp_path):
    labels, probs = [0, 1, 1, 0, 1, 0], [0.2, 0.9, 0.4, 0.6, 0.7, 0.1]
    intervals = report.write_report(
        str(tmp_path), _rows(labels, probs), title="t", notes=["a note"], num_bootstrap=50
    )
    files = {p.name for p in tmp_path.iterdir()}
    assert files == {"predictions.csv", "confusion.png", "roc.png", "metrics.json", "report.html"}
    saved = json.loads((tmp_path / "metrics.json").read_text())
    point = metrics.point_metrics(np.array(labels), np.array(probs))
    for name in metrics.METRIC_NAMES:
        assert saved["metrics"][name]["value"] == pytest.approx(point[name])
        assert intervals[name].value == pytest.approx(point[name])
    assert saved["notes"] == ["a note"]
    assert saved["confusion"] == [[2, 1], [1, 2]]


def test_intervals_need_a_resample():
    with pytest.raises(ValueError, match="num_bootstrap must be >= 1, got 0"):
        metrics.evaluate_with_intervals(np.array([0, 1]), np.array([0.3, 0.6]), num_bootstrap=0)


@pytest.mark.parametrize(("label", "name"), [(1, "win"), (0, "lose")])
def test_a_one_class_split_says_auroc_is_undefined(tmp_path, label, name):
    intervals = report.write_report(
        str(tmp_path), _rows([label] * 3, [0.9, 0.4, 0.8]), title="t", num_bootstrap=20
    )
    assert math.isnan(intervals["auroc"].value)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["notes"] == [
        f"Only {name} videos here: AUROC is undefined (nan), and balanced accuracy and "
        "macro-F1 cover that one class."
    ]
    assert f"Only {name} videos here" in (tmp_path / "report.html").read_text()
