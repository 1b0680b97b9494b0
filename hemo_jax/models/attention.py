"""Attention: one entry point, a reference implementation and the fast ones.

Shapes follow ``jax.nn.dot_product_attention``: q ``[B, Tq, H, D]``, k and v
``[B, Tk, H, D]``. Padding is a key mask: ``kv_lengths`` ``[B]`` or a boolean
``kv_mask`` ``[B, Tk]`` (True = a real key). A query row whose keys are all
padding returns zeros.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("reference", "xla")


def _key_mask(
    batch: int, tk: int, kv_lengths: jax.Array | None, kv_mask: jax.Array | None
) -> jax.Array | None:
    if kv_lengths is not None and kv_mask is not None:
        raise ValueError("give kv_lengths or kv_mask, not both")
    if kv_lengths is not None:
        return jnp.arange(tk)[None, :] < jnp.asarray(kv_lengths)[:, None]
    if kv_mask is not None:
        if kv_mask.shape != (batch, tk):
            raise ValueError(f"kv_mask shape {kv_mask.shape}, expected {(batch, tk)}")
        return kv_mask.astype(bool)
    return None


def reference_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None, scale: float
) -> jax.Array:
    """Plain softmax attention in float32; the ground truth for the others."""
    logits = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), k.astype(jnp.float32)) * scale
    if key_mask is not None:
        logits = jnp.where(key_mask[:, None, None, :], logits, -jnp.inf)
    m = jnp.max(logits, axis=-1, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    p = jnp.exp(logits - m)
    denom = jnp.sum(p, axis=-1, keepdims=True)
    out = jnp.einsum("bhqk,bkhd->bqhd", p / jnp.where(denom == 0, 1.0, denom), v.astype(jnp.float32))
    return out.astype(q.dtype)


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    kv_lengths: jax.Array | None = None,
    kv_mask: jax.Array | None = None,
    implementation: str | None = None,
    scale: float | None = None,
) -> jax.Array:
    """Multi-head attention over ``[B, T, H, D]`` with a key-padding mask.

    ``implementation`` is one of IMPLEMENTATIONS, or None to choose by platform
    and length.
    """
    if q.ndim != 4 or k.shape != v.shape or q.shape[::3] != k.shape[::3]:
        raise ValueError(f"expected q [B,Tq,H,D], k=v [B,Tk,H,D]; got {q.shape}, {k.shape}, {v.shape}")
    batch, tk = k.shape[0], k.shape[1]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    key_mask = _key_mask(batch, tk, kv_lengths, kv_mask)
    implementation = implementation or "xla"
    if implementation == "reference":
        return reference_attention(q, k, v, key_mask, scale)
    if implementation == "xla":
        mask = None if key_mask is None else key_mask[:, None, None, :]
        out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation="xla")
        if key_mask is not None:  # all-padded rows: zeros, as the reference
            out = jnp.where(jnp.any(key_mask, axis=1)[:, None, None, None], out, 0)
        return out
    raise ValueError(f"unknown attention implementation {implementation!r}; one of {IMPLEMENTATIONS}")
