"""Frozen DINOv2 over the crops of raw shards. ``--config configs/encode.py[:VARIANTS]``.

Variants (comma-separated): ``smoke`` (a 2-layer, 64-wide random DINOv2 at 56², runs in
seconds on a CPU), ``random`` (random DINOv2-Base weights at 224², for runs without a
checkpoint), ``demo`` (a random 4-layer, 192-wide DINOv2 at 112², CLS + patch mean so
D=384 as configs/demo.py reads; the demo corpus encodes in about a minute on 2 CPU
cores; with ``smoke``, 2 layers at 56² and still D=384).
"""

from __future__ import annotations

import ml_collections

VARIANTS = ("smoke", "random", "demo")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variants = set(filter(None, (arg or "").split(",")))
    unknown = variants - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown config variants {sorted(unknown)}; known: {VARIANTS}")

    c = ml_collections.ConfigDict()
    c.input = ""  # a raw shard set (output of `python -m preprocess run`)
    c.output = ""  # the feature shard set to write (resumed when it exists)
    c.overwrite = False  # replace an existing output instead of resuming it
    c.features = "cls"  # cls | cls+patch_mean (D = width, or 2 x width)
    c.keep_crops = False  # keep the JPEG crops in the feature shards
    c.batch_size = 32  # images per forward; rounded up to a multiple of the devices
    c.compute_dtype = "float32"  # float32 (full-precision matmuls) | bfloat16
    c.num_devices = 0  # 0 = every local device; the batch is split over them
    c.decode_threads = 0  # JPEG decode + resize threads; 0 = one per CPU
    c.records_per_shard = 16
    c.progress = True
    c.seed = 0  # weights of a random model

    c.model = ml_collections.ConfigDict()
    # A Hugging Face DINOv2 checkpoint directory, or a repo id found in the local cache.
    c.model.checkpoint = "facebook/dinov2-base"
    # Or random weights of a preset (small | base | large | giant); needs checkpoint "".
    c.model.random_preset = ""
    # Overrides of the random preset's shape; 0 keeps the preset's value.
    c.model.hidden_size = 0
    c.model.num_layers = 0
    c.model.num_heads = 0
    c.model.attention = ""  # attention implementation; "" = chosen by platform

    # DINOv2 preprocessing (HF BitImageProcessor): resize the shorter side, centre-crop.
    # 0 = the checkpoint's preprocessor_config.json, else HF's defaults (256, 224).
    c.image = ml_collections.ConfigDict()
    c.image.shortest_edge = 0
    c.image.crop_size = 0

    if "random" in variants:
        c.model.checkpoint = ""
        c.model.random_preset = "base"
    if "demo" in variants:  # ~1 minute for the demo's ~4,800 crops on 2 CPU cores
        c.model.checkpoint = ""
        c.model.random_preset = "small"
        c.model.hidden_size = 192
        c.model.num_heads = 3
        c.model.num_layers = 4
        c.features = "cls+patch_mean"  # D = 384, what configs/demo.py expects
        c.image.shortest_edge = 128
        c.image.crop_size = 112
    if "smoke" in variants:
        c.model.checkpoint = ""
        c.model.random_preset = "small"
        if "demo" not in variants:  # the demo's trainer expects its width
            c.model.hidden_size = 64
            c.model.num_heads = 4
        c.model.num_layers = 2
        c.image.shortest_edge = 64
        c.image.crop_size = 56
        c.batch_size = 8
        c.records_per_shard = 2
        c.progress = False
    c.lock()
    return c
