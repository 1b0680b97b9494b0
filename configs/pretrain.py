"""Stage 1: one branch alone. ``--config configs/pretrain.py:keypoints[,smoke]``."""

from __future__ import annotations

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    parts = (arg or "keypoints").split(",")
    modality, variants = parts[0], set(parts[1:])
    if modality not in common.BRANCHES:
        raise ValueError(f"modality {modality!r} not one of {common.BRANCHES}")
    unknown = variants - {"smoke"}
    if unknown:
        raise ValueError(f"unknown config variants {sorted(unknown)}")
    c = common.get_config()
    c.stage = 1
    c.branches = (modality,)
    if "smoke" in variants:
        common.smoke(c)
    c.lock()
    return c
