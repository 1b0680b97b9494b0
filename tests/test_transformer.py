"""The long-sequence Transformer: rotary positions, masking, longer sequences, remat."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hemo_jax.models.transformer import TransformerConfig, TransformerEncoder, apply_rope

# Tests compile many small programs: XLA's cheapest CPU settings (no backend
# optimisation, the classic fusion emitters) compile them about 3x faster.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
fast_jit = functools.partial(jax.jit, compiler_options=FAST_COMPILE)


@functools.partial(fast_jit, static_argnums=0)
def _encode(graphdef, state, x, mask):
    return nnx.merge(graphdef, state)(x, mask, deterministic=True)


def encode(model: TransformerEncoder, x, mask):
    """The encoder's deterministic forward, one compilation per graph and shape."""
    return _encode(*nnx.split(model), x, mask)


def tokens(key: int, batch: int, length: int, width: int = 32) -> jax.Array:
    return jax.random.normal(jax.random.key(key), (batch, length, width))


def test_rope_scores_depend_only_on_relative_position():
    q = jax.random.normal(jax.random.key(0), (1, 6, 2, 16))
    k = jax.random.normal(jax.random.key(1), (1, 6, 2, 16))
    pos = jnp.array([[0, 3, 4, 9, 20, 21]])

    @fast_jit
    def scores(positions):
        return jnp.einsum("bqhd,bkhd->bhqk", apply_rope(q, positions), apply_rope(k, positions))

    np.testing.assert_allclose(scores(pos), scores(pos + 1000), atol=2e-4)
    # ...and they do depend on it: other relative offsets give other scores.
    assert not np.allclose(scores(pos), scores(pos * 2), atol=1e-2)
    # A rotation: norms are kept.
    rotated = fast_jit(apply_rope)(q, pos)
    np.testing.assert_allclose(
        np.linalg.norm(rotated, axis=-1), np.linalg.norm(q, axis=-1), rtol=1e-5
    )


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_padded_positions_do_not_change_the_output(pooling):
    model = TransformerEncoder(TransformerConfig.tiny(pooling=pooling), rngs=nnx.Rngs(0))
    x = tokens(1, 3, 10)
    mask = jnp.arange(10)[None] < jnp.array([[10], [6], [0]])  # the last row: all padding
    garbage = jnp.where(mask[..., None], x, 100.0 * tokens(2, 3, 10))
    pooled, aux = encode(model, x, mask)
    pooled2, aux2 = encode(model, garbage, mask)
    np.testing.assert_allclose(pooled, pooled2, atol=1e-5)
    np.testing.assert_allclose(aux["tokens"][1, :6], aux2["tokens"][1, :6], atol=1e-5)
    # The pooled output does read the valid positions.
    pooled3, _ = encode(model, x.at[1, 0].set(tokens(3, 1, 1)[0, 0]), mask)
    assert not np.allclose(pooled[1], pooled3[1], atol=1e-4)
    assert aux["tokens"].shape == (3, 10, 32) and pooled.shape == (3, 32)
    assert bool(jnp.all(jnp.isfinite(pooled)))
    if pooling == "mean":
        np.testing.assert_array_equal(pooled[2], 0.0)


def test_sequences_longer_than_any_seen_work():
    model = TransformerEncoder(TransformerConfig.tiny(), rngs=nnx.Rngs(0))
    short = tokens(3, 1, 16)
    long = jnp.concatenate([short, tokens(4, 1, 496)], axis=1)
    pooled_short, _ = encode(model, short, jnp.ones((1, 16), bool))
    # The same 16 tokens inside a 512-long padded array: no parameter depends on length.
    pooled_in_long, _ = encode(model, long, jnp.arange(512)[None] < 16)
    np.testing.assert_allclose(pooled_short, pooled_in_long, atol=1e-5)
    pooled_long, aux = encode(model, long, jnp.ones((1, 512), bool))
    assert aux["tokens"].shape == (1, 512, 32) and bool(jnp.all(jnp.isfinite(pooled_long)))


def test_bfloat16_compute_stays_close_to_float32():
    x, mask = tokens(5, 2, 8), jnp.arange(8)[None] < jnp.array([[8], [3]])
    pooled32, _ = encode(TransformerEncoder(TransformerConfig.tiny(), rngs=nnx.Rngs(0)), x, mask)
    model16 = TransformerEncoder(TransformerConfig.tiny(dtype="bfloat16"), rngs=nnx.Rngs(0))
    pooled16, aux = encode(model16, x, mask)
    assert aux["tokens"].dtype == jnp.bfloat16
    assert nnx.state(model16, nnx.Param)["norm"]["scale"][...].dtype == jnp.float32
    np.testing.assert_allclose(pooled16.astype(jnp.float32), pooled32, atol=0.1)


def loss_and_grads(model: TransformerEncoder, x, mask):
    """A loss over the pooled output with dropout on, and its gradients."""
    graphdef, state = nnx.split(model)

    @fast_jit
    def run(state):
        def loss(model):
            pooled, _ = model(x, mask, deterministic=False)
            return jnp.sum(pooled**2)

        return nnx.value_and_grad(loss)(nnx.merge(graphdef, state))

    loss, grads = run(state)
    return loss, jax.tree.leaves(grads)


def test_remat_gives_the_same_output_and_gradients():
    x, mask = tokens(6, 2, 8), jnp.arange(8)[None] < jnp.array([[8], [5]])
    loss_a, grads_a = loss_and_grads(
        TransformerEncoder(TransformerConfig.tiny(dropout=0.2), rngs=nnx.Rngs(0)), x, mask
    )
    loss_b, grads_b = loss_and_grads(
        TransformerEncoder(TransformerConfig.tiny(dropout=0.2, remat=True), rngs=nnx.Rngs(0)),
        x,
        mask,
    )
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-5)
    assert len(grads_a) == len(grads_b) > 0
    for ga, gb in zip(grads_a, grads_b, strict=True):
        np.testing.assert_allclose(ga, gb, rtol=1e-4, atol=1e-6)


def test_attention_implementation_is_passed_through():
    x, mask = tokens(7, 2, 6), jnp.arange(6)[None] < jnp.array([[6], [3]])
    outputs = [
        encode(
            TransformerEncoder(TransformerConfig.tiny(attention=impl), rngs=nnx.Rngs(0)), x, mask
        )
        for impl in ("reference", "xla")
    ]
    np.testing.assert_allclose(outputs[0][0], outputs[1][0], atol=1e-5)
    bogus = TransformerEncoder(TransformerConfig.tiny(attention="bogus"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="bogus"):
        encode(bogus, x, mask)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"width": 30, "heads": 4}, "divisible"),
        ({"width": 24, "heads": 8}, "even"),
        ({"pooling": "max"}, "pooling"),
        ({"dropout": 1.0}, "dropout"),
        ({"dtype": "float33"}, "float33"),
    ],
)
def test_bad_config_is_refused(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        TransformerConfig.tiny(**kwargs)


def test_wrong_token_width_is_refused():
    model = TransformerEncoder(TransformerConfig.tiny(), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="32"):
        model(jnp.zeros((1, 4, 16)), None, deterministic=True)
