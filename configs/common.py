"""Shared defaults for every training config. Each config file says only what differs."""

from __future__ import annotations

import ml_collections

BRANCHES = ("keypoints", "image", "text")
STAGES = (*BRANCHES, "fused")  # a branch alone (stage 1) or all fused (stage 2)


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.stage = 1  # 1: one branch alone; 2: fused model from stage-1 branches
    c.branches = ("keypoints",)

    c.data = ml_collections.ConfigDict()
    c.data.shards = ""  # a shard set with image_features (output of hemo_jax.encode)
    c.data.train_splits = ("train",)
    # Evaluations during training, the best checkpoint and early stopping use eval_split;
    # "val" is carved out of train_splits (val_fraction of the subjects, subject-disjoint),
    # so no choice sees the test split. hemo_jax.evaluate and hemo_jax.stack report on
    # test_split.
    c.data.eval_split = "val"
    c.data.val_fraction = 0.2
    c.data.test_split = "test"
    c.data.batch_size = 16
    c.data.eval_batch_size = 16
    c.data.max_frames = 512  # keypoint window length
    c.data.frame_stride = 1  # every k-th keypoint row: a window spans max_frames * k rows
    c.data.max_images = 128  # image-feature window length
    c.data.eval_windows = 3  # evenly spaced windows per video at evaluation
    c.data.num_workers = 0
    c.data.balanced_sampling = False  # class-balanced sampling instead of class weights
    c.data.text_source = "transcript"  # transcript | reasoning | both
    # "k/K": leave fold k of K (subject-disjoint) out of the labelled training videos, so
    # the run predicts them out of fold for the stacked fusion (hemo_jax.stack).
    c.data.fold = ""
    c.data.max_text_tokens = 128

    c.model = ml_collections.ConfigDict()
    c.model.width = 128
    c.model.depth = 2
    c.model.heads = 4
    c.model.mlp_ratio = 4
    c.model.dropout = 0.1
    c.model.attention = ""  # "" = chosen by platform and length
    c.model.remat = False
    c.model.keypoint_backbone = "mlp"  # mlp | gcn | gat | gin
    c.model.keypoint_channels = 32  # per-joint width inside the backbone
    c.model.keypoint_depth = 2  # backbone blocks per stream
    c.model.keypoint_stream_width = 128  # each stream's per-frame embedding
    c.model.keypoint_offsets = True  # inter-frame offsets as input (False: an ablation)
    c.model.keypoint_temporal = "transformer"  # transformer | mean (per-frame pooling)
    c.model.fusion = "concat"  # concat | cross_attention
    c.model.text_encoder = ""  # a Hugging Face BERT directory; "" = small text Transformer
    c.model.freeze_text_encoder = True
    c.model.image_feature_dim = 768

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 3e-4
    c.optim.warmup_steps = 50
    c.optim.weight_decay = 0.05
    c.optim.clip_norm = 1.0
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.grad_accum = 1
    # Stage 2: learning rate of the parameters loaded from init_from, as a fraction of
    # optim.lr (the fusion and the heads, new, train at optim.lr; 0 keeps the branches).
    c.optim.init_lr_scale = 1.0

    c.train = ml_collections.ConfigDict()
    c.train.steps = 500
    c.train.log_every = 10
    c.train.eval_every = 100
    c.train.checkpoint_every = 100
    c.train.keep_checkpoints = 2
    c.train.best_metric = "balanced_accuracy"  # on data.eval_split
    # Stop after this many evaluations without a better best_metric; 0 trains all steps.
    c.train.patience = 0
    c.train.compute_dtype = "float32"  # bfloat16 for mixed precision
    c.train.class_weighting = True  # class-weighted loss (off with data.balanced_sampling)
    c.train.aux_loss_weight = 0.3  # stage 2: each branch's own loss, beside the fused one
    c.train.progress = True

    # Stage 2: where the stage-1 branches come from, and the pseudo-labelled pool.
    c.init_from = ml_collections.ConfigDict({b: "" for b in BRANCHES})
    # False starts stage 2's branches from scratch (an ablation of stage-1 pretraining).
    c.from_stage1 = True
    c.init_skip = (r"/head/",)  # stage-1 heads are not loaded into the fused model
    c.resume = ""  # another workdir whose latest checkpoint to continue from
    c.pseudo = ml_collections.ConfigDict()
    c.pseudo.pool = "none"  # none | unlabeled | test (transductive, as the published method)
    c.pseudo.threshold = 0.0  # drop pseudo labels below this confidence
    c.pseudo.confidence_weighting = True  # weight each pseudo-labelled loss by confidence

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.seq = 1
    c.distributed = ml_collections.ConfigDict()
    # auto: jax.distributed.initialize() when the environment names a multi-process job
    # (SLURM, or JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID); yes: always
    # (TPU VM slices); no: never. See hemo_jax.training.sharding.maybe_initialize_distributed.
    c.distributed.initialize = "auto"
    return c


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrinks a config so it runs in seconds on a CPU (the time goes to compiling).

    Dropout is off: its masks add about a third to the compile time, which is most
    of a smoke run on CPU (stage-2 smoke step: 14-17 s without, 20-23 s with 0.1).
    Every step is logged; one checkpoint midway and one at the end.
    """
    c.data.batch_size = 8
    c.data.eval_batch_size = 8
    c.data.max_frames = 32
    c.data.max_images = 8
    c.data.eval_windows = 1
    c.data.max_text_tokens = 32
    c.model.width = 16
    c.model.depth = 1
    c.model.heads = 2
    c.model.mlp_ratio = 2
    c.model.dropout = 0.0
    c.model.keypoint_channels = 8
    c.model.keypoint_depth = 1
    c.model.keypoint_stream_width = 16
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 2
    c.train.steps = 6
    c.train.log_every = 1
    c.train.eval_every = 6
    c.train.checkpoint_every = 3
    c.train.progress = False
    return c


def staged_config(arg: str | None, name: str) -> tuple[ml_collections.ConfigDict, set[str]]:
    """The shared defaults for ``arg`` = ``STAGE[,smoke]`` (default ``fused``): stage and
    branches set; returns them with the variants asked for. ``name`` names the config
    file in errors."""
    parts = (arg or "fused").split(",")
    stage, variants = parts[0], set(parts[1:])
    if stage not in STAGES:
        raise ValueError(f"{name} stage {stage!r} not one of {STAGES}")
    if variants - {"smoke"}:
        raise ValueError(f"unknown config variants {sorted(variants - {'smoke'})}")
    c = get_config()
    c.stage = 2 if stage == "fused" else 1
    c.branches = BRANCHES if stage == "fused" else (stage,)
    return c, variants
