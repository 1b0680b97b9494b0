"""Where a run's initial state comes from, in one place.

Resume order: a checkpoint in the workdir, then ``resume`` (another workdir's latest),
then stage-1 branches (stage 2) and pretrained parts copied over a fresh initialisation,
then scratch. A resumed state is restored straight into the abstract state: no random
weights are made only to be overwritten.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import optax
from jax.sharding import Mesh

from hemo_jax.training import checkpoint, trainer


def stage1_rule(skip: Sequence[str]) -> Callable[[str], bool]:
    """Whether a parameter path ("branches/text/encoder/...") is loaded from a stage-1
    checkpoint: every branch parameter, less what a ``skip`` regex matches (the stage-1
    heads). Stage 2's checkpoint merge and its learning-rate scale both use this rule."""
    skipped = [re.compile(p) for p in skip]

    def loaded(path: str) -> bool:
        return path.startswith("branches/") and not any(p.search(path) for p in skipped)

    return loaded


@dataclasses.dataclass(frozen=True)
class InitPlan:
    """Where the initial parameters come from; typed, so training never reads a config."""

    workdir: str
    resume: str = ""  # another workdir whose latest checkpoint to continue from
    # Stage 2: branch -> stage-1 workdir ("" where not given: an error unless resuming).
    stage1: Mapping[str, str] = dataclasses.field(default_factory=dict)
    stage1_loaded: Callable[[str], bool] = stage1_rule(())
    # {path prefix: parameter tree} of pretrained parts, read only when they are used.
    pretrained: Callable[[], Mapping[str, Any]] = dict
    seed: int = 0


@dataclasses.dataclass
class Start:
    state: trainer.TrainState
    step: int
    origin: str  # the workdir resumed, "init_from" or "scratch"


def _stage1_branches(plan: InitPlan, abstract_params: Any) -> dict[str, tuple[str, Any]]:
    """``{branch: (stage-1 workdir, its parameters)}``, checked against the model before
    anything is compiled, so a wrong or missing workdir fails at once."""
    loaded = {}
    for name, source in plan.stage1.items():
        if not source:
            raise ValueError(f"stage 2 needs config.init_from.{name} (a stage-1 workdir)")
        stage1, step = checkpoint.load_params(source)
        branches = stage1.get("branches", {})
        if name not in branches:
            raise checkpoint.CheckpointMismatch(
                f"stage-1 checkpoint in {source!r} (step {step}) has no branch {name!r}; "
                f"it has {sorted(branches)}. Point config.init_from.{name} at the workdir "
                f"of a stage-1 run of configs/pretrain.py:{name}"
            )
        checkpoint.check_params(
            abstract_params,
            branches[name],
            prefix=f"branches/{name}",
            loaded=plan.stage1_loaded,
            origin=source,
        )
        loaded[name] = (source, branches[name])
    return loaded


def initial_state(
    plan: InitPlan,
    abstract: trainer.TrainState,
    model_fn: trainer.ModelFn,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    store: checkpoint.CheckpointStore,
    *,
    data_iterator: grain.DatasetIterator | None,
) -> Start:
    """The state the run starts from; on resume ``data_iterator`` is restored too."""
    resume = checkpoint.resume_point(store, plan.workdir, plan.resume)
    if resume:
        src, step, origin = resume
        tree, meta = src.restore(
            step, trainer.abstract_checkpoint_tree(abstract), data_iterator=data_iterator
        )
        if src is not store:
            src.close()
        state = trainer.restore_train_state(abstract, model_fn, tree, seed=plan.seed)
        return Start(state, int(meta["step"]), origin)
    stage1 = _stage1_branches(plan, abstract.params())
    state = trainer.initialize(abstract, model_fn, tx, mesh, seed=plan.seed)
    params = None
    for prefix, tree in plan.pretrained().items():
        params = checkpoint.merge_params(params or state.params(), tree, prefix=prefix)
    for name, (source, tree) in stage1.items():
        params = checkpoint.merge_params(
            params or state.params(),
            tree,
            prefix=f"branches/{name}",
            loaded=plan.stage1_loaded,
            origin=source,
        )
    if params is not None:
        state = trainer.restore_checkpoint_tree(state, {"params": params})
    return Start(state, 0, "init_from" if stage1 else "scratch")
