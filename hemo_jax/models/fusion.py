"""Fusion of branch outputs into one prediction, and the classifier head every branch uses.

A fusion reads each branch's aux (``pooled`` [B, E_b]; the cross-attention
fusion also ``tokens`` [B, T_b, E_b] and ``mask`` [B, T_b]) and returns
``(logits, aux)`` with aux {"pooled": the fused embedding}. Branches are taken
in sorted name order, so the layout of the fused weights does not depend on
the order a config lists them in.

- ``concat`` (default): concatenate pooled embeddings -> linear -> residual
  block (LN, MLP, residual) -> classifier.
- ``cross_attention``: every branch's pooled embedding and tokens, projected to
  the fusion width and tagged with a learned per-branch embedding, form one
  set; a learned query attends over it (padding masked) in pre-norm blocks,
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
from hemo_jax.models.partitioning import axes
from hemo_jax.models.transformer import Mlp, MultiHeadAttention, layer_norm

FUSIONS = ("concat", "cross_attention")


@dataclasses.dataclass(frozen=True)
class FusionConfig:
    width: int = 256
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    num_classes: int = 2
    heads: int = 4  # cross_attention only
    depth: int = 1  # cross_attention blocks
    use_tokens: bool = True  # cross_attention: attend over tokens too, not only pooled
    attention: str | None = None  # implementation name for attention()
    dtype: str = "float32"

    def __post_init__(self):
        if self.width % self.heads:
            raise ValueError(f"fusion width {self.width} is not divisible by heads {self.heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def mlp_dim(self) -> int:
        return int(self.width * self.mlp_ratio)

    @classmethod
    def tiny(cls, **kw) -> FusionConfig:
        return cls(**{"width": 16, "heads": 2, "dropout": 0.0, **kw})


class ClassifierHead(nnx.Module):
    """LayerNorm -> dropout -> linear to logits.

    The linear layer starts at zero (as big_vision's heads): every class starts
    equally likely, so training begins at loss log(num_classes) whatever the seed.
    """

    def __init__(self, width: int, num_classes: int, dropout: float, *, rngs: nnx.Rngs):
        self.norm = layer_norm(width, "float32", rngs)
        self.drop = Dropout(dropout, rngs=rngs)
        self.linear = nnx.Linear(
            width,
            num_classes,
            kernel_init=nnx.initializers.zeros_init(),
            kernel_metadata=axes("embed", "classes"),
            bias_metadata=axes("classes"),
            rngs=rngs,
        )

    def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
        x = self.drop(self.norm(x.astype(jnp.float32)), deterministic=deterministic)
        return self.linear(x)


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
        self.norm = layer_norm(cfg.width, cfg.dtype, rngs)
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
        self.norm_q = layer_norm(cfg.width, cfg.dtype, rngs)
        self.norm_kv = layer_norm(cfg.width, cfg.dtype, rngs)
        self.attn = MultiHeadAttention(
            cfg.width, cfg.heads, implementation=cfg.attention, dtype=cfg.dtype, rngs=rngs
        )
        self.norm_mlp = layer_norm(cfg.width, cfg.dtype, rngs)
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
        self.use_tokens = cfg.use_tokens
        self.proj = nnx.Dict(
            {n: _project(widths[n], cfg.width, cfg.dtype, rngs) for n in self.names}
        )
        init = nnx.initializers.normal(0.02)
        self.branch_embed = nnx.Param(
            init(rngs.params(), (len(self.names), cfg.width)), **axes("branches", "embed")
        )
        self.query = nnx.Param(init(rngs.params(), (1, 1, cfg.width)), **axes(None, None, "embed"))
        self.blocks = nnx.List([CrossAttentionBlock(cfg, rngs=rngs) for _ in range(cfg.depth)])
        self.head = ClassifierHead(cfg.width, cfg.num_classes, cfg.dropout, rngs=rngs)

    def __call__(
        self, branch_aux: Mapping[str, Mapping[str, jax.Array]], *, deterministic: bool
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        _check_branches(self.names, branch_aux)
        members, masks = [], []
        for i, name in enumerate(self.names):
            aux = branch_aux[name]
            pooled = aux["pooled"][:, None]  # always valid, so no row is all padding
            parts, part_masks = [pooled], [jnp.ones(pooled.shape[:2], bool)]
            if self.use_tokens:
                if "tokens" not in aux or "mask" not in aux:
                    raise KeyError(f"cross-attention fusion needs branch {name!r} tokens and mask")
                parts.append(aux["tokens"])
                part_masks.append(aux["mask"].astype(bool))
            members.append(self.proj[name](jnp.concatenate(parts, axis=1)) + self.branch_embed[i])
            masks.extend(part_masks)
        kv, mask = jnp.concatenate(members, axis=1), jnp.concatenate(masks, axis=1)
        q = jnp.broadcast_to(self.query[...], (kv.shape[0], 1, kv.shape[-1])).astype(kv.dtype)
        for block in self.blocks:
            q = block(q, kv, mask, deterministic=deterministic)
        fused = q[:, 0]
        return self.head(fused, deterministic=deterministic), {"pooled": fused}


def make_fusion(
    kind: str, widths: Mapping[str, int], cfg: FusionConfig, *, rngs: nnx.Rngs
) -> ConcatFusion | CrossAttentionFusion:
    if kind == "concat":
        return ConcatFusion(widths, cfg, rngs=rngs)
    if kind == "cross_attention":
        return CrossAttentionFusion(widths, cfg, rngs=rngs)
    raise ValueError(f"fusion {kind!r} is not one of {FUSIONS}")
