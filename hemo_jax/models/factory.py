"""The multimodal classifier a training config describes, and its pretrained parts.

``build_model`` reads ``config.model`` and ``config.branches`` and returns a
``MultimodalClassifier`` with random weights (cheap to trace abstractly, so the
trainer creates it directly sharded); ``pretrained_params`` then supplies the
weights that come from elsewhere (a BERT checkpoint for the text encoder).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
from flax import nnx

from hemo_jax.data.text import HashingTokenizer, PretrainedTokenizer, RecordText
from hemo_jax.models import bert, convert
from hemo_jax.models.fusion import FusionConfig
from hemo_jax.models.keypoints import KeypointBranch, KeypointConfig
from hemo_jax.models.multimodal import (
    ImageBranch,
    ImageConfig,
    MultimodalClassifier,
    TextBranch,
    TextConfig,
    TransformerTextEncoder,
)
from hemo_jax.models.transformer import TransformerConfig

HASH_VOCAB = 8192
TEXT_ENCODER_PATH = "branches/text/encoder"


def _transformer(m: ml_collections.ConfigDict, dtype: str) -> TransformerConfig:
    return TransformerConfig(
        width=m.width,
        depth=m.depth,
        heads=m.heads,
        mlp_ratio=m.mlp_ratio,
        dropout=m.dropout,
        attention=m.attention or None,
        remat=m.remat,
        dtype=dtype,
    )


def _text_encoder(
    m: ml_collections.ConfigDict, dtype: str, rngs: nnx.Rngs
) -> tuple[nnx.Module, int]:
    if m.text_encoder:
        directory = convert.resolve_checkpoint(m.text_encoder)
        cfg = bert.BertConfig.from_hf_config(convert.read_config(directory))
        return bert.BertModel(cfg, rngs=rngs), cfg.hidden_size
    return TransformerTextEncoder(HASH_VOCAB, _transformer(m, dtype), rngs=rngs), m.width


def build_model(
    config: ml_collections.ConfigDict, *, seed: int | jax.Array | None = None
) -> nnx.Module:
    """The classifier over ``config.branches``; one branch and no fusion in stage 1.

    ``seed`` (an int or a key; ``config.seed`` if None) draws the parameters.
    """
    m = config.model
    # The Transformers and the fusion compute in the training's dtype (bfloat16 for
    # mixed precision); their parameters stay float32.
    dtype = config.train.compute_dtype
    rngs = nnx.Rngs(params=config.seed if seed is None else seed, dropout=0)
    branches: dict[str, nnx.Module] = {}
    for name in config.branches:
        if name == "keypoints":
            kcfg = KeypointConfig(
                backbone=m.keypoint_backbone,
                channels=m.keypoint_channels,
                depth=m.keypoint_depth,
                stream_width=m.keypoint_stream_width,
                dropout=m.dropout,
                remat=m.remat,
                offsets=m.get("keypoint_offsets", True),
                temporal=m.get("keypoint_temporal", "transformer"),
                transformer=_transformer(m, dtype),
            )
            branches[name] = KeypointBranch(kcfg, rngs=rngs)
        elif name == "image":
            icfg = ImageConfig(
                feature_dim=m.image_feature_dim,
                dropout=m.dropout,
                transformer=_transformer(m, dtype),
            )
            branches[name] = ImageBranch(icfg, rngs=rngs)
        elif name == "text":
            encoder, enc_width = _text_encoder(m, dtype, rngs)
            tcfg = TextConfig(width=m.width, dropout=m.dropout)
            branches[name] = TextBranch(encoder, enc_width, tcfg, rngs=rngs)
        else:
            raise ValueError(f"unknown branch {name!r} in config.branches")
    fusion = "none" if config.stage == 1 else m.fusion
    fcfg = FusionConfig(
        width=m.width,
        heads=m.heads,
        dropout=m.dropout,
        attention=m.attention or None,
        dtype=dtype,
    )
    return MultimodalClassifier(branches, fusion, fcfg, rngs=rngs)


def frozen_prefixes(config: ml_collections.ConfigDict) -> tuple[tuple[str, ...], ...]:
    """Parameter path prefixes that are not trained (a pretrained text encoder, if frozen)."""
    m = config.model
    if "text" in config.branches and m.text_encoder and m.freeze_text_encoder:
        return (tuple(TEXT_ENCODER_PATH.split("/")),)
    return ()


def loaded_from_stage1(config: ml_collections.ConfigDict) -> Callable[[str], bool] | None:
    """Stage 2: whether a parameter path ("branches/text/...") is loaded from a stage-1
    checkpoint (every branch, less what ``config.init_skip`` matches); None in stage 1."""
    if config.stage != 2:
        return None
    skipped = [re.compile(p) for p in config.init_skip]

    def loaded(path: str) -> bool:
        return path.startswith("branches/") and not any(p.search(path) for p in skipped)

    return loaded


def pretrained_params(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Weights to copy in after initialisation: ``{path prefix: parameter tree}``."""
    if "text" in config.branches and config.model.text_encoder:
        model = bert.load_bert(config.model.text_encoder)
        return {TEXT_ENCODER_PATH: nnx.state(model, nnx.Param).to_pure_dict()}
    return {}


def make_text_fn(config: ml_collections.ConfigDict) -> RecordText | None:
    """The pipeline hook that tokenises each record's text, when there is a text branch."""
    if "text" not in config.branches:
        return None
    if config.model.text_encoder:
        directory = str(convert.resolve_checkpoint(config.model.text_encoder))
        tokenizer: Any = PretrainedTokenizer(directory)
    else:
        tokenizer = HashingTokenizer(HASH_VOCAB)
    return RecordText(tokenizer, config.data.text_source, config.data.max_text_tokens)
