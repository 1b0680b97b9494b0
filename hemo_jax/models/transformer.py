"""Long-sequence Transformer encoder: pre-norm blocks, rotary positions, masked pooling.

The encoder runs over ``[B, T, width]`` tokens with a boolean mask ``[B, T]``
(True = a real token) and returns ``(pooled, aux)`` with aux {"tokens",
"pooled", "mask"}. Positions are rotary (RoPE on queries and keys), so
attention scores depend only on relative offsets and a sequence longer than
any seen in training needs no new parameters. Attention goes through
``hemo_jax.models.attention.attention``; the implementation is named in the
config (None: chosen by platform and length).

Padding never reaches a real token: padded keys are masked in every layer and
pooling averages (or attends over) real positions only.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from hemo_jax.models.attention import attention
from hemo_jax.models.dropout import Dropout
from hemo_jax.models.layers import layer_norm
from hemo_jax.models.partitioning import BSE, axes, shard_activation

POOLINGS = ("mean", "attention")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    width: int = 256
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.1  # on each residual branch
    attention: str | None = None  # implementation name for attention(); None: automatic
    remat: bool = False  # recompute each block in the backward pass
    pooling: str = "mean"  # "mean" over valid positions, or a learned "attention" query
    rope_base: float = 10_000.0
    dtype: str = "float32"  # compute dtype; parameters stay float32

    def __post_init__(self):
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if (self.width // self.heads) % 2:
            raise ValueError(f"head dim {self.width // self.heads} must be even for rotary")
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1, got {self.depth}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling {self.pooling!r} is not one of {POOLINGS}")
        jnp.dtype(self.dtype)  # a bad name raises here, not deep inside a trace

    @property
    def mlp_dim(self) -> int:
        return int(self.width * self.mlp_ratio)

    @classmethod
    def tiny(cls, **kw) -> TransformerConfig:
        """Seconds on a CPU: tests and smoke configs."""
        return cls(**{"width": 32, "depth": 2, "heads": 2, "dropout": 0.0, **kw})

    @classmethod
    def small(cls, **kw) -> TransformerConfig:
        return cls(**{"width": 256, "depth": 4, "heads": 4, **kw})

    @classmethod
    def base(cls, **kw) -> TransformerConfig:
        return cls(**{"width": 512, "depth": 6, "heads": 8, **kw})


def apply_rope(x: jax.Array, positions: jax.Array, base: float = 10_000.0) -> jax.Array:
    """Rotate channel pairs of ``x`` [B, T, H, D] by ``positions`` [B, T] times frequencies.

    Channel i pairs with i + D/2 (the "rotate half" layout). Computed in float32.
    """
    half = x.shape[-1] // 2
    freqs = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions.astype(jnp.float32)[..., None] * freqs  # [B, T, D/2]
    sin = jnp.sin(angles)[:, :, None, :]
    cos = jnp.cos(angles)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def masked_mean(x: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Mean of ``x`` [B, T, E] over positions where ``mask`` [B, T]; zeros if none are."""
    if mask is None:
        return jnp.mean(x, axis=1)
    w = mask.astype(x.dtype)[..., None]
    return jnp.sum(x * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1)


class MultiHeadAttention(nnx.Module):
    """Queries from ``xq``, keys and values from ``xkv``, through the attention entry point.

    Rotary positions are applied to queries and keys when positions are given
    (self-attention over a sequence); a set (pooling, fusion) passes none.
    """

    def __init__(
        self,
        width: int,
        heads: int,
        *,
        implementation: str | None = None,
        dtype: str = "float32",
        rope_base: float = 10_000.0,
        rngs: nnx.Rngs,
    ):
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.implementation, self.rope_base = implementation, rope_base
        head_dim = width // heads

        def into_heads() -> nnx.LinearGeneral:
            return nnx.LinearGeneral(
                width,
                (heads, head_dim),
                dtype=jnp.dtype(dtype),
                kernel_metadata=axes("embed", "heads", "kv"),
                bias_metadata=axes("heads", "kv"),
                rngs=rngs,
            )

        self.query, self.key, self.value = into_heads(), into_heads(), into_heads()
        self.out = nnx.LinearGeneral(
            (heads, head_dim),
            width,
            axis=(-2, -1),
            dtype=jnp.dtype(dtype),
            kernel_metadata=axes("heads", "kv", "embed"),
            bias_metadata=axes("embed"),
            rngs=rngs,
        )

    def __call__(
        self,
        xq: jax.Array,
        xkv: jax.Array,
        mask: jax.Array | None,
        *,
        q_positions: jax.Array | None = None,
        kv_positions: jax.Array | None = None,
    ) -> jax.Array:
        q, k = self.query(xq), self.key(xkv)
        if q_positions is not None:
            q = apply_rope(q, q_positions, self.rope_base)
        if kv_positions is not None:
            k = apply_rope(k, kv_positions, self.rope_base)
        y = attention(q, k, self.value(xkv), kv_mask=mask, implementation=self.implementation)
        return self.out(y)


class Mlp(nnx.Module):
    """Linear -> GELU -> Linear, the position-wise half of a block."""

    def __init__(self, width: int, hidden: int, dtype: str = "float32", *, rngs: nnx.Rngs):
        self.up = nnx.Linear(
            width,
            hidden,
            dtype=jnp.dtype(dtype),
            kernel_metadata=axes("embed", "mlp"),
            bias_metadata=axes("mlp"),
            rngs=rngs,
        )
        self.down = nnx.Linear(
            hidden,
            width,
            dtype=jnp.dtype(dtype),
            kernel_metadata=axes("mlp", "embed"),
            bias_metadata=axes("embed"),
            rngs=rngs,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down(jax.nn.gelu(self.up(x)))


def _attention(cfg: TransformerConfig, rngs: nnx.Rngs) -> MultiHeadAttention:
    return MultiHeadAttention(
        cfg.width,
        cfg.heads,
        implementation=cfg.attention,
        dtype=cfg.dtype,
        rope_base=cfg.rope_base,
        rngs=rngs,
    )


class EncoderBlock(nnx.Module):
    """Pre-norm block: x + Drop(Attn(LN(x))), then x + Drop(MLP(LN(x)))."""

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
        self.norm1 = layer_norm(cfg.width, rngs, dtype=cfg.dtype)
        self.attn = _attention(cfg, rngs)
        self.norm2 = layer_norm(cfg.width, rngs, dtype=cfg.dtype)
        self.mlp = Mlp(cfg.width, cfg.mlp_dim, cfg.dtype, rngs=rngs)
        self.drop = Dropout(cfg.dropout, rngs=rngs)

    def __call__(
        self, x: jax.Array, mask: jax.Array | None, positions: jax.Array, *, deterministic: bool
    ) -> jax.Array:
        h = self.norm1(x)
        h = self.attn(h, h, mask, q_positions=positions, kv_positions=positions)
        x = x + self.drop(h, deterministic=deterministic)
        x = x + self.drop(self.mlp(self.norm2(x)), deterministic=deterministic)
        return shard_activation(x, BSE)


class AttentionPool(nnx.Module):
    """A learned query attends over the valid tokens, then a residual MLP (a MAP head)."""

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
        init = nnx.initializers.normal(0.02)
        self.probe = nnx.Param(init(rngs.params(), (1, 1, cfg.width)), **axes(None, None, "embed"))
        self.attn = _attention(cfg, rngs)
        self.norm = layer_norm(cfg.width, rngs, dtype=cfg.dtype)
        self.mlp = Mlp(cfg.width, cfg.mlp_dim, cfg.dtype, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        probe = jnp.broadcast_to(self.probe[...], (x.shape[0], 1, x.shape[-1])).astype(x.dtype)
        y = self.attn(probe, x, mask)[:, 0]
        return y + self.mlp(self.norm(y))


class TransformerEncoder(nnx.Module):
    """A stack of pre-norm blocks over ``[B, T, width]``, a final LayerNorm and pooling."""

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.blocks = nnx.List([EncoderBlock(cfg, rngs=rngs) for _ in range(cfg.depth)])
        self.norm = layer_norm(cfg.width, rngs, dtype=cfg.dtype)
        self.pool = AttentionPool(cfg, rngs=rngs) if cfg.pooling == "attention" else None

    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array | None = None,
        *,
        positions: jax.Array | None = None,
        deterministic: bool,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """``x`` [B, T, width]; ``mask`` [B, T] bool; ``positions`` [B, T] (default 0..T-1)."""
        if x.ndim != 3 or x.shape[-1] != self.cfg.width:
            raise ValueError(f"expected tokens [B, T, {self.cfg.width}], got {x.shape}")
        batch, length = x.shape[:2]
        if mask is not None and mask.shape != (batch, length):
            raise ValueError(f"mask shape {mask.shape}, expected {(batch, length)}")
        mask = None if mask is None else mask.astype(bool)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
        x = shard_activation(x.astype(jnp.dtype(self.cfg.dtype)), BSE)

        def run_block(block: EncoderBlock, x, mask, positions):
            return block(x, mask, positions, deterministic=deterministic)

        if self.cfg.remat:
            run_block = nnx.remat(run_block)
        for block in self.blocks:
            x = run_block(block, x, mask, positions)
        tokens = self.norm(x)
        pooled = masked_mean(tokens, mask) if self.pool is None else self.pool(tokens, mask)
        full_mask = jnp.ones((batch, length), bool) if mask is None else mask
        return pooled, {"tokens": tokens, "pooled": pooled, "mask": full_mask}
