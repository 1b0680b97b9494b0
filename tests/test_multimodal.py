"""The multimodal classifier: end-to-end training, stage-1 -> stage-2 loading, text encoders."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from hemo_jax.models.bert import BertConfig, BertModel
from hemo_jax.models.fusion import FusionConfig
from hemo_jax.models.keypoints import KeypointBranch, KeypointConfig
from hemo_jax.models.multimodal import (
    ImageBranch,
    ImageConfig,
    MultimodalClassifier,
    TextBranch,
    TextConfig,
    TransformerTextEncoder,
)
from hemo_jax.models.partitioning import DEFAULT_RULES, PARAM_AXES
from hemo_jax.models.transformer import TransformerConfig

# Tests compile many small programs: XLA's cheapest CPU settings (no backend
# optimisation, the classic fusion emitters) compile them about 3x faster.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
fast_jit = functools.partial(jax.jit, compiler_options=FAST_COMPILE)
B, VOCAB = 4, 50


def make_batch(seed: int = 0) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    return {
        "image_features": jnp.asarray(rng.normal(size=(B, 5, 12)), jnp.float32),
        "image_mask": jnp.asarray(np.arange(5)[None] < np.array([[5], [3], [4], [1]])),
        "text_ids": jnp.asarray(rng.integers(1, VOCAB, size=(B, 7)), jnp.int32),
        "text_mask": jnp.asarray(np.arange(7)[None] < np.array([[7], [2], [5], [6]])),
    }


def image_branch(seed: int) -> ImageBranch:
    return ImageBranch(ImageConfig.tiny(), rngs=nnx.Rngs(seed))


def text_branch(seed: int) -> TextBranch:
    rngs = nnx.Rngs(seed)
    encoder = TransformerTextEncoder(VOCAB, TransformerConfig.tiny(depth=1, dropout=0.1), rngs=rngs)
    return TextBranch(encoder, 32, TextConfig(width=16, dropout=0.0), rngs=rngs)


@functools.partial(fast_jit, static_argnums=0)
def _apply(graphdef, state, batch):
    return nnx.merge(graphdef, state)(batch, deterministic=True)


def apply(model, batch):
    return _apply(*nnx.split(model), batch)


def test_classifier_trains_end_to_end_through_every_branch():
    model = MultimodalClassifier(
        {"image": image_branch(0), "text": text_branch(1)},
        "cross_attention",
        FusionConfig.tiny(),
        rngs=nnx.Rngs(2),
    )
    before = nnx.clone(nnx.state(model, nnx.Param))
    batch, labels = make_batch(), jnp.array([1, 0, 0, 1])
    opt = nnx.Optimizer(model, optax.adamw(1e-2), wrt=nnx.Param)
    graphdef, state = nnx.split((model, opt))

    @fast_jit
    def step(state):
        model, opt = nnx.merge(graphdef, state)

        def loss_fn(model):
            logits, aux = model(batch, deterministic=False)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, (logits, aux)

        (loss, outputs), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        opt.update(model, grads)
        return loss, outputs, nnx.state((model, opt))

    losses = []
    for _ in range(10):
        loss, (logits, aux), state = step(state)
        losses.append(float(loss))
    assert logits.shape == (B, 2)
    assert {k: v.shape for k, v in aux["branch_logits"].items()} == {
        "image": (B, 2),
        "text": (B, 2),
    }
    assert {k: v.shape for k, v in aux["branch_pooled"].items()} == {
        "image": (B, 32),
        "text": (B, 16),
    }
    assert losses[-1] < 0.5 * losses[0], losses
    # The fused loss trains the branches' encoders too, not only the fusion.
    model, _ = nnx.merge(graphdef, state)
    after = nnx.state(model, nnx.Param)
    for branch in ("image", "text"):
        old = before["branches"][branch]["encoder"]
        new = after["branches"][branch]["encoder"]
        changed = [
            not np.allclose(a, b)
            for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(new), strict=True)
        ]
        assert sum(changed) > len(changed) // 2, branch


def test_stage_one_parameters_load_into_stage_two_by_name():
    stage1 = MultimodalClassifier({"image": image_branch(1)}, "none", rngs=nnx.Rngs(0))
    head = stage1.branches["image"].head.linear
    head.kernel[...] = jax.random.normal(jax.random.key(0), head.kernel.shape)  # as if trained
    stage2 = MultimodalClassifier(
        {"image": image_branch(2), "text": text_branch(3)}, "concat", FusionConfig.tiny(),
        rngs=nnx.Rngs(4),
    )  # fmt: skip
    params1 = nnx.state(stage1, nnx.Param)
    shapes2 = {path: v.shape for path, v in nnx.to_flat_state(nnx.state(stage2, nnx.Param))}
    flat1 = list(nnx.to_flat_state(params1))
    assert all(path[:2] == ("branches", "image") for path, _ in flat1)
    assert all(shapes2[path] == v.shape for path, v in flat1)

    batch = make_batch()
    logits1, aux1 = apply(stage1, batch)
    np.testing.assert_array_equal(logits1, aux1["branch_logits"]["image"])  # fusion "none"
    assert not np.allclose(apply(stage2, batch)[1]["branch_pooled"]["image"], aux1["pooled"])
    nnx.update(stage2, params1)
    _, aux2 = apply(stage2, batch)
    np.testing.assert_allclose(aux2["branch_pooled"]["image"], aux1["pooled"], atol=1e-6)
    np.testing.assert_allclose(aux2["branch_logits"]["image"], logits1, atol=1e-6)


def test_text_branch_runs_on_the_project_bert_and_ignores_padding():
    cfg = BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
        max_position_embeddings=16,
    )  # fmt: skip
    rngs = nnx.Rngs(0)
    branch = TextBranch(BertModel(cfg, rngs=rngs), 16, TextConfig(width=8), rngs=rngs)
    batch = make_batch()
    logits, aux = apply(branch, batch)
    assert logits.shape == (B, 2) and aux["pooled"].shape == (B, 8)
    assert aux["tokens"].shape == (B, 7, 8)
    padded = dict(batch, text_ids=jnp.where(batch["text_mask"], batch["text_ids"], 3))
    np.testing.assert_allclose(apply(branch, padded)[1]["pooled"], aux["pooled"], atol=1e-5)


def test_every_parameter_names_its_logical_axes():
    def build():
        rngs = nnx.Rngs(0)
        branches = {
            "keypoints": KeypointBranch(KeypointConfig.tiny(), rngs=rngs),
            "image": ImageBranch(
                ImageConfig.tiny(transformer=TransformerConfig.tiny(pooling="attention")), rngs=rngs
            ),
            "text": text_branch(1),
        }
        return MultimodalClassifier(branches, "cross_attention", FusionConfig.tiny(), rngs=rngs)

    model = nnx.eval_shape(build)  # abstract: shapes and metadata only
    params = list(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    assert len(params) > 100
    for path, param in params:
        names = param.get_metadata().get("out_sharding")
        assert names is not None and len(names) == len(param.shape), path
        assert set(names) <= set(PARAM_AXES) | {None}, path
    with nnx.logical_axis_rules(DEFAULT_RULES):
        specs = jax.tree.leaves(nnx.get_partition_spec(nnx.state(model, nnx.Param)))
    mesh_axes = {"data", "fsdp", "seq", None}
    for spec in specs:
        assert {axis for axis in spec} <= mesh_axes, spec


def test_bad_compositions_are_refused():
    with pytest.raises(ValueError, match="exactly one branch"):
        MultimodalClassifier(
            {"image": image_branch(0), "text": text_branch(1)}, "none", rngs=nnx.Rngs(0)
        )
    with pytest.raises(ValueError, match="late"):
        MultimodalClassifier({"image": image_branch(0)}, "late", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="num_classes"):
        MultimodalClassifier(
            {"image": image_branch(0)}, "concat", FusionConfig.tiny(num_classes=3), rngs=nnx.Rngs(0)
        )
    with pytest.raises(ValueError, match="at least one"):
        MultimodalClassifier({}, "concat", rngs=nnx.Rngs(0))


def test_missing_batch_keys_are_named():
    model = MultimodalClassifier({"image": image_branch(0)}, "none", rngs=nnx.Rngs(0))
    with pytest.raises(KeyError, match="image_mask"):
        model({"image_features": jnp.zeros((B, 5, 12))}, deterministic=True)
    with pytest.raises(ValueError, match="image_features"):
        model(
            {"image_features": jnp.zeros((B, 5, 7)), "image_mask": jnp.ones((B, 5))},
            deterministic=True,
        )
