"""Fusion modules: both train, masking in cross-attention, branch order, the zero head."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from hemo_jax.models.fusion import FusionConfig, make_fusion

# Tests compile many small programs: XLA's cheapest CPU settings (no backend
# optimisation, the classic fusion emitters) compile them about 3x faster.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
fast_jit = functools.partial(jax.jit, compiler_options=FAST_COMPILE)
B = 8
WIDTHS = {"keypoints": 12, "image": 8}
LENGTHS = {"keypoints": 5, "image": 3}


def branch_outputs(seed: int) -> dict[str, dict[str, jax.Array]]:
    """What branches hand the fusion: pooled, tokens and their mask."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, width in WIDTHS.items():
        length = LENGTHS[name]
        valid = rng.integers(1, length + 1, size=B)
        out[name] = {
            "pooled": jnp.asarray(rng.normal(size=(B, width)), jnp.float32),
            "tokens": jnp.asarray(rng.normal(size=(B, length, width)), jnp.float32),
            "mask": jnp.asarray(np.arange(length)[None] < valid[:, None]),
        }
    return out


@functools.partial(fast_jit, static_argnums=0)
def _apply(graphdef, state, branch_aux):
    return nnx.merge(graphdef, state)(branch_aux, deterministic=True)


def apply(fusion, branch_aux):
    return _apply(*nnx.split(fusion), branch_aux)


@pytest.mark.parametrize("kind", ["concat", "cross_attention"])
def test_fusion_trains(kind):
    fusion = make_fusion(kind, WIDTHS, FusionConfig.tiny(dropout=0.1), rngs=nnx.Rngs(0))
    inputs = branch_outputs(0)
    # A label the branches carry between them: the sign of a sum over both.
    labels = (inputs["keypoints"]["pooled"][:, 0] + inputs["image"]["pooled"][:, 0] > 0).astype(int)
    opt = nnx.Optimizer(fusion, optax.adamw(1e-2), wrt=nnx.Param)
    graphdef, state = nnx.split((fusion, opt))

    @fast_jit
    def step(state):
        fusion, opt = nnx.merge(graphdef, state)

        def loss_fn(fusion):
            logits, aux = fusion(inputs, deterministic=False)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, (logits, aux["pooled"])

        (loss, (logits, pooled)), grads = nnx.value_and_grad(loss_fn, has_aux=True)(fusion)
        opt.update(fusion, grads)
        return loss, logits, pooled, nnx.state((fusion, opt))

    losses = []
    for _ in range(10):
        loss, logits, pooled, state = step(state)
        losses.append(float(loss))
    assert logits.shape == (B, 2) and pooled.shape == (B, 16)
    assert losses[0] == pytest.approx(np.log(2), abs=1e-5)  # the zero-initialised head
    assert losses[-1] < 0.5 * losses[0], losses


def test_cross_attention_ignores_padded_tokens_and_reads_real_ones():
    fusion = make_fusion("cross_attention", WIDTHS, FusionConfig.tiny(), rngs=nnx.Rngs(0))
    inputs = branch_outputs(1)
    changed = jax.tree.map(lambda x: x, inputs)
    for aux in changed.values():
        aux["tokens"] = jnp.where(aux["mask"][..., None], aux["tokens"], 1e3)
    _, fused = apply(fusion, inputs)
    _, fused2 = apply(fusion, changed)
    np.testing.assert_allclose(fused["pooled"], fused2["pooled"], atol=1e-5)
    changed["image"]["tokens"] = changed["image"]["tokens"].at[:, 0].multiply(-1.0)
    _, fused3 = apply(fusion, changed)  # the first token of every row is real
    assert not np.allclose(fused["pooled"], fused3["pooled"], atol=1e-4)


@pytest.mark.parametrize("kind", ["concat", "cross_attention"])
def test_branch_order_does_not_matter_and_missing_branches_are_named(kind):
    fusion = make_fusion(kind, WIDTHS, FusionConfig.tiny(), rngs=nnx.Rngs(0))
    inputs = branch_outputs(2)
    reordered = {name: inputs[name] for name in reversed(list(inputs))}
    np.testing.assert_allclose(
        apply(fusion, inputs)[1]["pooled"], apply(fusion, reordered)[1]["pooled"], atol=1e-6
    )
    with pytest.raises(KeyError, match="image"):
        fusion({"keypoints": inputs["keypoints"]}, deterministic=True)


def test_unknown_fusion_is_refused():
    with pytest.raises(ValueError, match="gated"):
        make_fusion("gated", WIDTHS, FusionConfig.tiny(), rngs=nnx.Rngs(0))
