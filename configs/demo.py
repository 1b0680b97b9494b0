"""The demo on the synthetic corpus: small models that train in about a minute on 2 CPU cores.

``--config configs/demo.py:STAGE[,smoke]`` with STAGE one of keypoints, image,
text (stage 1) or fused (stage 2).
"""

from __future__ import annotations

import ml_collections

from configs import common

STAGES = common.STAGES


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c, variants = common.staged_config(arg, "demo")
    c.data.batch_size = 16
    c.data.eval_batch_size = 16
    # 48 rows two apart span ~19 s of the demo's 5 fps interviews, most of one.
    c.data.max_frames = 48
    c.data.frame_stride = 2
    c.data.max_images = 24
    c.data.eval_windows = 2
    # The transcript alone: the labeler's verdict reaches the model as its own feature in
    # the stacked fusion and as the pool's pseudo labels, never twice.
    c.data.text_source = "transcript"
    c.data.max_text_tokens = 192
    c.model.width = 64
    c.model.depth = 2
    c.model.heads = 4
    c.model.dropout = 0.1
    c.model.image_feature_dim = 384
    c.model.keypoint_channels = 8
    c.model.keypoint_depth = 1
    c.model.keypoint_stream_width = 64
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 20
    c.train.steps = 120
    c.train.eval_every = 40
    c.train.checkpoint_every = 100
    c.train.log_every = 10
    if tuple(c.branches) == ("text",):
        c.train.steps = 300  # words are learnt from scratch: 120 steps leave it at 0.69-0.75
    if c.stage == 2:
        c.optim.lr = 1e-3
        c.train.steps = 60  # six fine-tuning runs share the demo's ten minutes
        c.train.eval_every = 30
        c.pseudo.pool = "unlabeled"
        c.pseudo.threshold = 0.0
    if "smoke" in variants:
        common.smoke(c)
    c.lock()
    return c
