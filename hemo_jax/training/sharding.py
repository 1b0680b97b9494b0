"""Device mesh, the one table of logical-axis rules, and multi-host start-up.

Mesh axes: ``data`` (pure data parallel), ``fsdp`` (data parallel whose
parameters and optimizer state are also sharded) and ``seq`` (sequence split,
for ring attention). Model code names axes logically (``embed``, ``mlp``,
``batch``...); LOGICAL_RULES is the only place that maps those names to mesh
axes, for parameters and activations alike.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from hemo_jax.models import partitioning

MESH_AXES = ("data", "fsdp", "seq")
BATCH_AXES = ("data", "fsdp")

# logical name -> mesh axis (or axes), None = replicated. Every logical name the
# models use (hemo_jax.models.partitioning.LOGICAL_AXES) has a rule here.
# Parameters shard their "embed" dimension over fsdp (FSDP; with fsdp=1 it is
# plain data parallel); activations name their width "activation_embed" so a
# batch already split over fsdp does not reuse that axis.
LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", BATCH_AXES),
    ("seq", "seq"),
    ("activation_embed", None),
    ("embed", "fsdp"),
    ("mlp", None),
    ("heads", None),
    ("kv", None),
    ("vocab", None),
    ("features", None),
    ("classes", None),
    ("branches", None),
    ("joints", None),
    ("joint_channels", None),
    ("joint_hidden", None),
)


def maybe_initialize_distributed(enabled: bool | None = None) -> None:
    """Calls ``jax.distributed.initialize()`` for multi-host runs.

    With ``enabled=None`` it initialises when the environment names a cluster
    (TPU VM slices, SLURM, or an explicit JAX_COORDINATOR_ADDRESS); JAX finds
    the coordinator, process count and index from that environment.
    """
    if enabled is None:
        enabled = (
            any(
                k in os.environ
                for k in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "TPU_WORKER_HOSTNAMES")
            )
            and int(os.environ.get("SLURM_NTASKS", "2")) > 1
        )
    if enabled and not jax.distributed.is_initialized():
        if jax.default_backend() == "cpu" or os.environ.get("JAX_PLATFORMS") == "cpu":
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize()
        logging.info(
            "process %d of %d, %d local / %d global devices",
            jax.process_index(),
            jax.process_count(),
            jax.local_device_count(),
            jax.device_count(),
        )


def make_mesh(data: int = -1, fsdp: int = 1, seq: int = 1) -> Mesh:
    """A mesh over all devices; one of the sizes may be -1 (the rest)."""
    sizes = [data, fsdp, seq]
    n = jax.device_count()
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got data={data} fsdp={fsdp} seq={seq}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if n % known:
            raise ValueError(f"{n} devices do not divide into mesh sizes {sizes}")
        sizes[sizes.index(-1)] = n // known
    if math.prod(sizes) != n:
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, sizes, strict=True))} needs "
            f"{math.prod(sizes)} devices, have {n}"
        )
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def _fits(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """Drops sharding on dimensions the mesh does not divide (e.g. a width of 2)."""
    fixed = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=True):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        size = math.prod(mesh.shape[a] for a in names)
        fixed.append(axes if size and dim % size == 0 else None)
    return PartitionSpec(*fixed)


def state_shardings(state: nnx.State, mesh: Mesh) -> Any:
    """NamedShardings for an (abstract) NNX state from its logical axis metadata."""

    def one(leaf: Any) -> NamedSharding:
        # flax keeps logical names from nnx.with_partitioning as "out_sharding".
        names = leaf.get_metadata().get("out_sharding") or ()
        value = leaf.get_value()
        spec = partitioning.logical_to_mesh(tuple(names), LOGICAL_RULES, mesh.axis_names)
        spec = _fits(spec, np.shape(value), mesh)
        return NamedSharding(mesh, spec)

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Batch-major arrays: the leading axis over (data, fsdp), the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def describe(mesh: Mesh) -> str:
    return " ".join(f"{k}={v}" for k, v in mesh.shape.items()) + (
        f" over {mesh.devices.size} {jax.devices()[0].platform} devices, "
        f"{jax.process_count()} process(es)"
    )
