"""Attention implementations against the plain-softmax reference: outputs and gradients."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType

from hemo_jax.models import attention as attention_module
from hemo_jax.models.attention import (
    BlockSizes,
    attention,
    compact_keys,
    dense_attention,
    length_masked_attention,
    reference_attention,
    select_implementation,
)


@pytest.fixture(autouse=True)
def _float32_matmuls():
    with jax.default_matmul_precision("float32"):
        yield


def _inputs(batch, tq, tk, heads, dim, seed=0, dtype=jnp.float32):
    # numpy draws: no per-shape compilation of random kernels.
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.standard_normal((batch, tq, heads, dim)), dtype)
    k = jnp.asarray(rng.standard_normal((batch, tk, heads, dim)), dtype)
    v = jnp.asarray(rng.standard_normal((batch, tk, heads, dim)), dtype)
    # A random cotangent, so each output element gets its own weight in the gradient.
    w = jnp.asarray(rng.standard_normal((batch, tq, heads, dim)), jnp.float32)
    return q, k, v, w


@functools.partial(jax.jit, static_argnames=("implementation", "block_sizes", "scale"))
def _value_and_grads(
    implementation, q, k, v, w, kv_lengths=None, kv_mask=None, block_sizes=None, scale=None
):
    # Padding goes in as an argument, not a closure constant: XLA would otherwise
    # constant-fold the masked [T, T] reference softmax at compile time.
    def loss(q, k, v):
        out = attention(
            q,
            k,
            v,
            kv_lengths=kv_lengths,
            kv_mask=kv_mask,
            implementation=implementation,
            block_sizes=block_sizes,
            scale=scale,
        )
        return jnp.sum(out.astype(jnp.float32) * w), out

    (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
    return out, grads


def _assert_matches_reference(implementation, q, k, v, w, *, atol, rtol=1e-5, **kwargs):
    out, grads = _value_and_grads(implementation, q, k, v, w, **kwargs)
    kwargs.pop("block_sizes", None)
    ref_out, ref_grads = _value_and_grads("reference", q, k, v, w, **kwargs)
    np.testing.assert_allclose(out, ref_out, atol=atol, rtol=rtol, err_msg="output")
    for name, g, ref in zip("qkv", grads, ref_grads, strict=True):
        assert bool(jnp.all(jnp.isfinite(g))), f"non-finite d{name}"
        np.testing.assert_allclose(g, ref, atol=atol, rtol=rtol, err_msg=f"d{name}")


# (batch, tq, tk, heads, dim, block_sizes, padding): lengths that are and are not
# multiples of the block, cross-attention, several tilings, one (batch, head) row
# per tile and rows rounded down to a divisor of batch * heads (3 -> 2 of 4).
BLOCKWISE_CASES = [
    (2, 1, 1, 2, 8, BlockSizes(), None),
    (2, 7, 7, 2, 8, BlockSizes(block_q=8, block_k=8), None),
    (2, 7, 7, 2, 8, BlockSizes(block_q=2, block_k=3), "lengths"),
    (2, 128, 128, 2, 16, BlockSizes(block_q=32, block_k=16, block_rows=1), "lengths"),
    (2, 128, 128, 2, 16, BlockSizes(block_q=128, block_k=128, block_rows=3), "mask"),
    (2, 1000, 1000, 2, 16, BlockSizes(block_q=256, block_k=128), "mask"),
    (2, 1000, 1000, 2, 16, BlockSizes(), "lengths"),
    (2, 100, 1000, 2, 16, BlockSizes(block_q=64, block_k=384), "lengths"),
    (1, 4096, 4096, 1, 8, BlockSizes(block_q=1024, block_k=512), "lengths"),
]


def _padding(kind, batch, tk, seed=1):
    if kind is None:
        return {}
    if kind == "lengths":  # a row with no real key at all when batch > 1
        return {"kv_lengths": jnp.asarray([tk // 2 + 1] + [0] * (batch - 1), jnp.int32)}
    mask = np.random.default_rng(seed).random((batch, tk)) < 0.6
    mask[-1] = False  # and an all-padded row
    return {"kv_mask": jnp.asarray(mask)}


@pytest.mark.parametrize("batch, tq, tk, heads, dim, block_sizes, padding", BLOCKWISE_CASES)
def test_blockwise_matches_reference(batch, tq, tk, heads, dim, block_sizes, padding):
    q, k, v, w = _inputs(batch, tq, tk, heads, dim)
    kwargs = _padding(padding, batch, tk)
    _assert_matches_reference("blockwise", q, k, v, w, atol=2e-5, block_sizes=block_sizes, **kwargs)


# (batch, tq, tk, heads, dim, chunk_bytes, padding): one pass, one (batch, head) row
# per chunk, and chunks of a divisor of batch * heads (3 rows of 6) across the batch.
DENSE_CASES = [
    (2, 33, 33, 3, 16, None, "mask"),
    (2, 33, 33, 3, 16, 1, "lengths"),
    (2, 33, 20, 3, 16, 3 * 33 * 20 * 4, "mask"),
    (3, 20, 45, 2, 8, 2 * 20 * 45 * 4 + 1, None),
    (2, 33, 33, 2, 48, None, "lengths"),  # wide heads: autodiff backward
]


def _dense_value_and_grads(q, k, v, w, key_mask, chunk_bytes):
    def loss(q, k, v):
        out = dense_attention(q, k, v, key_mask, q.shape[-1] ** -0.5, chunk_bytes=chunk_bytes)
        return jnp.sum(out * w), out

    return jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)


@pytest.mark.parametrize("batch, tq, tk, heads, dim, chunk_bytes, padding", DENSE_CASES)
def test_dense_matches_reference(batch, tq, tk, heads, dim, chunk_bytes, padding):
    q, k, v, w = _inputs(batch, tq, tk, heads, dim)
    padding = _padding(padding, batch, tk)
    key_mask = None
    if "kv_lengths" in padding:
        key_mask = jnp.arange(tk)[None, :] < padding["kv_lengths"][:, None]
    elif "kv_mask" in padding:
        key_mask = padding["kv_mask"]
    run = jax.jit(functools.partial(_dense_value_and_grads, chunk_bytes=chunk_bytes))
    (_, out), grads = run(q, k, v, w, key_mask)
    ref_out, ref_grads = _value_and_grads("reference", q, k, v, w, **padding)
    np.testing.assert_allclose(out, ref_out, atol=2e-5, rtol=1e-5, err_msg="output")
    for name, g, ref in zip("qkv", grads, ref_grads, strict=True):
        np.testing.assert_allclose(g, ref, atol=2e-5, rtol=1e-5, err_msg=f"d{name}")
    # The chunked forwards really run as a loop over chunks; the others in one pass
    # (the backward is blockwise's, a loop over tiles either way).
    forward = functools.partial(dense_attention, scale=dim**-0.5, chunk_bytes=chunk_bytes)
    jaxpr = str(jax.make_jaxpr(forward)(q, k, v, key_mask))
    chunked = chunk_bytes is not None and chunk_bytes < batch * heads * tq * tk * 4
    assert ("scan" in jaxpr) == chunked
    # Narrow heads take the tiled backward (a custom VJP), wide ones autodiff.
    tiled = dim <= attention_module._DENSE_TILED_BACKWARD_MAX_DIM
    assert ("custom_vjp_call" in jaxpr) == tiled


def test_dense_chunks_only_large_logits():
    def loops(batch, length):
        q = jnp.zeros((batch, length, 12, 64))
        jaxpr = str(jax.make_jaxpr(lambda q: attention(q, q, q, implementation="dense"))(q))
        return "scan" in jaxpr

    assert not loops(16, 128)  # 12 MiB of logits: one pass
    assert loops(8, 257)  # 24 MiB: cache-sized chunks


@pytest.mark.parametrize("implementation", ["reference", "dense", "xla", "blockwise"])
def test_fully_padded_rows_give_zeros_and_zero_gradient(implementation):
    q, k, v, w = _inputs(2, 128, 128, 2, 16)
    lengths = jnp.asarray([0, 5])
    out, (dq, dk, dv) = _value_and_grads(implementation, q, k, v, w, kv_lengths=lengths)
    assert bool(jnp.all(out[0] == 0)) and bool(jnp.any(out[1] != 0))
    assert bool(jnp.all(dq[0] == 0)) and bool(jnp.all(dk[0] == 0)) and bool(jnp.all(dv[0] == 0))
    # Keys past the length get no gradient; real ones do.
    assert bool(jnp.all(dk[1, 5:] == 0)) and bool(jnp.all(dv[1, 5:] == 0))
    assert bool(jnp.any(dv[1, :5] != 0))


def test_xla_matches_reference_with_mask():
    q, k, v, w = _inputs(2, 128, 128, 2, 16)
    _assert_matches_reference("xla", q, k, v, w, atol=2e-5, **_padding("mask", 2, 128))


def test_bf16_blockwise_runs_in_bf16_and_is_close():
    q, k, v, w = _inputs(2, 300, 300, 2, 32, dtype=jnp.bfloat16)
    lengths = jnp.asarray([300, 123])
    out, grads = _value_and_grads(
        "blockwise", q, k, v, w, kv_lengths=lengths, block_sizes=BlockSizes(block_q=64, block_k=128)
    )
    assert out.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in grads)
    f32 = [x.astype(jnp.float32) for x in (q, k, v)]
    ref_out, ref_grads = _value_and_grads("reference", *f32, w, kv_lengths=lengths)
    np.testing.assert_allclose(out.astype(jnp.float32), ref_out, atol=3e-2, rtol=3e-2)
    for g, ref in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(g.astype(jnp.float32), ref, atol=6e-2, rtol=6e-2)


def test_scale_is_applied():
    q, k, v, w = _inputs(2, 128, 128, 2, 16)
    _assert_matches_reference("blockwise", q, k, v, w, atol=2e-5, scale=0.05)
    default, _ = _value_and_grads("reference", q, k, v, w)
    scaled, _ = _value_and_grads("reference", q, k, v, w, scale=0.05)
    assert not np.allclose(default, scaled, atol=1e-3)


@pytest.mark.parametrize(
    "mesh_shape, names, axis_type",
    [((8,), ("seq",), AxisType.Explicit), ((2, 4), ("data", "seq"), AxisType.Auto)],
)
def test_ring_matches_reference_on_8_devices(mesh_shape, names, axis_type):
    assert jax.device_count() == 8, "conftest sets 8 host devices"
    # 100 is not a multiple of 8 devices nor of the block: both paddings are exercised.
    q, k, v, w = _inputs(2, 100, 100, 2, 8)
    mesh = jax.make_mesh(mesh_shape, names, axis_types=(axis_type,) * len(names))
    blocks = BlockSizes(block_q=8, block_k=8)
    for padding in ({"kv_lengths": jnp.asarray([0, 37])}, _padding("mask", 2, 100)):
        with jax.set_mesh(mesh):
            out, grads = _value_and_grads("ring", q, k, v, w, block_sizes=blocks, **padding)
        ref_out, ref_grads = _value_and_grads("reference", q, k, v, w, **padding)
        np.testing.assert_allclose(out, ref_out, atol=2e-5, rtol=1e-5)
        for name, g, ref in zip("qkv", grads, ref_grads, strict=True):
            np.testing.assert_allclose(g, ref, atol=2e-5, rtol=1e-5, err_msg=f"d{name}")


def test_ring_without_seq_axis_is_an_error():
    q, k, v, _ = _inputs(1, 16, 16, 1, 8)
    with pytest.raises(ValueError, match="'seq' axis"):
        attention(q, k, v, implementation="ring")


def test_blockwise_training_memory_is_linear_in_length():
    # Compile only: the gradient's temporaries at T=16384 must be far below the
    # 1 GiB one [T, T] float32 logits matrix (per head) would take.
    t = 16384
    x = jax.ShapeDtypeStruct((1, t, 1, 8), jnp.float32)

    def loss(q, k, v):
        return jnp.sum(attention(q, k, v, implementation="blockwise"))

    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(x, x, x).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    assert temp < 64 * 2**20, f"blockwise gradient temporaries {temp / 2**20:.0f} MiB"


def test_automatic_selection_on_cpu():
    short = jnp.zeros((1, 128, 2, 8))
    long = jnp.zeros((1, 1024, 2, 8))
    assert select_implementation(short, short) == "dense"
    assert select_implementation(long, long) == "blockwise"
    q, k, v, w = _inputs(2, 128, 128, 2, 16)
    automatic, _ = _value_and_grads(None, q, k, v, w)
    np.testing.assert_allclose(automatic, reference_attention(q, k, v, None, 16**-0.5), atol=2e-5)


def test_errors_name_the_problem():
    q, k, v, _ = _inputs(2, 16, 16, 2, 8)
    with pytest.raises(ValueError, match="expected q"):
        attention(q[0], k, v)
    with pytest.raises(ValueError, match="expected q"):
        attention(q, k[..., :4], v)
    with pytest.raises(ValueError, match="expected q"):
        attention(q, k, v[:, :8])
    with pytest.raises(ValueError, match="unknown attention implementation 'flash'"):
        attention(q, k, v, implementation="flash")
    with pytest.raises(ValueError, match="not both"):
        attention(q, k, v, kv_lengths=jnp.asarray([1, 2]), kv_mask=jnp.ones((2, 16), bool))
    with pytest.raises(ValueError, match=r"kv_mask shape \(2, 15\)"):
        attention(q, k, v, kv_mask=jnp.ones((2, 15), bool))
    with pytest.raises(ValueError, match=r"kv_lengths shape \(3,\)"):
        attention(q, k, v, kv_lengths=jnp.asarray([1, 2, 3]))
    with pytest.raises(ValueError, match="needs a GPU"):
        attention(q.astype(jnp.bfloat16), k, v, implementation="cudnn")
    with pytest.raises(ValueError, match="block_sizes applies"):
        attention(q, k, v, implementation="xla", block_sizes=BlockSizes())
    with pytest.raises(ValueError, match="block_k must be a positive int"):
        BlockSizes(block_k=0)
    with pytest.raises(ValueError, match="block_rows must be a positive int"):
        BlockSizes(block_rows=0)


def test_compacted_keys_with_lengths_equal_the_mask():
    # The cuDNN path turns any key mask into lengths this way; checked here with XLA's
    # lengths-padding so it runs without a GPU.
    q, k, v, _ = _inputs(2, 24, 40, 2, 8)
    mask = jnp.asarray(_padding("mask", 2, 40)["kv_mask"]).at[-1, 7].set(True)

    @jax.jit
    def compacted_and_reference(q, k, v, mask):
        k_c, v_c, lengths = compact_keys(k, v, mask)
        out = jax.nn.dot_product_attention(
            q, k_c, v_c, key_value_seq_lengths=lengths, implementation="xla"
        )
        return out, lengths, reference_attention(q, k, v, mask, 8**-0.5)

    out, lengths, ref = compacted_and_reference(q, k, v, mask)
    np.testing.assert_array_equal(lengths, mask.sum(axis=1))
    np.testing.assert_allclose(out, ref, atol=2e-5)


@pytest.mark.parametrize("tq, tk, lengths", [(7, 7, [7, 3]), (6, 9, None), (9, 6, [2, 6])])
def test_odd_lengths_are_padded_to_even_without_changing_the_result(tq, tk, lengths):
    # The cuDNN path goes through this padding; checked with XLA's lengths-padding so
    # it runs without a GPU: values and gradients as without padding, and the padded
    # query row and key never show.
    q, k, v, w = _inputs(2, tq, tk, 2, 8)
    lengths = None if lengths is None else jnp.asarray(lengths, jnp.int32)
    mask = None if lengths is None else jnp.arange(tk)[None, :] < lengths[:, None]

    def loss(attend, q, k, v):
        out = attend(q, k, v)
        return jnp.sum(out * w), out

    def padded(q, k, v):
        return length_masked_attention(q, k, v, lengths, scale=8**-0.5, implementation="xla")

    def reference(q, k, v):
        return reference_attention(q, k, v, mask, 8**-0.5)

    results = [
        jax.jit(jax.value_and_grad(functools.partial(loss, attend), (0, 1, 2), has_aux=True))(
            q, k, v
        )
        for attend in (padded, reference)
    ]
    ((_, out), grads), ((_, ref_out), ref_grads) = results
    assert out.shape == (2, tq, 2, 8)
    np.testing.assert_allclose(out, ref_out, atol=2e-5)
    for g, ref in zip(grads, ref_grads, strict=True):
        assert g.shape == ref.shape
        np.testing.assert_allclose(g, ref, atol=2e-5)
