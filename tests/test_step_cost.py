"""The analytic cost of the fused train step (benchmarks/flops.py) against the model
itself: its parameter count, and XLA's own FLOP count of the compiled forward and
backward of its parts on small CPU shapes.

XLA counts every operation, the analytic model matrix products only, so XLA's count
must lie a little above it: within [1.00, 1.06] for a Transformer encoder at these
shapes (softmax, LayerNorm and GELU add 2-4%) and [1.00, 1.10] for a keypoint stream
(narrow rows: more elementwise work per product). Counting attention's backward wrong
(four products for a recomputing kernel, five for autodiff) moves the ratio out of
the band by 5-12%, and so would a missing layer.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import flops  # noqa: E402

from configs import demo  # noqa: E402
from hemo_jax.experiment import model as experiment_model  # noqa: E402
from hemo_jax.models.keypoints import STREAMS, KeypointConfig, StreamBackbone  # noqa: E402
from hemo_jax.models.transformer import TransformerConfig, TransformerEncoder  # noqa: E402


def xla_flops(fn, *args) -> float:
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    return (cost[0] if isinstance(cost, list) else cost)["flops"]


def shapes(**kw) -> flops.Shapes:
    base = dict(batch=1, frames=1, images=1, tokens=1, width=64, depth=1, heads=1, mlp=256,
                channels=32, joint_depth=1, stream_width=64, image_dim=8, vocab=8,
                compute_bytes=4)  # fmt: skip
    return flops.Shapes(**{**base, **kw})


def test_parameter_count_is_the_models():
    config = demo.get_config("fused")
    config.model.width, config.model.heads, config.model.mlp_ratio = 96, 3, 2
    model = experiment_model.model_fn(config, text_encoder=None)(jax.random.key(0))
    real = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert flops.param_count(flops.Shapes.of(config))["total"] == real


@pytest.mark.parametrize(
    ("implementation", "backward_products"), [("reference", 4), ("blockwise", 5)]
)
def test_encoder_flops_match_xla(implementation, backward_products):
    tokens, width = 512, 64
    cfg = TransformerConfig(width=width, depth=1, heads=1, dropout=0.0, attention=implementation)
    model = TransformerEncoder(cfg, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (1, tokens, width))
    mask = jnp.ones((1, tokens), bool)

    def loss(model, x):
        _, aux = model(x, mask, deterministic=True)
        return jnp.sum(aux["tokens"] ** 2)

    xla = xla_flops(lambda m, x: nnx.grad(loss, argnums=(0, 1))(m, x), model, x)
    s = shapes(width=width, mlp=4 * width)
    dense, attn = flops.encoder_dense(s, tokens), flops.encoder_attention(s, tokens)
    ratios = {n: xla / (3 * dense + attn + attn * n / 2) for n in (4, 5)}
    assert 1.0 <= ratios[backward_products] <= 1.06, ratios
    other = 9 - backward_products
    assert not 1.0 <= ratios[other] <= 1.06, ratios  # the check tells the two apart


def test_keypoint_stream_flops_match_xla():
    frames, channels = 32, 64
    joints, edges = STREAMS["face"]
    cfg = KeypointConfig(channels=channels, depth=1, stream_width=64, dropout=0.0)
    stream = StreamBackbone(joints, edges, cfg, rngs=nnx.Rngs(0))
    feats = jax.random.normal(jax.random.key(0), (1, frames, joints, flops.JOINT_FEATURES))

    def loss(stream, feats):
        return jnp.sum(stream(feats, deterministic=True) ** 2)

    xla = xla_flops(lambda m, f: nnx.grad(loss)(m, f), stream, feats)
    total, embed = flops.stream_dense(shapes(channels=channels, stream_width=64), joints)
    assert 1.0 <= xla / (frames * (3 * total - embed)) <= 1.10


def test_train_flops_add_up_and_remat_costs_one_more_forward():
    s = flops.Shapes.of(flops.gpu_config(4096))
    plain, remat = flops.train_flops(s), flops.train_flops(s, remat=True)
    fwd = plain["forward"]
    assert plain["model"]["total"] == 3 * fwd["total"]
    assert plain["executed"]["attention"] == fwd["attention"] * 7 // 2
    extra = remat["executed"]["total"] - plain["executed"]["total"]
    parts = flops.forward_flops(s)
    assert extra == fwd["attention"] + parts["transformers"]["dense"] + parts[
        "keypoint_streams"]["dense"]  # fmt: skip
    # Attention grows with the square of the length, the dense layers linearly.
    s4 = flops.Shapes.of(flops.gpu_config(4 * 4096))
    four = flops.forward_flops(s4)["transformers"]["attention"]
    assert four > 15 * parts["transformers"]["attention"]


def test_remat_shrinks_activations_and_lengthens_the_longest_sequence():
    config = flops.gpu_config(16384)
    mem = flops.memory_bytes(flops.Shapes.of(config))
    assert mem["activations_remat"]["total"] < 0.6 * mem["activations"]["total"]
    assert mem["total"] - mem["activations"]["total"] == mem["state"]["total"]
    plain = flops.longest_frames(config, 40e9, remat=False)
    longer = flops.longest_frames(config, 40e9, remat=True)
    assert 0 < plain < longer
    config.data.max_frames = plain + 1024
    assert flops.memory_bytes(flops.Shapes.of(config))["total"] > 40e9
