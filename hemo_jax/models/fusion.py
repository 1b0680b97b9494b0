"""Fusion of branch outputs into one prediction.

A fusion reads each branch's aux (``pooled`` [B, E_b]; the cross-attention
fusion also ``tokens`` [B, T_b, E_b] and ``mask`` [B, T_b]) and returns
``(logits, aux)`` with aux {"pooled": the fused embedding}. Branches are taken
in sorted name order, so the layout of the fused weights does not depend on
the order a config lists them in.

- ``concat`` (default): concatenate pooled embeddings -> linear -> residual
  block (LN, MLP, residual) -> classifier.
- ``cross_attention``: every branch's pooled embedding and tokens, projected to
  the fusion width and tagged with a learned per-branch embedding, form one
  set; a learned query attends over it (padding masked) in a pre-norm block,
  then the classifier. It can weigh frames of one modality by what another shows.

The task is binary with 2 logits (softmax cross-entropy; class 1 = win/positive);
``num_classes`` allows more.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from hemo_jax.models.dropout import Dropout
from hemo_jax.models.layers import ClassifierHead, layer_norm
from hemo_jax.models.partitioning import axes
from hemo_jax.models.transformer import Mlp, MultiHeadAttention

FUSIONS = ("concat", "cross_attention")
MLP_RATIO = 4  # the fusion's MLP width over its own width, whatever the branches use


@dataclasses.dataclass(frozen=True)
class FusionConfig:
    width: int = 256
    dropout: float = 0.1
    num_classes: int = 2
    heads: int = 4  # cross_attention only
    attention: str | None = None  # implementation name for attention()
    dtype: str = "float32"

    def __post_init__(self):
        if self.width % self.heads:
            raise ValueError(f"fusion width {self.width} is not divisible by heads {self.heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def mlp_dim(self) -> int:
        return self.width * MLP_RATIO

    @classmethod
    def tiny(cls, **kw) -> FusionConfig:
        return cls(**{"width": 16, "heads": 2, "dropout": 0.0, **kw})


def _check_branches(expected: tuple[str, ...], branch_aux: Mapping[str, Mapping]) -> None:
    if tuple(sorted(branch_aux)) != expected:
        raise KeyError(f"fusion was built for branches {expected}, got {tuple(sorted(branch_aux))}")


def _project(n_in: int, width: int, dtype: str, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(
        n_in,
        width,
        dtype=jnp.dtype(dtype),
        kernel_metadata=axes("features", "embed"),
        bias_metadata=axes("embed"),
        rngs=rngs,
    )


class ConcatFusion(nnx.Module):
    """concat(pooled) -> linear -> x + MLP(LN(x)) -> classifier."""

    def __init__(self, widths: Mapping[str, int], cfg: FusionConfig, *, rngs: nnx.Rngs):
        self.names = tuple(sorted(widths))
        self.proj = _project(sum(widths.values()), cfg.width, cfg.dtype, rngs)
        self.norm = layer_norm(cfg.width, rngs, dtype=cfg.dtype)
        self.mlp = Mlp(cfg.width, cfg.mlp_dim, cfg.dtype, rngs=rngs)
        self.drop = Dropout(cfg.dropout, rngs=rngs)
        self.head = ClassifierHead(cfg.width, cfg.num_classes, cfg.dropout, rngs=rngs)

    def __call__(
        self, branch_aux: Mapping[str, Mapping[str, jax.Array]], *, deterministic: bool
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        _check_branches(self.names, branch_aux)
        x = self.proj(jnp.concatenate([branch_aux[n]["pooled"] for n in self.names], axis=-1))
        x = x + self.drop(self.mlp(self.norm(x)), deterministic=deterministic)
        return self.head(x, deterministic=deterministic), {"pooled": x}


class CrossAttentionBlock(nnx.Module):
    """q + Drop(Attn(LN(q), LN(set))), then q + Drop(MLP(LN(q)))."""

    def __init__(self, cfg: FusionConfig, *, rngs: nnx.Rngs):
        self.norm_q = layer_norm(cfg.width, rngs, dtype=cfg.dtype)
        self.norm_kv = layer_norm(cfg.width, rngs, dtype=cfg.dtype)
        self.attn = MultiHeadAttention(
            cfg.width, cfg.heads, implementation=cfg.attention, dtype=cfg.dtype, rngs=rngs
        )
        self.norm_mlp = layer_norm(cfg.width, rngs, dtype=cfg.dtype)
        self.mlp = Mlp(cfg.width, cfg.mlp_dim, cfg.dtype, rngs=rngs)
        self.drop = Dropout(cfg.dropout, rngs=rngs)

    def __call__(
        self, q: jax.Array, kv: jax.Array, mask: jax.Array, *, deterministic: bool
    ) -> jax.Array:
        q = q + self.drop(
            self.attn(self.norm_q(q), self.norm_kv(kv), mask), deterministic=deterministic
        )
        return q + self.drop(self.mlp(self.norm_mlp(q)), deterministic=deterministic)


class CrossAttentionFusion(nnx.Module):
    """A learned query attends over the set of all branches' pooled embeddings and tokens."""

    def __init__(self, widths: Mapping[str, int], cfg: FusionConfig, *, rngs: nnx.Rngs):
        self.names = tuple(sorted(widths))
        self.proj = nnx.Dict(
            {n: _project(widths[n], cfg.width, cfg.dtype, rngs) for n in self.names}
        )
        init = nnx.initializers.normal(0.02)
        self.branch_embed = nnx.Param(
            init(rngs.params(), (len(self.names), cfg.width)), **axes("branches", "embed")
        )
        self.query = nnx.Param(init(rngs.params(), (1, 1, cfg.width)), **axes(None, None, "embed"))
        self.block = CrossAttentionBlock(cfg, rngs=rngs)
        self.head = ClassifierHead(cfg.width, cfg.num_classes, cfg.dropout, rngs=rngs)

    def __call__(
        self, branch_aux: Mapping[str, Mapping[str, jax.Array]], *, deterministic: bool
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        _check_branches(self.names, branch_aux)
        members, masks = [], []
        for i, name in enumerate(self.names):
            aux = branch_aux[name]
            pooled = aux["pooled"][:, None]  # always valid, so no row is all padding
            if "tokens" not in aux or "mask" not in aux:
                raise KeyError(f"cross-attention fusion needs branch {name!r} tokens and mask")
            tokens = jnp.concatenate([pooled, aux["tokens"]], axis=1)
            members.append(self.proj[name](tokens) + self.branch_embed[i])
            masks += [jnp.ones(pooled.shape[:2], bool), aux["mask"].astype(bool)]
        kv, mask = jnp.concatenate(members, axis=1), jnp.concatenate(masks, axis=1)
        q = jnp.broadcast_to(self.query[...], (kv.shape[0], 1, kv.shape[-1])).astype(kv.dtype)
        fused = self.block(q, kv, mask, deterministic=deterministic)[:, 0]
        return self.head(fused, deterministic=deterministic), {"pooled": fused}


def make_fusion(
    kind: str, widths: Mapping[str, int], cfg: FusionConfig, *, rngs: nnx.Rngs
) -> ConcatFusion | CrossAttentionFusion:
    if kind == "concat":
        return ConcatFusion(widths, cfg, rngs=rngs)
    if kind == "cross_attention":
        return CrossAttentionFusion(widths, cfg, rngs=rngs)
    raise ValueError(f"fusion {kind!r} is not one of {FUSIONS}")
