"""Checks of a training config's run settings, made before anything is built or written.

A bad value here would otherwise surface minutes later, after compilation (an
interval of 0 as a modulo by zero at the first step) or never (a misspelt best
metric silently keeps the latest checkpoints only).
"""

from __future__ import annotations

import ml_collections

from hemo_jax.training import metrics

INTERVALS = ("steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints")


def check_run_config(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first value of ``config.distributed.initialize``, the
    stage, ``config.init_from``, ``config.train``, ``config.pseudo`` or
    ``config.optim.init_lr_scale`` that no run can use."""
    init = config.distributed.initialize
    if init not in ("auto", "yes", "no"):
        raise ValueError(f"config.distributed.initialize must be auto|yes|no, got {init!r}")
    if config.stage not in (1, 2):
        raise ValueError(f"config.stage must be 1 (one branch) or 2 (fused), got {config.stage}")
    if config.stage == 1:
        given = {name: path for name, path in config.init_from.items() if path}
        if given:
            raise ValueError(
                f"config.init_from is read in stage 2 only; this stage-1 run sets {given} "
                "(a stage-1 run starts from scratch, or continues config.resume)"
            )
    t = config.train
    for key in INTERVALS:
        if t[key] < 1:
            raise ValueError(f"config.train.{key} must be >= 1, got {t[key]}")
    if t.best_metric and t.best_metric not in metrics.METRIC_NAMES:
        raise ValueError(
            f"config.train.best_metric {t.best_metric!r} is not one of {metrics.METRIC_NAMES} "
            "(or empty: keep the latest checkpoints only)"
        )
    if config.optim.init_lr_scale < 0.0:
        raise ValueError(
            f"config.optim.init_lr_scale must be >= 0, got {config.optim.init_lr_scale}"
        )
    if not 0.0 <= config.pseudo.threshold <= 1.0:
        raise ValueError(
            f"config.pseudo.threshold must be in [0, 1], got {config.pseudo.threshold}"
        )


def stage1_workdirs(config: ml_collections.ConfigDict) -> dict[str, str]:
    """Stage 2: ``{branch: stage-1 workdir}`` from ``config.init_from`` for every branch
    ("" where unset: needed only if the run does not resume); stage 1: empty."""
    # from_stage1=False: stage 2 trained from scratch (an ablation); absent in configs
    # saved before the switch existed.
    if config.stage != 2 or not config.get("from_stage1", True):
        return {}
    stray = [k for k, v in config.init_from.items() if v and k not in config.branches]
    if stray:
        raise ValueError(
            f"config.init_from names {stray}, which are not in config.branches "
            f"{tuple(config.branches)}"
        )
    return {name: config.init_from[name] for name in config.branches}
