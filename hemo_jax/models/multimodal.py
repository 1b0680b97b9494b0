"""Branches (image, text) and the multimodal classifier built from any subset of branches.

Every branch has one interface: ``branch(batch, *, deterministic) -> (logits, aux)``
with aux {"pooled" [B, width], "tokens" [B, T, width], "mask" [B, T]} and the
attributes ``width`` and ``num_classes``. The keypoint branch lives in
``keypoints.py``; the image and text branches are here.

``MultimodalClassifier`` holds its branches under ``branches/<name>/...`` and
the fusion under ``fusion/...``, so a stage-1 model of one branch and the
stage-2 model of all of them share parameter paths for that branch: stage 2
loads each branch from its stage-1 checkpoint by name.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from typing import Any, Protocol

import jax
import jax.numpy as jnp
from flax import nnx

from hemo_jax.models.fusion import FusionConfig, make_fusion
from hemo_jax.models.layers import ClassifierHead, layer_norm
from hemo_jax.models.partitioning import BSE, axes, shard_activation
from hemo_jax.models.transformer import TransformerConfig, TransformerEncoder, masked_mean

FUSIONS_OR_NONE = ("none", "concat", "cross_attention")


class Branch(Protocol):
    width: int
    num_classes: int

    def __call__(
        self, batch: Mapping[str, jax.Array], *, deterministic: bool
    ) -> tuple[jax.Array, dict[str, jax.Array]]: ...


def _get(batch: Mapping[str, jax.Array], key: str, branch: str, ndim: int) -> jax.Array:
    if key not in batch:
        raise KeyError(f"{branch} branch needs batch[{key!r}]; got keys {sorted(batch)}")
    value = batch[key]
    if value.ndim != ndim:
        raise ValueError(f"batch[{key!r}] has shape {value.shape}; expected {ndim} dimensions")
    return value


@dataclasses.dataclass(frozen=True)
class ImageConfig:
    feature_dim: int = 768  # DINOv2-Base
    dropout: float = 0.1
    num_classes: int = 2
    transformer: TransformerConfig = dataclasses.field(default_factory=TransformerConfig.small)
    features_key: str = "image_features"
    mask_key: str = "image_mask"

    @classmethod
    def tiny(cls, **kw) -> ImageConfig:
        defaults = {"feature_dim": 12, "dropout": 0.0}
        return cls(**{"transformer": TransformerConfig.tiny(depth=1), **defaults, **kw})


class ImageBranch(nnx.Module):
    """Frozen-encoder features [B, Fi, D] -> LN -> linear -> Transformer over frames -> head."""

    def __init__(self, cfg: ImageConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.width, self.num_classes = cfg.transformer.width, cfg.num_classes
        self.in_norm = layer_norm(cfg.feature_dim, rngs, axis="features")
        self.proj = nnx.Linear(
            cfg.feature_dim,
            self.width,
            kernel_metadata=axes("features", "embed"),
            bias_metadata=axes("embed"),
            rngs=rngs,
        )
        self.encoder = TransformerEncoder(cfg.transformer, rngs=rngs)
        self.head = ClassifierHead(self.width, cfg.num_classes, cfg.dropout, rngs=rngs)

    def __call__(
        self, batch: Mapping[str, jax.Array], *, deterministic: bool
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        feats = _get(batch, self.cfg.features_key, "image", 3)
        mask = _get(batch, self.cfg.mask_key, "image", 2)
        if feats.shape[-1] != self.cfg.feature_dim or mask.shape != feats.shape[:2]:
            raise ValueError(
                f"batch[{self.cfg.features_key!r}] {feats.shape} and "
                f"batch[{self.cfg.mask_key!r}] {mask.shape}: expected [B, F, "
                f"{self.cfg.feature_dim}] and [B, F]"
            )
        x = self.proj(self.in_norm(feats.astype(jnp.float32)))
        pooled, aux = self.encoder(shard_activation(x, BSE), mask, deterministic=deterministic)
        logits = self.head(pooled, deterministic=deterministic)
        return logits, {"pooled": pooled, "tokens": aux["tokens"], "mask": aux["mask"]}


class TransformerTextEncoder(nnx.Module):
    """A light text encoder trained from scratch: token embeddings -> rotary Transformer.

    The alternative to a pretrained BERT when a small, fast model is wanted
    (smoke runs, the CPU demo) or when texts exceed BERT's 512 positions.
    Same call as ``BertModel``: ``(input_ids, attention_mask) -> (pooled, aux)``
    with aux["tokens"].
    """

    def __init__(self, vocab_size: int, cfg: TransformerConfig, *, rngs: nnx.Rngs):
        self.width = cfg.width
        self.embed = nnx.Embed(
            vocab_size, cfg.width, embedding_metadata=axes("vocab", "embed"), rngs=rngs
        )
        self.encoder = TransformerEncoder(cfg, rngs=rngs)

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        *,
        deterministic: bool,
    ) -> tuple[jax.Array, dict[str, Any]]:
        mask = None if attention_mask is None else attention_mask.astype(bool)
        return self.encoder(self.embed(input_ids), mask, deterministic=deterministic)


@dataclasses.dataclass(frozen=True)
class TextConfig:
    width: int = 256  # the branch's embedding width (the encoder's output is projected)
    dropout: float = 0.1
    num_classes: int = 2


class TextBranch(nnx.Module):
    """A text encoder over token ids -> masked mean of its tokens -> projection -> head.

    ``encoder`` is any module called as ``encoder(input_ids, attention_mask)``
    returning ``(pooled, aux)`` with aux["tokens"] [B, T, encoder_width]: the
    project's ``BertModel`` (e.g. all-MiniLM-L6-v2, whose sentence embedding is
    exactly this masked mean) or ``TransformerTextEncoder``. An encoder that
    takes ``deterministic`` (has dropout) gets it. Reads ``text_ids`` and
    ``text_mask`` [B, T] from the batch.
    """

    def __init__(self, encoder: nnx.Module, encoder_width: int, cfg: TextConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.width, self.num_classes = cfg.width, cfg.num_classes
        self.encoder = encoder
        self.encoder_has_dropout = "deterministic" in inspect.signature(encoder).parameters
        self.proj = nnx.Linear(
            encoder_width,
            cfg.width,
            kernel_metadata=axes("features", "embed"),
            bias_metadata=axes("embed"),
            rngs=rngs,
        )
        self.head = ClassifierHead(cfg.width, cfg.num_classes, cfg.dropout, rngs=rngs)

    def __call__(
        self, batch: Mapping[str, jax.Array], *, deterministic: bool
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        ids = _get(batch, "text_ids", "text", 2)
        mask = _get(batch, "text_mask", "text", 2).astype(bool)
        if mask.shape != ids.shape:
            raise ValueError(
                f"batch['text_mask'] shape {mask.shape} != batch['text_ids'] shape {ids.shape}"
            )
        kw = {"deterministic": deterministic} if self.encoder_has_dropout else {}
        _, enc_aux = self.encoder(ids, mask, **kw)
        tokens = shard_activation(self.proj(enc_aux["tokens"].astype(jnp.float32)), BSE)
        pooled = masked_mean(tokens, mask)  # linear, so = proj(mean of encoder tokens)
        logits = self.head(pooled, deterministic=deterministic)
        return logits, {"pooled": pooled, "tokens": tokens, "mask": mask}


class MultimodalClassifier(nnx.Module):
    """Branches under ``branches/<name>``, fused under ``fusion``.

    ``fusion`` is "concat" or "cross_attention" (any number of branches), or
    "none" for exactly one branch whose own logits are the prediction (stage 1).
    Returns ``(fused_logits, aux)`` with aux {"branch_logits": {name: logits},
    "branch_pooled": {name: pooled}, "pooled": the fused embedding}.
    """

    def __init__(
        self,
        branches: Mapping[str, Branch],
        fusion: str = "concat",
        fusion_config: FusionConfig | None = None,
        *,
        rngs: nnx.Rngs,
    ):
        if not branches:
            raise ValueError("a multimodal classifier needs at least one branch")
        if fusion not in FUSIONS_OR_NONE:
            raise ValueError(f"fusion {fusion!r} is not one of {FUSIONS_OR_NONE}")
        if fusion == "none" and len(branches) != 1:
            raise ValueError(f"fusion 'none' takes exactly one branch, got {sorted(branches)}")
        fusion_config = fusion_config or FusionConfig()
        classes = {n: b.num_classes for n, b in branches.items()}
        if fusion != "none":
            classes["fusion"] = fusion_config.num_classes
        if len(set(classes.values())) != 1:
            raise ValueError(f"branches and fusion disagree on num_classes: {classes}")
        self.names = tuple(sorted(branches))
        self.branches = nnx.Dict(dict(branches))
        widths = {n: b.width for n, b in branches.items()}
        self.fusion = (
            None if fusion == "none" else make_fusion(fusion, widths, fusion_config, rngs=rngs)
        )

    def __call__(
        self, batch: Mapping[str, jax.Array], *, deterministic: bool
    ) -> tuple[jax.Array, dict[str, Any]]:
        logits, auxes = {}, {}
        for name in self.names:
            logits[name], auxes[name] = self.branches[name](batch, deterministic=deterministic)
        if self.fusion is None:
            (name,) = self.names
            fused, pooled = logits[name], auxes[name]["pooled"]
        else:
            fused, fusion_aux = self.fusion(auxes, deterministic=deterministic)
            pooled = fusion_aux["pooled"]
        return fused, {
            "branch_logits": logits,
            "branch_pooled": {n: a["pooled"] for n, a in auxes.items()},
            "pooled": pooled,
        }
