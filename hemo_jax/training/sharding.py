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

# The one table mapping logical axis names to mesh axes, for parameters and
# activations alike (defined beside the names, in hemo_jax.models.partitioning).
# Parameters shard their "embed" dimension over fsdp (FSDP; with fsdp=1 it is
# plain data parallel); activations name their width "activation_embed" so a
# batch already split over fsdp does not reuse that axis.
LOGICAL_RULES = partitioning.DEFAULT_RULES


# Environment variables a launcher sets on every process of a multi-process job that
# no cluster manager describes (a plain multi-node GPU job, or several processes on
# one machine). SLURM jobs and TPU VM slices need none of them: JAX reads those
# clusters' own environment (or, on TPU, the VM's metadata).
COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"  # host:port of process 0 (read by JAX itself)
NUM_PROCESSES_ENV = "JAX_NUM_PROCESSES"
PROCESS_ID_ENV = "JAX_PROCESS_ID"


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def distributed_requested() -> bool:
    """Whether the environment describes a job of more than one process."""
    if NUM_PROCESSES_ENV in os.environ:
        return (_env_int(NUM_PROCESSES_ENV) or 1) > 1
    if "SLURM_NTASKS" in os.environ:
        return (_env_int("SLURM_NTASKS") or 1) > 1
    return any(k in os.environ for k in (COORDINATOR_ENV, "TPU_WORKER_HOSTNAMES"))


def maybe_initialize_distributed(enabled: bool | None = None) -> None:
    """Calls ``jax.distributed.initialize`` for multi-process runs, before any JAX work.

    One mechanism: the environment, read by JAX. Under SLURM (``srun``, one task
    per GPU or per host) JAX finds the coordinator, process count and index
    itself. Elsewhere, set on every process ``JAX_COORDINATOR_ADDRESS=host:port``
    (process 0's host, a free port), ``JAX_NUM_PROCESSES=N`` and
    ``JAX_PROCESS_ID=i`` (0..N-1). With ``enabled=None`` (config
    ``distributed.initialize=auto``) it initialises when the environment names a
    job of more than one process; True (``yes``, e.g. on a TPU VM slice, whose
    workers JAX discovers from the TPU metadata) always initialises; False never.

    Each process then feeds its own slice of every global batch (the data
    pipeline slices by ``jax.process_index()``). On CPU, processes exchange
    collectives through gloo (``jax_cpu_collectives_implementation``, JAX's default).
    """
    if enabled is None:
        enabled = distributed_requested()
    if not enabled or jax.distributed.is_initialized():
        return
    # Must run before anything touches a JAX backend (jax.devices(), an array...).
    jax.distributed.initialize(
        coordinator_address=os.environ.get(COORDINATOR_ENV) or None,
        num_processes=_env_int(NUM_PROCESSES_ENV),
        process_id=_env_int(PROCESS_ID_ENV),
    )
    logging.info(
        "process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def make_mesh(
    data: int = -1, fsdp: int = 1, seq: int = 1, *, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """A mesh over ``devices`` (default: all, of every process); one size may be -1 (the rest).

    Axes are Auto so that NNX logical partitioning and ``with_sharding_constraint``
    apply inside jit.
    """
    sizes = [data, fsdp, seq]
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got data={data} fsdp={fsdp} seq={seq}")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(
            f"mesh sizes must be positive or -1, got data={data} fsdp={fsdp} seq={seq}"
        )
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
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


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
        f" over {mesh.devices.size} {mesh.devices.flat[0].platform} devices, "
        f"{jax.process_count()} process(es)"
    )
