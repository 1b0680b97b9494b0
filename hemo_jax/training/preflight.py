"""Compile the train step ahead of a run, from abstract shapes: does it fit, what does it cost.

Lowers and compiles the step for the target mesh without making a parameter or reading
a batch, then reports what XLA says of the compiled program: its FLOPs and, per device,
the memory of its arguments, outputs and temporaries. A long-sequence config that does
not fit a device fails here, in seconds, rather than after the data is loaded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh

from hemo_jax.training import sharding, trainer


@dataclasses.dataclass(frozen=True)
class Preflight:
    parameters: int
    trainable: int
    flops: float | None  # per step, all devices, as XLA's cost analysis counts them
    memory: Any  # the compiled program's memory analysis (per device), None if unknown
    mesh: str

    def lines(self) -> list[str]:
        gib = 1 << 30
        out = [
            f"mesh: {self.mesh}",
            f"parameters: {self.parameters:,} ({self.trainable:,} trainable)",
            "FLOPs per step: "
            + (f"{self.flops:.4g} ({self.flops / 1e12:.4g} TFLOP)" if self.flops else "unknown"),
        ]
        m = self.memory
        if m is None:
            return [*out, "memory per device: not reported by this backend"]
        fields = {
            "arguments": m.argument_size_in_bytes,
            "outputs": m.output_size_in_bytes,
            "aliased (donated)": m.alias_size_in_bytes,
            "temporaries": m.temp_size_in_bytes,
            "generated code": m.generated_code_size_in_bytes,
        }
        out += [f"memory per device, {name}: {v / gib:.4f} GiB" for name, v in fields.items()]
        # Donated arguments are reused for the outputs, so they count once.
        peak = (
            m.argument_size_in_bytes
            + m.output_size_in_bytes
            - m.alias_size_in_bytes
            + m.temp_size_in_bytes
        )
        out.append(f"memory per device, total: {peak / gib:.4f} GiB")
        return out


def preflight(
    abstract: trainer.TrainState,
    mesh: Mesh,
    batch: Mapping[str, jax.ShapeDtypeStruct],
    *,
    loss_fn: trainer.LossFn,
    options: trainer.StepOptions,
) -> Preflight:
    """Lowers and compiles the train step of ``abstract`` (shapes only) on ``mesh``."""
    step = trainer.make_train_step(abstract, mesh, batch, loss_fn=loss_fn, options=options)
    rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
    compiled = step.lower(abstract.state, dict(batch), rng).compile()
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):  # one entry per program on older jax versions
        cost = cost[0] if cost else None
    model = abstract.model()
    return Preflight(
        parameters=sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))),
        trainable=sum(x.size for x in jax.tree.leaves(nnx.state(model, abstract.trainable))),
        flops=(cost or {}).get("flops"),
        memory=compiled.memory_analysis(),
        mesh=sharding.describe(mesh),
    )
