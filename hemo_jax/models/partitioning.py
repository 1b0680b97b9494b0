"""Logical axis names for parameters and activations, and the one hook that uses them.

Every parameter of the models carries logical axis names in its metadata
(``out_sharding``); activations at block boundaries pass through
``shard_activation``. The trainer maps the names to mesh axes with one rule
table, set with flax's context::

    with jax.set_mesh(mesh), nnx.logical_axis_rules(RULES):
        ...  # nnx.get_partition_spec(state) and every shard_activation use RULES

The same context resolves parameter specs (``nnx.get_partition_spec``) and
activation constraints, so there is a single table. A rule maps a logical name
to a mesh axis name, a tuple of them, or None (replicated).

Parameter names
    embed           model width (Transformer width, branch and fusion width)
    mlp             hidden width of the Transformer and fusion MLPs
    heads, kv       attention heads and head dimension
    vocab           token vocabulary of text encoders
    features        width of an input feature (DINOv2 features, keypoint channels,
                    a text encoder's output before the branch projection)
    classes         logits
    branches        one row per branch (modality embeddings of the fusion)
    joints          skeleton joints; joint_channels, joint_hidden: per-joint widths in
                    the keypoint backbones (small: replicate them, map to None)

Activation names
    batch, seq      batch and sequence (frames, tokens)
    activation_embed
                    the width of activations; separate from ``embed`` so FSDP can
                    shard parameters' ``embed`` without sharding activations' width

``DEFAULT_RULES`` covers all of them for a mesh with axes ("data", "fsdp",
"seq"): data parallel over data x fsdp, parameters' width sharded over fsdp
(FSDP), sequences over seq. An axis of size 1 turns its kind of parallelism off.

Parameters are created unsharded (``eager_sharding=False``), so a model builds
on a laptop with no mesh; the trainer creates the sharded state from
``nnx.get_partition_spec`` under the rules (jit with out_shardings, or
``jax.lax.with_sharding_constraint`` inside the jitted constructor).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import jax
from flax.core import spmd as flax_spmd
from jax.sharding import PartitionSpec

PARAM_AXES = (
    "embed",
    "mlp",
    "heads",
    "kv",
    "vocab",
    "features",
    "classes",
    "branches",
    "joints",
    "joint_channels",
    "joint_hidden",
)
ACTIVATION_AXES = ("batch", "seq", "activation_embed")
LOGICAL_AXES = PARAM_AXES + ACTIVATION_AXES

DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("seq", "seq"),
    ("activation_embed", None),
    ("embed", "fsdp"),
    *((name, None) for name in PARAM_AXES if name != "embed"),
)

# The activation names used at block boundaries of sequence models.
BSE = ("batch", "seq", "activation_embed")


def axes(*names: str | None) -> Mapping[str, Any]:
    """Variable metadata naming a parameter's logical axes, one name per dimension.

    Used as ``nnx.Linear(..., kernel_metadata=axes("embed", "mlp"))``.
    """
    unknown = [n for n in names if n is not None and n not in PARAM_AXES]
    if unknown:
        raise ValueError(f"unknown logical parameter axes {unknown}; known: {PARAM_AXES}")
    return MappingProxyType({"out_sharding": tuple(names), "eager_sharding": False})


def logical_to_mesh(
    names: Sequence[str | None],
    rules: Sequence[tuple[str, Any]],
    mesh_axis_names: Sequence[str],
) -> PartitionSpec:
    """Resolve logical names to a PartitionSpec; every name must have a rule.

    Raises ValueError naming the logical axis that has no rule, a rule that
    names a mesh axis the mesh lacks, or a mesh axis used twice in one spec.
    """
    table = dict(rules)
    spec: list[Any] = []
    used: dict[str, str] = {}
    for name in names:
        if name is None:
            spec.append(None)
            continue
        if name not in table:
            raise ValueError(f"no sharding rule for logical axis {name!r}; rules: {table}")
        target = table[name]
        for axis in (target,) if isinstance(target, str) else (target or ()):
            if axis not in mesh_axis_names:
                raise ValueError(
                    f"rule {name!r} -> {target!r} names mesh axis {axis!r}; "
                    f"the mesh has {tuple(mesh_axis_names)}"
                )
            if axis in used:
                raise ValueError(
                    f"mesh axis {axis!r} used by both {used[axis]!r} and {name!r} in {names}"
                )
            used[axis] = name
        spec.append(target)
    return PartitionSpec(*spec)


def shard_activation(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Constrain ``x`` to the sharding its logical names map to; a no-op without a mesh.

    Active only inside ``jax.set_mesh(mesh)`` with ``nnx.logical_axis_rules(rules)``
    set; otherwise returns ``x`` unchanged, so the models run the same on one device.
    """
    if len(names) != x.ndim:
        raise ValueError(f"{len(names)} axis names {tuple(names)} for an array of shape {x.shape}")
    rules = flax_spmd.get_logical_axis_rules()
    mesh = jax.sharding.get_abstract_mesh()
    if not rules or mesh.empty:
        return x
    spec = logical_to_mesh(names, rules, mesh.axis_names)
    if mesh.are_all_axes_explicit:
        return jax.sharding.reshard(x, spec)
    return jax.lax.with_sharding_constraint(x, spec)
