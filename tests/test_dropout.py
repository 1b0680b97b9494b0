"""The hashed dropout: rate, independence across elements, calls and keys, sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from hemo_jax.models.dropout import Dropout, keep_mask


def _binomial_ok(count: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(count - n * p) <= sigmas * np.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_drop_fraction_matches_rate(rate):
    mask = np.asarray(keep_mask(jax.random.key(3), (64, 4096), rate))
    assert _binomial_ok(int((~mask).sum()), mask.size, rate)


def test_no_structure_along_any_axis():
    """Every row and every column drops at the rate (a chi-square over the bins), and
    neighbouring elements are uncorrelated: an index-linear hash would fail both."""
    rate = 0.3
    mask = ~np.asarray(keep_mask(jax.random.key(0), (256, 512), rate))
    for counts, n in ((mask.sum(axis=1), 512), (mask.sum(axis=0), 256)):
        chi2 = np.sum((counts - n * rate) ** 2 / (n * rate * (1 - rate)))
        dof = counts.size
        assert abs(chi2 - dof) < 6 * np.sqrt(2 * dof), (chi2, dof)
    flat = mask.reshape(-1).astype(np.float64)
    for lag in (1, 2, 8, 512):
        assert abs(np.corrcoef(flat[:-lag], flat[lag:])[0, 1]) < 0.02, lag


def test_masks_depend_on_the_key_and_only_on_it():
    shape = (32, 1000)
    a = np.asarray(keep_mask(jax.random.key(1), shape, 0.5))
    again = np.asarray(keep_mask(jax.random.key(1), shape, 0.5))
    other = np.asarray(keep_mask(jax.random.key(2), shape, 0.5))
    folded = np.asarray(keep_mask(jax.random.fold_in(jax.random.key(1), 1), shape, 0.5))
    np.testing.assert_array_equal(a, again)
    for b in (other, folded):
        # Independent masks at rate 0.5 agree on half the elements.
        assert _binomial_ok(int((a == b).sum()), a.size, 0.5)


def test_rbg_keys_work_too():
    key = jax.random.key(0, impl="rbg")
    mask = np.asarray(keep_mask(key, (128, 1024), 0.25))
    assert _binomial_ok(int((~mask).sum()), mask.size, 0.25)


def test_module_scales_kept_elements_and_is_identity_when_deterministic():
    rate = 0.2
    drop = Dropout(rate, rngs=nnx.Rngs(dropout=0))
    x = jnp.arange(1, 4097, dtype=jnp.float32).reshape(64, 64)
    np.testing.assert_array_equal(drop(x, deterministic=True), x)
    y = np.asarray(drop(x, deterministic=False))
    kept = y != 0
    np.testing.assert_allclose(y[kept], np.asarray(x)[kept] / (1 - rate), rtol=1e-6)
    assert _binomial_ok(int((~kept).sum()), x.size, rate)


def test_each_call_draws_a_new_mask_and_reseed_repeats_them():
    drop = Dropout(0.5, rngs=nnx.Rngs(dropout=0))
    x = jnp.ones((64, 256))
    first, second = (np.asarray(drop(x, deterministic=False)) != 0 for _ in range(2))
    assert _binomial_ok(int((first == second).sum()), first.size, 0.5)
    nnx.reseed(drop, dropout=7)
    a = np.asarray(drop(x, deterministic=False))
    nnx.reseed(drop, dropout=7)
    np.testing.assert_array_equal(np.asarray(drop(x, deterministic=False)), a)


def test_gradient_is_the_scaled_mask():
    rate = 0.4
    drop = Dropout(rate, rngs=nnx.Rngs(dropout=5))
    x = jnp.linspace(-1.0, 1.0, 2048, dtype=jnp.float32)
    nnx.reseed(drop, dropout=9)
    loss = lambda v, d: jnp.sum(d(v, deterministic=False))  # noqa: E731
    grad = np.asarray(nnx.grad(loss, argnums=0)(x, drop))
    nnx.reseed(drop, dropout=9)
    kept = np.asarray(drop(x, deterministic=False)) != 0
    np.testing.assert_allclose(grad, kept / (1 - rate), rtol=1e-6)


def test_bfloat16_stays_bfloat16():
    drop = Dropout(0.1, rngs=nnx.Rngs(dropout=0))
    assert drop(jnp.ones((8, 8), jnp.bfloat16), deterministic=False).dtype == jnp.bfloat16


def test_mask_is_the_same_under_sharding():
    devices = np.array(jax.devices()[:8]).reshape(4, 2)
    mesh = jax.sharding.Mesh(devices, ("data", "model"))
    key = jax.random.key(11)
    want = np.asarray(keep_mask(key, (16, 64, 10), 0.3))
    x = jax.device_put(jnp.ones((16, 64, 10)), NamedSharding(mesh, PartitionSpec("data", "model")))
    got = jax.jit(lambda v, k: keep_mask(k, v.shape, 0.3) & (v > 0))(x, key)
    assert got.sharding.spec[:2] == ("data", "model")
    np.testing.assert_array_equal(np.asarray(got), want)


@pytest.mark.parametrize("rate", [-0.1, 1.0])
def test_rates_outside_zero_to_one_are_refused(rate):
    with pytest.raises(ValueError, match="dropout rate"):
        Dropout(rate, rngs=nnx.Rngs(dropout=0))
    with pytest.raises(ValueError, match="dropout rate"):
        keep_mask(jax.random.key(0), (4,), rate)
