"""A training config's run settings are checked before anything is built."""

from __future__ import annotations

import numpy as np
import pytest

from configs import demo, finetune, pretrain
from hemo_jax.experiment.checks import INTERVALS, check_run_config
from hemo_jax.training import metrics


def _config(**train):
    c = pretrain.get_config("keypoints,smoke")
    with c.unlocked():
        c.train.update(train)
    return c


@pytest.mark.parametrize("key", INTERVALS)
def test_an_interval_below_one_is_refused_by_name(key):
    with pytest.raises(ValueError, match=rf"config\.train\.{key} must be >= 1, got 0"):
        check_run_config(_config(**{key: 0}))


def test_the_best_metric_must_be_one_an_evaluation_logs():
    with pytest.raises(ValueError, match=r"best_metric 'acc' is not one of"):
        check_run_config(_config(best_metric="acc"))
    check_run_config(_config(best_metric=""))  # latest checkpoints only
    check_run_config(_config(best_metric="auroc"))


def test_the_pseudo_threshold_is_a_confidence():
    c = finetune.get_config("smoke")
    with c.unlocked():
        c.pseudo.threshold = 1.5
    with pytest.raises(ValueError, match=r"config\.pseudo\.threshold must be in \[0, 1\]"):
        check_run_config(c)


def test_the_stage_is_one_or_two_and_only_stage_two_reads_init_from():
    c = _config()
    with c.unlocked():
        c.stage = 3
    with pytest.raises(ValueError, match="config.stage must be 1 .* got 3"):
        check_run_config(c)
    c = _config()
    c.init_from.text = "/runs/t"
    with pytest.raises(ValueError, match=r"init_from is read in stage 2 only.*'text': '/runs/t'"):
        check_run_config(c)


def test_distributed_initialize_is_auto_yes_or_no():
    c = _config()
    c.distributed.initialize = "maybe"
    with pytest.raises(ValueError, match=r"initialize must be auto\|yes\|no, got 'maybe'"):
        check_run_config(c)


def test_a_negative_learning_rate_scale_is_refused():
    c = finetune.get_config()
    with c.unlocked():
        c.optim.init_lr_scale = -0.1
    with pytest.raises(ValueError, match="init_lr_scale must be >= 0, got -0.1"):
        check_run_config(c)


def test_every_shipped_config_passes():
    configs = [pretrain.get_config(m) for m in ("keypoints", "image", "text")]
    configs += [finetune.get_config(), *(demo.get_config(s) for s in demo.STAGES)]
    for c in configs:
        check_run_config(c)


def test_metric_names_are_what_point_metrics_returns():
    got = metrics.point_metrics(np.array([0, 1, 1, 0]), np.array([0.2, 0.7, 0.4, 0.1]))
    assert tuple(got) == metrics.METRIC_NAMES
