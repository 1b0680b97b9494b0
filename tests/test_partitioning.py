"""Logical axis names: rule resolution, the activation hook, and a model sharded by them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from hemo_jax.models import partitioning
from hemo_jax.models.partitioning import BSE, DEFAULT_RULES, logical_to_mesh, shard_activation
from hemo_jax.models.transformer import TransformerConfig, TransformerEncoder


def auto_mesh(shape, names):
    return jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(names))


def test_axes_metadata_names_known_axes_only():
    meta = partitioning.axes("embed", None, "mlp")
    assert meta["out_sharding"] == ("embed", None, "mlp") and meta["eager_sharding"] is False
    with pytest.raises(ValueError, match="embd"):
        partitioning.axes("embd")


def test_default_rules_cover_every_logical_axis():
    assert sorted(dict(DEFAULT_RULES)) == sorted(partitioning.LOGICAL_AXES)
    assert len(dict(DEFAULT_RULES)) == len(DEFAULT_RULES)


def test_logical_to_mesh_resolves_and_names_what_is_wrong():
    rules = (("batch", ("data", "fsdp")), ("seq", "seq"), ("activation_embed", None))
    mesh_axes = ("data", "fsdp", "seq")
    assert logical_to_mesh(BSE, rules, mesh_axes) == P(("data", "fsdp"), "seq", None)
    with pytest.raises(ValueError, match="'seq'"):
        logical_to_mesh(BSE, rules[:1], mesh_axes)
    with pytest.raises(ValueError, match="'tensor'"):
        logical_to_mesh(("batch",), (("batch", "tensor"),), mesh_axes)
    with pytest.raises(ValueError, match="'data'.*both"):
        logical_to_mesh(("batch", "seq"), (("batch", "data"), ("seq", "data")), mesh_axes)


def test_shard_activation_is_a_no_op_without_a_mesh_and_rules():
    x = jnp.ones((2, 3, 4))
    assert shard_activation(x, BSE) is x
    with nnx.logical_axis_rules(DEFAULT_RULES):
        assert shard_activation(x, BSE) is x  # rules but no mesh
    with jax.set_mesh(auto_mesh((8,), ("data",))):
        assert shard_activation(x, BSE) is x  # mesh but no rules
    with pytest.raises(ValueError, match="3 axis names"):
        shard_activation(jnp.ones((2, 3)), BSE)


def test_shard_activation_constrains_under_mesh_and_rules():
    mesh = auto_mesh((4, 2), ("data", "seq"))
    rules = (("batch", "data"), ("seq", "seq"), ("activation_embed", None))
    x = jnp.arange(8 * 6 * 4, dtype=jnp.float32).reshape(8, 6, 4)
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
        y = jax.jit(lambda x: shard_activation(x * 2, BSE))(x)
    assert y.sharding.is_equivalent_to(NamedSharding(mesh, P("data", "seq", None)), 3)
    np.testing.assert_array_equal(y, x * 2)


def test_a_model_sharded_by_its_logical_axes_computes_the_same():
    """Data parallel x FSDP x sequence over 8 CPU devices, with DEFAULT_RULES."""
    cfg = TransformerConfig.tiny(depth=1)
    x = jax.random.normal(jax.random.key(0), (4, 8, 32))
    mask = jnp.arange(8)[None] < jnp.array([[8], [5], [8], [2]])
    model = TransformerEncoder(cfg, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    apply = jax.jit(
        lambda state, x, mask: nnx.merge(graphdef, state)(x, mask, deterministic=True),
        compiler_options={
            "xla_backend_optimization_level": 0,
            "xla_cpu_use_fusion_emitters": False,
        },
    )
    expected, _ = apply(state, x, mask)

    mesh = auto_mesh((2, 2, 2), ("data", "fsdp", "seq"))
    with jax.set_mesh(mesh), nnx.logical_axis_rules(DEFAULT_RULES):
        specs = nnx.get_partition_spec(state)
        sharded_state = jax.device_put(state, jax.tree.map(lambda s: NamedSharding(mesh, s), specs))
        batch_sharding = NamedSharding(mesh, P(("data", "fsdp"), "seq"))
        pooled, aux = apply(sharded_state, jax.device_put(x, batch_sharding), mask)
    kernel = sharded_state["blocks"][0]["mlp"]["up"]["kernel"]
    # ("embed", "mlp") -> FSDP over embed; tokens ("batch", "seq", "activation_embed").
    assert kernel.sharding.is_equivalent_to(NamedSharding(mesh, P("fsdp", None)), 2)
    tokens_sharding = NamedSharding(mesh, P(("data", "fsdp"), "seq", None))
    assert aux["tokens"].sharding.is_equivalent_to(tokens_sharding, 3)
    np.testing.assert_allclose(pooled, expected, atol=1e-5)
