"""Stage 2: the fused model, from the stage-1 branches, with pseudo labels.

``--config configs/finetune.py[:smoke] --config.init_from.keypoints=WORKDIR ...``
"""

from __future__ import annotations

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variants = set((arg or "").split(",")) - {""}
    if variants - {"smoke"}:
        raise ValueError(f"unknown config variants {sorted(variants - {'smoke'})}")
    c = common.get_config()
    c.stage = 2
    c.branches = common.BRANCHES
    c.optim.lr = 1e-4
    c.train.steps = 300
    c.pseudo.pool = "unlabeled"
    c.pseudo.threshold = 0.6
    if "smoke" in variants:
        common.smoke(c)
    c.lock()
    return c
