"""The model a training config describes: typed model configs and the classifier's constructor.

``model_fn`` reads ``config.model``, ``config.branches``, ``config.stage`` and
``config.train.compute_dtype`` once and returns a function of the key the parameters
are drawn with (cheap to trace abstractly, so the trainer creates the model directly
sharded); ``pretrained_params`` supplies the weights that come from elsewhere (a BERT
checkpoint for the text encoder), and ``frozen_prefixes`` what is not trained.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
from flax import nnx

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
from hemo_jax.training.trainer import ModelFn

# The hashing tokenizer's vocabulary, which the small text Transformer embeds.
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


def model_fn(config: ml_collections.ConfigDict, *, text_encoder: str | None) -> ModelFn:
    """The classifier over ``config.branches`` (one branch and no fusion in stage 1), as a
    function of the key its parameters are drawn with. ``text_encoder`` is the resolved
    BERT directory of ``config.model.text_encoder`` (None: the small text Transformer)."""
    m = config.model
    # The Transformers and the fusion compute in the training's dtype (bfloat16 for
    # mixed precision); their parameters stay float32.
    dtype = config.train.compute_dtype
    transformer = _transformer(m, dtype)
    branches = tuple(config.branches)
    unknown = [b for b in branches if b not in ("keypoints", "image", "text")]
    if unknown:
        raise ValueError(f"unknown branches {unknown} in config.branches")
    kcfg = KeypointConfig(
        backbone=m.keypoint_backbone,
        channels=m.keypoint_channels,
        depth=m.keypoint_depth,
        stream_width=m.keypoint_stream_width,
        dropout=m.dropout,
        remat=m.remat,
        # Absent in configs saved before these ablation switches existed.
        offsets=m.get("keypoint_offsets", True),
        temporal=m.get("keypoint_temporal", "transformer"),
        transformer=transformer,
    )
    icfg = ImageConfig(feature_dim=m.image_feature_dim, dropout=m.dropout, transformer=transformer)
    tcfg = TextConfig(width=m.width, dropout=m.dropout)
    bert_cfg = (
        bert.BertConfig.from_hf_config(convert.read_config(text_encoder)) if text_encoder else None
    )
    fusion = "none" if config.stage == 1 else m.fusion
    fcfg = FusionConfig(
        width=m.width, heads=m.heads, dropout=m.dropout, attention=m.attention or None, dtype=dtype
    )

    def build(key: jax.Array) -> nnx.Module:
        rngs = nnx.Rngs(params=key, dropout=0)
        made: dict[str, nnx.Module] = {}
        for name in branches:
            if name == "keypoints":
                made[name] = KeypointBranch(kcfg, rngs=rngs)
            elif name == "image":
                made[name] = ImageBranch(icfg, rngs=rngs)
            elif bert_cfg is not None:
                made[name] = TextBranch(
                    bert.BertModel(bert_cfg, rngs=rngs), bert_cfg.hidden_size, tcfg, rngs=rngs
                )
            else:
                encoder = TransformerTextEncoder(HASH_VOCAB, transformer, rngs=rngs)
                made[name] = TextBranch(encoder, m.width, tcfg, rngs=rngs)
        return MultimodalClassifier(made, fusion, fcfg, rngs=rngs)

    return build


def frozen_prefixes(config: ml_collections.ConfigDict) -> tuple[tuple[str, ...], ...]:
    """Parameter path prefixes that are not trained (a pretrained text encoder, if frozen)."""
    m = config.model
    if "text" in config.branches and m.text_encoder and m.freeze_text_encoder:
        return (tuple(TEXT_ENCODER_PATH.split("/")),)
    return ()


def pretrained_params(text_encoder: str | None) -> dict[str, Any]:
    """Weights to copy in after initialisation: ``{path prefix: parameter tree}``."""
    if text_encoder:
        model = bert.load_bert(text_encoder)
        return {TEXT_ENCODER_PATH: nnx.state(model, nnx.Param).to_pure_dict()}
    return {}
