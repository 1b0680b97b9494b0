"""Attention: one entry point, a reference implementation and the fast ones.

Shapes follow ``jax.nn.dot_product_attention``: q ``[B, Tq, H, D]``, k and v
``[B, Tk, H, D]``. Padding is a key mask: ``kv_lengths`` ``[B]`` or a boolean
``kv_mask`` ``[B, Tk]`` (True = a real key). A query row whose keys are all
padding returns zeros and passes zero gradient.

Implementations (``attention(..., implementation=...)``):

- ``reference``: plain softmax in float32, the ground truth for the others.
- ``dense``: the materialised softmax laid out for XLA:CPU (head-major rows, late
  normalisation, cache-sized chunks of rows; blockwise's backward for narrow
  heads); the CPU choice for short sequences.
- ``xla``: ``jax.nn.dot_product_attention``; materialises the [Tq, Tk] logits.
- ``cudnn``: cuDNN's fused kernel through the same JAX call (GPU, bf16/fp16).
- ``blockwise``: online softmax over key blocks for blocks of queries, pure JAX,
  with a hand-written backward that keeps only the output and the logsumexp and
  recomputes the probabilities block by block, so memory is linear in length
  in training as well as inference.
- ``ring``: blockwise attention for sequences split over the ``seq`` axis of the
  current mesh; key/value blocks travel around the ring with ``ppermute``.

``None`` picks one by platform, dtype and length (see ``select_implementation``).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

IMPLEMENTATIONS = ("reference", "dense", "xla", "cudnn", "blockwise", "ring")

# On CPU blockwise beats the materialised softmax from about 512 x 512 query-key
# pairs up (2-5x at 1k-2k, fwd and fwd+bwd, measured); below, ``dense`` wins.
_CPU_BLOCKWISE_MIN_PAIRS = 512 * 512
# On accelerators XLA's softmax is fast while its logits fit; blockwise once they
# would take more than this many bytes.
_ACCELERATOR_BLOCKWISE_MIN_LOGIT_BYTES = 2**30
# Logits per blockwise step on CPU: one head's 1024 x 1024 float32 tile. Measured
# (T=4096, fwd+bwd, idle 2-core machine) against 256-4096 blocks and 1-8 heads per
# tile: 1024-2048 blocks of one or two heads were fastest, 8-head tiles ~25% slower.
_CPU_TILE = 1024 * 1024
# Dense (short-sequence) CPU attention: logits up to this size in one pass; above it,
# chunks of about _CPU_DENSE_CHUNK_BYTES (one core's L2) one after another. Measured on
# 2 cores and 1 core at [B*H, T, T] = [96, 257, 257], [192, 128, 128] and [384, 128, 128]
# against 0.5-8 MiB chunks: one pass won at 12 MiB of logits, 2 MiB chunks at 25 MiB
# (up to 2x faster than one pass there).
_CPU_DENSE_UNCHUNKED_BYTES = 16 * 2**20
_CPU_DENSE_CHUNK_BYTES = 2 * 2**20
# Dense attention's backward: up to this head size, blockwise's (recompute the
# probabilities tile by tile from the saved logsumexp); above, autodiff through the
# materialised softmax. Forward + backward, dense autodiff / tiled, 2 cores, with a
# padding mask, [B, T, H, D] over T = 48-192: [16, T, 4, 16] 1.4-2.8x, [48, T, 4, 16]
# 1.3-2.5x, [16, T, 4, 32] 1.2-2.4x, [16, T, 2, 32] 1.2-1.6x; [16, T, 4, 64] 0.9-1.2x,
# [16, T, 8, 64] 0.65-1.4x (the recomputed product costs more than the saved passes).
_DENSE_TILED_BACKWARD_MAX_DIM = 32


@dataclasses.dataclass(frozen=True, kw_only=True)
class BlockSizes:
    """Tiling of the blockwise kernels.

    One step takes ``block_q`` queries against ``block_k`` keys for ``block_rows``
    (batch, head) rows at once: a float32 logits tile of ``block_rows * block_q *
    block_k``. Blocks are clipped to the (8-rounded) sequence length, which is
    padded to a multiple of the block internally. ``block_rows=None`` picks, on
    CPU, as many rows as keep the tile near ``_CPU_TILE`` elements (a few MiB that
    stay in cache) and, on accelerators, all rows (one wide step is cheaper than
    many small ones there). Rows are rounded down to a divisor of batch * heads.
    """

    block_q: int = 1024
    block_k: int = 1024
    block_rows: int | None = None

    def __post_init__(self) -> None:
        for name in ("block_q", "block_k", "block_rows"):
            value = getattr(self, name)
            if value is None and name == "block_rows":
                continue
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"BlockSizes.{name} must be a positive int, got {value!r}")


def _key_mask(
    batch: int, tk: int, kv_lengths: jax.Array | None, kv_mask: jax.Array | None
) -> jax.Array | None:
    if kv_lengths is not None and kv_mask is not None:
        raise ValueError("give kv_lengths or kv_mask, not both")
    if kv_lengths is not None:
        kv_lengths = jnp.asarray(kv_lengths)
        if kv_lengths.shape != (batch,):
            raise ValueError(f"kv_lengths shape {kv_lengths.shape}, expected {(batch,)}")
        return jnp.arange(tk)[None, :] < kv_lengths[:, None]
    if kv_mask is not None:
        kv_mask = jnp.asarray(kv_mask)
        if kv_mask.shape != (batch, tk):
            raise ValueError(f"kv_mask shape {kv_mask.shape}, expected {(batch, tk)}")
        return kv_mask.astype(bool)
    return None


def _dot(a: jax.Array, b: jax.Array, spec: str) -> jax.Array:
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


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
    p = p / jnp.where(denom == 0, 1.0, denom)
    out = jnp.einsum("bhqk,bkhd->bqhd", p, v.astype(jnp.float32))
    return out.astype(q.dtype)


def dense_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    key_mask: jax.Array | None,
    scale: float,
    *,
    chunk_bytes: int | None = None,
) -> jax.Array:
    """Materialised softmax laid out for CPU matmuls (the short-sequence CPU path).

    Heads move in front of the sequence ([B*H, T, D] rows) so both products are plain
    batched matmuls (contracting [B, T, H, D] directly ran 2-3x slower on XLA:CPU),
    the output is normalised after the product with v (a [Tq, D] divide instead of
    [Tq, Tk]), and large logits are processed ``chunk_bytes`` of rows at a time so a
    chunk stays in cache between the passes over it.

    For narrow heads the backward is blockwise's (see _DENSE_TILED_BACKWARD_MAX_DIM);
    for wider ones, autodiff through the materialised softmax.
    """
    if q.shape[-1] <= _DENSE_TILED_BACKWARD_MAX_DIM:
        return _dense_core(q, k, v, key_mask, scale, chunk_bytes)
    return _dense_forward(q, k, v, key_mask, scale, chunk_bytes)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _dense_core(q, k, v, key_mask, scale, chunk_bytes):
    return _dense_forward(q, k, v, key_mask, scale, chunk_bytes)[0]


def _dense_forward(q, k, v, key_mask, scale, chunk_bytes):
    """(out [B, Tq, H, D], logsumexp [B*H, Tq] with +inf on rows without keys)."""
    batch, tq, heads, dim = q.shape
    rows, row_bytes = batch * heads, tq * k.shape[1] * 4
    if chunk_bytes is None:
        small = rows * row_bytes <= _CPU_DENSE_UNCHUNKED_BYTES
        chunk_bytes = rows * row_bytes if small else _CPU_DENSE_CHUNK_BYTES
    per_chunk = _largest_divisor_at_most(rows, max(1, chunk_bytes // row_bytes))

    def core(q, k, v, key_mask):
        s = _dot(q, k, "rqd,rkd->rqk")
        if key_mask is not None:
            s = jnp.where(key_mask[:, None, :], s, -jnp.inf)
        m = jnp.max(s, axis=-1, keepdims=True)
        m = jnp.where(m == -jnp.inf, 0.0, m)
        p = jnp.exp(s - m)
        denom = jnp.sum(p, axis=-1, keepdims=True)
        dead = denom == 0
        out = _dot(p.astype(v.dtype), v, "rqk,rkd->rqd") / jnp.where(dead, 1.0, denom)
        lse = jnp.where(dead, jnp.inf, m + jnp.log(jnp.where(dead, 1.0, denom)))
        return out.astype(q.dtype), lse[..., 0]

    def to_rows(x):
        return x.transpose(0, 2, 1, 3).reshape(rows, x.shape[1], dim)

    q, k, v = to_rows(q * jnp.asarray(scale, q.dtype)), to_rows(k), to_rows(v)
    if key_mask is not None:
        key_mask = jnp.repeat(key_mask, heads, axis=0)
    if per_chunk == rows:
        out, lse = core(q, k, v, key_mask)
    else:
        chunks = jax.tree.map(
            lambda x: x.reshape(rows // per_chunk, per_chunk, *x.shape[1:]), (q, k, v, key_mask)
        )
        out, lse = jax.lax.map(lambda c: core(*c), chunks)
    out = out.reshape(batch, heads, tq, dim).transpose(0, 2, 1, 3)
    return out, lse.reshape(rows, tq)


def _dense_fwd(q, k, v, key_mask, scale, chunk_bytes):
    out, lse = _dense_forward(q, k, v, key_mask, scale, chunk_bytes)
    return out, (q, k, v, key_mask, out, lse)


def _dense_bwd(scale, chunk_bytes, residuals, d_out):
    del chunk_bytes
    q, k, v, key_mask, out, lse = residuals
    batch, tq, heads, _ = q.shape
    tk = k.shape[1]
    tiling = _tiling(q, k, BlockSizes())
    bq, bk, g = tiling.bq, tiling.bk, tiling.rows_per_tile
    nq = -(-tq // bq)
    # Padded query positions get lse = +inf: their probabilities are exactly 0.
    lse = jnp.pad(lse, ((0, 0), (0, nq * bq - tq)), constant_values=jnp.inf)
    lse = lse.reshape(batch * heads // g, g, nq, bq).transpose(0, 2, 1, 3)
    block_residuals = (
        _to_blocks(q * jnp.asarray(scale, q.dtype), bq, g),
        _to_blocks(k, bk, g),
        _to_blocks(v, bk, g),
        _bias_blocks(key_mask, batch, heads, tk, bk, g),
        _to_blocks(out, bq, g),
        lse,
    )
    dq, dk, dv, _ = _blockwise_bwd(block_residuals, _to_blocks(d_out, bq, g))
    # The blocks hold the scaled queries: their gradient times the scale is q's.
    dq = _from_blocks(dq, batch, heads, tq) * scale
    dk, dv = (_from_blocks(x, batch, heads, tk) for x in (dk, dv))
    return dq.astype(q.dtype), dk, dv, None


_dense_core.defvjp(_dense_fwd, _dense_bwd)


def _largest_divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, min(limit, n) + 1) if n % d == 0)


def _zero_dead_rows(out: jax.Array, key_mask: jax.Array | None) -> jax.Array:
    """Rows whose keys are all padding: zeros, as the reference (not NaN/uniform)."""
    if key_mask is None:
        return out
    return jnp.where(jnp.any(key_mask, axis=1)[:, None, None, None], out, 0)


def xla_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None, scale: float
) -> jax.Array:
    mask = None if key_mask is None else key_mask[:, None, None, :]
    out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation="xla")
    return _zero_dead_rows(out, key_mask)


def compact_keys(
    k: jax.Array, v: jax.Array, key_mask: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Move each row's real keys (and their values) to the front, keeping their order;
    returns (k, v, lengths). Attention does not depend on key order, so any key mask
    becomes a lengths mask, which is the padding form cuDNN takes (a [B, Tk] mask
    would have to be widened to a [B, 1, Tq, Tk] bias)."""
    order = jnp.argsort(~key_mask, axis=1, stable=True)[:, :, None, None]
    k = jnp.take_along_axis(k, order, axis=1)
    v = jnp.take_along_axis(v, order, axis=1)
    return k, v, jnp.sum(key_mask, axis=1, dtype=jnp.int32)


def cudnn_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    kv_lengths: jax.Array | None,
    key_mask: jax.Array | None,
    scale: float,
) -> jax.Array:
    """cuDNN's fused flash attention; padding passed as per-row key lengths."""
    if jax.default_backend() != "gpu":
        raise ValueError(
            f"attention implementation 'cudnn' needs a GPU; the default backend is "
            f"{jax.default_backend()!r} (use 'blockwise' or 'xla')"
        )
    if q.dtype not in (jnp.bfloat16, jnp.float16):
        raise ValueError(
            f"attention implementation 'cudnn' needs bf16 or fp16 inputs, got {q.dtype}"
        )
    lengths = None
    if key_mask is not None:
        if kv_lengths is None:
            k, v, lengths = compact_keys(k, v, key_mask)
        else:
            lengths = jnp.clip(jnp.asarray(kv_lengths, jnp.int32), 0, k.shape[1])
        # A row without keys would make cuDNN divide by zero: give it one (zeroed) key,
        # and zero its inputs so neither the output nor any gradient sees it.
        alive = (lengths > 0)[:, None, None, None]
        q, k, v = (jnp.where(alive, x, jnp.zeros((), x.dtype)) for x in (q, k, v))
        lengths = jnp.maximum(lengths, 1)
    out = length_masked_attention(q, k, v, lengths, scale=scale, implementation="cudnn")
    return _zero_dead_rows(out, key_mask)


def length_masked_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    lengths: jax.Array | None,
    *,
    scale: float,
    implementation: str,
) -> jax.Array:
    """``jax.nn.dot_product_attention`` with per-row key lengths, at even lengths.

    cuDNN's backward with padding takes only even query and key lengths ("Unsupported
    sequence length Q 7, KV 7"): an odd length gets one more query, dropped from the
    output, and one more key, beyond every row's length and so never attended.
    """
    tq, tk = q.shape[1], k.shape[1]
    if tk % 2 and lengths is None:
        lengths = jnp.full((k.shape[0],), tk, jnp.int32)

    def pad(x: jax.Array, n: int) -> jax.Array:
        return jnp.pad(x, ((0, 0), (0, n), (0, 0), (0, 0)))

    out = jax.nn.dot_product_attention(
        pad(q, tq % 2),
        pad(k, tk % 2),
        pad(v, tk % 2),
        scale=scale,
        key_value_seq_lengths=lengths,
        implementation=implementation,
    )
    return out[:, :tq]


# --------------------------------------------------------------------------------------
# Blockwise kernels. The batch and head axes are flattened into rows and cut into G
# groups of g rows; one tile is g rows x block_q queries x block_k keys. Internal
# layout: queries [G, nq, g, bq, D] (already scaled), keys/values [G, nk, g, bk, D],
# key bias [G, nk, g, bk] (0 or -inf) or None. The softmax state per query is
# (m: running max, row_sum: running sum of exp, acc: unnormalised output), float32.


def _init_state(q_blocks: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    # Derived from q so the state carries q's sharding/varying-axes type under shard_map.
    acc = jnp.zeros_like(q_blocks, dtype=jnp.float32)
    row_sum = acc[..., 0]
    return row_sum - jnp.inf, row_sum, acc


def _forward_update(q_blocks, k_blocks, v_blocks, bias_blocks, state):
    """Fold every key block into the softmax state of every query block."""

    def one_group(args):
        qg, kg, vg, bias_g, state_g = args

        def one_query_block(args):
            qb, state_b = args

            def step(carry, kv):
                m, row_sum, acc = carry
                kb, vb, bias_b = kv
                s = _dot(qb, kb, "gqd,gkd->gqk")
                if bias_b is not None:
                    s = s + bias_b[:, None, :]
                m_new = jnp.maximum(m, jnp.max(s, axis=-1))
                # A row with no real key so far keeps m = -inf: shift by 0 so exp gives 0.
                m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
                p = jnp.exp(s - m_safe[..., None])
                alpha = jnp.exp(m - m_safe)
                row_sum = alpha * row_sum + jnp.sum(p, axis=-1)
                acc = alpha[..., None] * acc + _dot(p.astype(vb.dtype), vb, "gqk,gkd->gqd")
                return (m_new, row_sum, acc), None

            return jax.lax.scan(step, state_b, (kg, vg, bias_g))[0]

        return jax.lax.map(one_query_block, (qg, state_g))

    return jax.lax.map(one_group, (q_blocks, k_blocks, v_blocks, bias_blocks, state))


def _finalize(state, dtype):
    m, row_sum, acc = state
    dead = row_sum == 0
    safe_sum = jnp.where(dead, 1.0, row_sum)
    out = acc / safe_sum[..., None]
    # Dead rows get lse = +inf so the backward's exp(s - lse) is exactly 0 there.
    lse = jnp.where(dead, jnp.inf, m + jnp.log(safe_sum))
    return out.astype(dtype), lse


def _backward_update(q_blocks, k_blocks, v_blocks, bias_blocks, do_blocks, lse, delta, dq_t):
    """Gradients from one set of key blocks: returns (dq_t + this part, dk, dv).

    Outer loop over key blocks, inner over query blocks: dk/dv of a key block are
    finished in one outer step (no scatter-add); dq accumulates in a carry. The
    tile is kept transposed ([keys, queries]) and dq as [..., D, queries], so every
    product is a plain matmul without a transposed operand; those run at about half
    the speed on CPU.
    """
    # k^T as its own loop input: XLA cannot fold the transpose back into the product.
    k_t_blocks = jnp.swapaxes(k_blocks, -1, -2)

    def one_group(args):
        qg, kg, k_tg, vg, bias_g, dog, lse_g, delta_g, dq_tg = args

        def one_key_block(dq_tg, kv):
            kb, k_tb, vb, bias_b = kv

            def step(carry, qs):
                dk, dv = carry
                qb, dob, lse_b, delta_b, dq_tb = qs
                s_t = _dot(kb, qb, "gkd,gqd->gkq")
                if bias_b is not None:
                    s_t = s_t + bias_b[:, :, None]
                p_t = jnp.exp(s_t - lse_b[:, None, :])
                dv = dv + _dot(p_t.astype(dob.dtype), dob, "gkq,gqd->gkd")
                dp_t = _dot(vb, dob, "gkd,gqd->gkq")
                ds_t = (p_t * (dp_t - delta_b[:, None, :])).astype(qb.dtype)
                dk = dk + _dot(ds_t, qb, "gkq,gqd->gkd")
                dq_tb = dq_tb + _dot(k_tb, ds_t, "gdk,gkq->gdq")
                return (dk, dv), dq_tb

            zeros = jnp.zeros_like(kb, dtype=jnp.float32)
            (dk, dv), dq_tg = jax.lax.scan(step, (zeros, zeros), (qg, dog, lse_g, delta_g, dq_tg))
            return dq_tg, (dk, dv)

        dq_tg, (dk, dv) = jax.lax.scan(one_key_block, dq_tg, (kg, k_tg, vg, bias_g))
        return dq_tg, dk, dv

    args = (q_blocks, k_blocks, k_t_blocks, v_blocks, bias_blocks, do_blocks, lse, delta, dq_t)
    return jax.lax.map(one_group, args)


def _zero_dq_t(q_blocks: jax.Array) -> jax.Array:
    return jnp.zeros_like(jnp.swapaxes(q_blocks, -1, -2), dtype=jnp.float32)


def _delta(out: jax.Array, do: jax.Array) -> jax.Array:
    """Row sums of out * d_out. As a contraction: XLA's CPU reduce over a 64-wide
    minor axis ran 40x slower than this (25 ms against 0.6 ms at 32k rows x 64)."""
    return _dot(out, do, "...d,...d->...")


def _zero_bias_grad(bias_blocks):
    return None if bias_blocks is None else jnp.zeros_like(bias_blocks)


@jax.custom_vjp
def _blockwise_core(q_blocks, k_blocks, v_blocks, bias_blocks):
    return _blockwise_fwd(q_blocks, k_blocks, v_blocks, bias_blocks)[0]


def _blockwise_fwd(q_blocks, k_blocks, v_blocks, bias_blocks):
    state = _forward_update(q_blocks, k_blocks, v_blocks, bias_blocks, _init_state(q_blocks))
    out, lse = _finalize(state, q_blocks.dtype)
    return out, (q_blocks, k_blocks, v_blocks, bias_blocks, out, lse)


def _blockwise_bwd(residuals, d_out):
    q_blocks, k_blocks, v_blocks, bias_blocks, out, lse = residuals
    delta = _delta(out, d_out)
    dq_t, dk, dv = _backward_update(
        q_blocks, k_blocks, v_blocks, bias_blocks, d_out, lse, delta, _zero_dq_t(q_blocks)
    )
    dq = jnp.swapaxes(dq_t, -1, -2).astype(q_blocks.dtype)
    return dq, dk.astype(k_blocks.dtype), dv.astype(v_blocks.dtype), _zero_bias_grad(bias_blocks)


_blockwise_core.defvjp(_blockwise_fwd, _blockwise_bwd)


@dataclasses.dataclass(frozen=True)
class _Tiling:
    """Block lengths and rows per tile resolved for one call's shapes."""

    bq: int
    bk: int
    rows_per_tile: int


def _tiling(q: jax.Array, k: jax.Array, block_sizes: BlockSizes) -> _Tiling:
    rows = q.shape[0] * q.shape[2]
    bq = min(block_sizes.block_q, -(-q.shape[1] // 8) * 8)
    bk = min(block_sizes.block_k, -(-k.shape[1] // 8) * 8)
    wanted = block_sizes.block_rows
    if wanted is None:
        wanted = max(1, _CPU_TILE // (bq * bk)) if jax.default_backend() == "cpu" else rows
    # The largest divisor of rows not above the wish: groups are then all full.
    g = max(d for d in range(1, min(wanted, rows) + 1) if rows % d == 0)
    return _Tiling(bq, bk, g)


def _to_blocks(x: jax.Array, block: int, g: int) -> jax.Array:
    """[B, T, H, D] -> [G, T/block, g, block, D], zero-padding T to a multiple of block."""
    b, t, h, d = x.shape
    n = -(-t // block)
    x = jnp.pad(x.transpose(0, 2, 1, 3), ((0, 0), (0, 0), (0, n * block - t), (0, 0)))
    return x.reshape(b * h // g, g, n, block, d).transpose(0, 2, 1, 3, 4)


def _from_blocks(x: jax.Array, batch: int, heads: int, length: int) -> jax.Array:
    _, n, _, block, d = x.shape
    x = x.transpose(0, 2, 1, 3, 4).reshape(batch, heads, n * block, d)
    return x[:, :, :length].transpose(0, 2, 1, 3)


def _bias_blocks(
    key_mask: jax.Array | None, batch: int, heads: int, tk: int, block: int, g: int
) -> jax.Array | None:
    """Additive key bias [G, nk, g, bk]: 0 for real keys, -inf for padding (mask or tail)."""
    n = -(-tk // block)
    if key_mask is None and n * block == tk:
        return None
    if key_mask is None:
        key_mask = jnp.ones((batch, tk), bool)
    key_mask = jnp.pad(key_mask, ((0, 0), (0, n * block - tk)))
    bias = jnp.where(key_mask, 0.0, -jnp.inf).astype(jnp.float32)
    bias = jnp.broadcast_to(bias[:, None], (batch, heads, n * block))
    return bias.reshape(batch * heads // g, g, n, block).transpose(0, 2, 1, 3)


def blockwise_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    key_mask: jax.Array | None,
    scale: float,
    *,
    block_sizes: BlockSizes | None = None,
) -> jax.Array:
    """Online-softmax attention in blocks with a recomputing custom backward."""
    tiling = _tiling(q, k, block_sizes or BlockSizes())
    batch, tq, heads, _ = q.shape
    g = tiling.rows_per_tile
    out = _blockwise_core(
        _to_blocks(q * jnp.asarray(scale, q.dtype), tiling.bq, g),
        _to_blocks(k, tiling.bk, g),
        _to_blocks(v, tiling.bk, g),
        _bias_blocks(key_mask, batch, heads, k.shape[1], tiling.bk, g),
    )
    return _from_blocks(out, batch, heads, tq)


# --------------------------------------------------------------------------------------
# Ring attention: each device of the `seq` axis holds one contiguous chunk of the
# queries, keys and values. Key/value chunks (and their bias) travel one step
# around the ring per iteration; after n steps every query chunk has seen every
# key chunk. The backward sends dk/dv accumulators around with their chunk, so
# after n steps each chunk's gradient arrives back on its own device.


def _ring_shift(x, axis_name: str, n: int):
    perm = [(i, (i + 1) % n) for i in range(n)]
    return jax.tree.map(lambda a: jax.lax.ppermute(a, axis_name, perm), x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _ring_core(q_blocks, k_blocks, v_blocks, bias_blocks, axis_name, n):
    return _ring_fwd(q_blocks, k_blocks, v_blocks, bias_blocks, axis_name, n)[0]


def _ring_fwd(q_blocks, k_blocks, v_blocks, bias_blocks, axis_name, n):
    def body(i, carry):
        state, kv = carry
        state = _forward_update(q_blocks, *kv, state)
        kv = jax.lax.cond(i < n - 1, lambda x: _ring_shift(x, axis_name, n), lambda x: x, kv)
        return state, kv

    kv = (k_blocks, v_blocks, bias_blocks)
    state, _ = jax.lax.fori_loop(0, n, body, (_init_state(q_blocks), kv))
    out, lse = _finalize(state, q_blocks.dtype)
    return out, (q_blocks, k_blocks, v_blocks, bias_blocks, out, lse)


def _ring_bwd(axis_name, n, residuals, d_out):
    q_blocks, k_blocks, v_blocks, bias_blocks, out, lse = residuals
    delta = _delta(out, d_out)

    def body(_, carry):
        dq_t, kv, dkv = carry
        dq_t, dk, dv = _backward_update(q_blocks, *kv, d_out, lse, delta, dq_t)
        dkv = (dkv[0] + dk, dkv[1] + dv)
        # n shifts bring every chunk, with its finished gradient, back home.
        return dq_t, _ring_shift(kv, axis_name, n), _ring_shift(dkv, axis_name, n)

    zeros = jnp.zeros_like(k_blocks, dtype=jnp.float32)
    init = (_zero_dq_t(q_blocks), (k_blocks, v_blocks, bias_blocks))
    dq_t, _, (dk, dv) = jax.lax.fori_loop(0, n, body, (*init, (zeros, zeros)))
    dq = jnp.swapaxes(dq_t, -1, -2).astype(q_blocks.dtype)
    return dq, dk.astype(k_blocks.dtype), dv.astype(v_blocks.dtype), _zero_bias_grad(bias_blocks)


_ring_core.defvjp(_ring_fwd, _ring_bwd)


def _shard_dim1(x: jax.Array | None, axis_name: str) -> jax.Array | None:
    """Reshard dim 1 over ``axis_name``, keeping the other dims' sharding."""
    if x is None:
        return None
    spec = list(jax.typeof(x).sharding.spec)
    spec += [None] * (x.ndim - len(spec))
    spec[1] = axis_name
    return jax.sharding.reshard(x, P(*spec))


def ring_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    key_mask: jax.Array | None,
    scale: float,
    *,
    mesh: jax.sharding.Mesh | jax.sharding.AbstractMesh | None = None,
    axis_name: str = "seq",
    block_sizes: BlockSizes | None = None,
) -> jax.Array:
    """Blockwise attention over sequences sharded along ``axis_name`` of ``mesh``.

    ``mesh`` defaults to the one set with ``jax.set_mesh``. Only ``axis_name`` is
    manual; other mesh axes (data, heads) stay under the compiler's control.
    """
    mesh = mesh if mesh is not None else jax.sharding.get_abstract_mesh()
    if mesh.empty or axis_name not in mesh.axis_names:
        raise ValueError(
            f"ring attention needs a mesh with a {axis_name!r} axis (pass mesh= or use "
            f"jax.set_mesh); got axes {tuple(mesh.axis_names)}"
        )
    n = mesh.shape[axis_name]
    block_sizes = block_sizes or BlockSizes()
    batch, tq = q.shape[:2]
    tk = k.shape[1]
    # Every device gets an equal chunk: pad both lengths to a multiple of n.
    tq_pad, tk_pad = -(-tq // n) * n, -(-tk // n) * n
    if tk_pad != tk and key_mask is None:
        key_mask = jnp.ones((batch, tk), bool)
    if key_mask is not None:
        key_mask = jnp.pad(key_mask, ((0, 0), (0, tk_pad - tk)))
    pad = lambda x, t: jnp.pad(x, ((0, 0), (0, t - x.shape[1]), (0, 0), (0, 0)))
    q, k, v = pad(q * jnp.asarray(scale, q.dtype), tq_pad), pad(k, tk_pad), pad(v, tk_pad)

    def local(q, k, v, key_mask):
        tiling = _tiling(q, k, block_sizes)
        batch, tq_local, heads, _ = q.shape
        g = tiling.rows_per_tile
        out = _ring_core(
            _to_blocks(q, tiling.bq, g),
            _to_blocks(k, tiling.bk, g),
            _to_blocks(v, tiling.bk, g),
            _bias_blocks(key_mask, batch, heads, k.shape[1], tiling.bk, g),
            axis_name,
            n,
        )
        return _from_blocks(out, batch, heads, tq_local)

    axis_type = mesh.axis_types[mesh.axis_names.index(axis_name)]
    explicit = axis_type == jax.sharding.AxisType.Explicit
    if explicit:
        # Explicit axes never reshard implicitly: move the sequence onto the ring here,
        # and give the output back in the layout q came in.
        q_spec = jax.typeof(q).sharding.spec
        q, k, v, key_mask = (_shard_dim1(x, axis_name) for x in (q, k, v, key_mask))
    seq = P(None, axis_name, None, None)
    mask_spec = None if key_mask is None else P(None, axis_name)
    out = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(seq, seq, seq, mask_spec),
        out_specs=seq,
        axis_names={axis_name},
    )(q, k, v, key_mask)
    if explicit:
        out = jax.sharding.reshard(out, q_spec)
    return out[:, :tq]


# --------------------------------------------------------------------------------------


def select_implementation(q: jax.Array, k: jax.Array) -> str:
    """The automatic choice: cuDNN for half precision on GPU; otherwise blockwise
    once the [Tq, Tk] logits get large (sooner on CPU, where it is also faster),
    below that the dense softmax on CPU and XLA's fused one on accelerators."""
    backend = jax.default_backend()
    batch, tq, heads, head_dim = q.shape
    if (
        backend == "gpu"
        and q.dtype in (jnp.bfloat16, jnp.float16)
        and head_dim % 8 == 0
        and head_dim <= 128
    ):
        return "cudnn"
    if backend == "cpu":
        return "blockwise" if tq * k.shape[1] >= _CPU_BLOCKWISE_MIN_PAIRS else "dense"
    logit_bytes = batch * heads * tq * k.shape[1] * 4
    return "blockwise" if logit_bytes >= _ACCELERATOR_BLOCKWISE_MIN_LOGIT_BYTES else "xla"


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    kv_lengths: jax.Array | None = None,
    kv_mask: jax.Array | None = None,
    implementation: str | None = None,
    scale: float | None = None,
    block_sizes: BlockSizes | None = None,
) -> jax.Array:
    """Multi-head attention over ``[B, T, H, D]`` with a key-padding mask.

    ``implementation`` is one of IMPLEMENTATIONS, or None to choose by platform,
    dtype and length. ``block_sizes`` tiles ``blockwise`` and ``ring``. ``ring``
    runs over the ``seq`` axis of the mesh set with ``jax.set_mesh``.
    """
    if (
        q.ndim != 4
        or k.ndim != 4
        or k.shape != v.shape
        or q.shape[0] != k.shape[0]
        or q.shape[2:] != k.shape[2:]
    ):
        raise ValueError(
            f"expected q [B,Tq,H,D] and k = v [B,Tk,H,D] with the same B, H, D; "
            f"got q {q.shape}, k {k.shape}, v {v.shape}"
        )
    if implementation is not None and implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"unknown attention implementation {implementation!r}; one of {IMPLEMENTATIONS}"
        )
    if block_sizes is not None and implementation not in (None, "blockwise", "ring"):
        raise ValueError(f"block_sizes applies to 'blockwise' and 'ring', not {implementation!r}")
    batch, tk = k.shape[0], k.shape[1]
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    key_mask = _key_mask(batch, tk, kv_lengths, kv_mask)
    implementation = implementation or select_implementation(q, k)
    if implementation == "reference":
        return reference_attention(q, k, v, key_mask, scale)
    if implementation == "dense":
        return dense_attention(q, k, v, key_mask, scale)
    if implementation == "xla":
        return xla_attention(q, k, v, key_mask, scale)
    if implementation == "cudnn":
        return cudnn_attention(q, k, v, kv_lengths=kv_lengths, key_mask=key_mask, scale=scale)
    if implementation == "blockwise":
        return blockwise_attention(q, k, v, key_mask, scale, block_sizes=block_sizes)
    return ring_attention(q, k, v, key_mask, scale, block_sizes=block_sizes)
