"""The optimizer's per-parameter learning-rate scale (stage 2's pretrained branches)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from configs import finetune, pretrain
from hemo_jax.experiment.experiment import Experiment
from hemo_jax.training import trainer


class TwoParts(nnx.Module):
    def __init__(self):
        self.branches = nnx.Dict({"text": nnx.Linear(3, 4, rngs=nnx.Rngs(0))})
        self.fusion = nnx.Linear(4, 2, rngs=nnx.Rngs(1))

    def __call__(self, x):
        return self.fusion(self.branches["text"](x))


def _updates(tx=None, **kw) -> dict[str, np.ndarray]:
    """Parameter change after two steps of the same loss, by path. The schedule's
    learning rate is 0 at the first step, so both runs take the second step from the
    same parameters with the same gradients and Adam moments."""
    model = TwoParts()
    before = {k: np.array(v) for k, v in _flat(model).items()}
    tx = tx or trainer.make_optimizer(
        lr=1e-2, warmup_steps=1, total_steps=10, weight_decay=0.1, clip_norm=1.0, **kw
    )
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    x = jnp.arange(6.0).reshape(2, 3)
    for _ in range(2):
        grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(model)
        opt.update(model, grads)
    return {k: np.array(v) - before[k] for k, v in _flat(model).items()}


def _flat(model: nnx.Module) -> dict[str, jax.Array]:
    leaves = jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]
    return {trainer.param_path(path): value for path, value in leaves}


def test_scaled_parameters_move_by_the_scale_and_the_others_as_before():
    plain = _updates()
    scaled = _updates(lr_scale=0.25, lr_scaled=lambda path: path.startswith("branches/"))
    assert set(plain) == {
        "branches/text/kernel",
        "branches/text/bias",
        "fusion/kernel",
        "fusion/bias",
    }
    for path in plain:
        assert np.abs(plain[path]).max() > 0, path
    # Each update is the difference of two float32 parameters near 1: a few 1e-5 of it.
    for path in ("branches/text/kernel", "branches/text/bias"):
        np.testing.assert_allclose(scaled[path], 0.25 * plain[path], rtol=1e-3)
    for path in ("fusion/kernel", "fusion/bias"):
        np.testing.assert_allclose(scaled[path], plain[path], rtol=1e-3)


def test_stage2_scales_only_what_it_loads_from_stage1():
    config = finetune.get_config()
    loaded = Experiment.from_config(config).init.stage1_loaded
    assert loaded("branches/keypoints/encoder/blocks/0/attn/qkv/kernel")
    assert loaded("branches/text/encoder/embed/embedding")
    # Stage-1 heads are not loaded (config.init_skip), nor is the fusion: both are new.
    assert not loaded("branches/keypoints/head/linear/kernel")
    assert not loaded("fusion/proj/kernel")


def test_stage1_scales_nothing():
    """optim.init_lr_scale is stage 2's: a stage-1 experiment's optimizer ignores it."""
    config = pretrain.get_config("image")
    config.unlock()
    plain = _updates(tx=Experiment.from_config(config).optimizer)
    config.optim.init_lr_scale = 0.25
    scaled = _updates(tx=Experiment.from_config(config).optimizer)
    assert np.abs(plain["branches/text/kernel"]).max() > 0
    for path in plain:
        np.testing.assert_array_equal(scaled[path], plain[path])
