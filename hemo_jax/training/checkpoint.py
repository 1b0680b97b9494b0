"""Checkpoints: model and optimizer state, data-iterator state and the config.

One orbax CheckpointManager per workdir keeps the last N steps and the best
step by an evaluation metric. Each step holds four items:
``state`` (a pytree of arrays: params and optimizer), ``data`` (the grain
iterator, one file per process), ``config`` (JSON) and ``meta`` (step, metrics).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"
# Arrays smaller than this per replica are written by one replica. Orbax otherwise
# splits every replicated array across its replicas with one eager slice per piece;
# for a model of many small arrays on 8 devices that made each save take seconds.
MIN_REPLICA_SLICE_BYTES = 4 << 20


def _state_handler() -> ocp.PyTreeCheckpointHandler:
    registry = ocp.type_handlers.create_type_handler_registry(
        (int, ocp.type_handlers.ScalarHandler()),
        (float, ocp.type_handlers.ScalarHandler()),
        (np.number, ocp.type_handlers.ScalarHandler()),
        (np.ndarray, ocp.type_handlers.NumpyHandler()),
        (
            jax.Array,
            ocp.type_handlers.ArrayHandler(
                min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES
            ),
        ),
    )
    return ocp.PyTreeCheckpointHandler(type_handler_registry=registry)


class CheckpointMismatch(ValueError):
    """A checkpoint does not fit the model (or its optimizer): names the problems."""


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(_flatten(value, path))
        else:
            flat[path] = value
    return flat


def _differences(
    wanted: Mapping[str, tuple[int, ...]],
    given: Mapping[str, tuple[int, ...]],
    *,
    extra: str,
    target: str,
) -> list[str]:
    """Shapes by path, wanted against a checkpoint's: what is missing, what is ``extra``
    and what has another shape than the ``target`` (model, config) has."""
    problems = [f"missing in checkpoint: {k}" for k in sorted(wanted.keys() - given.keys())]
    problems += [f"{extra}: {k}" for k in sorted(given.keys() - wanted.keys())]
    problems += [
        f"shape of {k}: checkpoint {given[k]}, {target} {wanted[k]}"
        for k in sorted(wanted.keys() & given.keys())
        if given[k] != wanted[k]
    ]
    return problems


def _arrays(tree: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Shapes of the array leaves of a checkpoint tree (or of its metadata), by path."""
    return {k: tuple(v.shape) for k, v in _flatten(tree).items() if hasattr(v, "shape")}


def _unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


class CheckpointStore:
    """Saves and restores training steps in ``<workdir>/checkpoints``."""

    def __init__(
        self,
        workdir: str,
        *,
        keep_last: int = 2,
        best_metric: str | None = "balanced_accuracy",
        best_mode: str = "max",
    ):
        if best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
        self.best_metric = best_metric
        self.best_mode = best_mode
        policies: list[Any] = [ocp.checkpoint_managers.LatestN(n=keep_last)]
        if best_metric:
            policies.append(
                ocp.checkpoint_managers.BestN(
                    get_metric_fn=self._metric_value,
                    reverse=best_mode == "min",
                    n=1,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            create=True,
            # Orbax records step metrics only when best_fn is set; retention is the
            # preservation policy below, ranking is best_step().
            best_fn=self._metric_value if best_metric else None,
            best_mode=best_mode,
            enable_async_checkpointing=False,
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            cleanup_tmp_directories=True,
        )
        self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
        # Handlers named up front let the manager read an item's metadata (shapes)
        # before restoring it.
        handlers = {
            "state": _state_handler(),
            "config": ocp.JsonCheckpointHandler(),
            "meta": ocp.JsonCheckpointHandler(),
            "data": grain.checkpoint.CheckpointHandler(),
        }
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_handlers=handlers
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def _metric_value(self, metrics: Mapping[str, float] | None) -> float:
        worst = -float("inf") if self.best_mode == "max" else float("inf")
        return float((metrics or {}).get(self.best_metric, worst))

    def best_step(self) -> int | None:
        """The step with the best metric; None when no step has that metric."""
        if not self.best_metric:
            return None
        scored = [
            (self._metric_value(m), s)
            for s in self._manager.all_steps()
            if self.best_metric in (m := self._manager.metrics(s) or {})
        ]
        if not scored:
            return None
        pick = max if self.best_mode == "max" else min
        return pick(scored)[1]

    def all_steps(self) -> Sequence[int]:
        return self._manager.all_steps()

    def save(
        self,
        step: int,
        state: Any,
        *,
        data_iterator: grain.DatasetIterator | None,
        config: Mapping[str, Any],
        metrics: Mapping[str, float] | None = None,
    ) -> None:
        items: dict[str, Any] = {
            "state": ocp.args.PyTreeSave(state),
            "config": ocp.args.JsonSave(dict(config)),
            "meta": ocp.args.JsonSave({"step": int(step), "metrics": dict(metrics or {})}),
        }
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        # Orbax's metrics drive the best-N policy; metric-less steps are kept only as latest.
        self._manager.save(
            step,
            args=ocp.args.Composite(**items),
            metrics=dict(metrics) if metrics else None,
            force=True,
        )
        self._manager.wait_until_finished()

    def restore(
        self, step: int, abstract_state: Any, *, data_iterator: grain.DatasetIterator | None
    ) -> tuple[Any, dict[str, Any]]:
        """Restores ``state`` (shaped and sharded like ``abstract_state``) and the iterator."""
        self._check_resumable(step, abstract_state)
        items: dict[str, Any] = {
            "state": ocp.args.PyTreeRestore(
                abstract_state,
                restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state),
            ),
            "meta": ocp.args.JsonRestore(),
        }
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"], restored["meta"]

    def _check_resumable(self, step: int, abstract_state: Mapping[str, Any]) -> None:
        """Names what differs between a saved state and the one the config builds."""
        meta = self._manager.item_metadata(step)["state"]
        saved = _arrays(dict(meta.tree if hasattr(meta, "tree") else meta))
        wanted = _arrays(abstract_state)
        problems = _differences(wanted, saved, extra="not in this config", target="config")
        if problems:
            shown = "\n  ".join(problems[:8])
            more = f"\n  ... and {len(problems) - 8} more" if len(problems) > 8 else ""
            raise CheckpointMismatch(
                f"cannot resume from step {step} in {self.directory}: its model and optimizer "
                "state do not match the ones this config builds (changed model sizes, "
                "branches or optimizer options, such as optim.init_lr_scale?)\n  " + shown + more
            )

    def restore_item(self, step: int, item: str) -> Any:
        """One item of a step: JSON items as dicts, ``state`` as host numpy arrays.

        Numpy, so a checkpoint written on one mesh or number of processes reads
        on any other (orbax would otherwise rebuild the saved device sharding).
        """
        if item in ("config", "meta"):
            args: Any = ocp.args.JsonRestore()
        else:
            meta = self._manager.item_metadata(step)[item]
            as_numpy = jax.tree.map(
                lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                dict(meta.tree if hasattr(meta, "tree") else meta),
                is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"),
            )
            args = ocp.args.PyTreeRestore(restore_args=as_numpy)
        return self._manager.restore(step, args=ocp.args.Composite(**{item: args}))[item]

    def close(self) -> None:
        self._manager.close()


def existing_checkpoint_dir(workdir: str) -> str:
    """The checkpoint directory of a finished or running workdir; an error if there is none.

    Readers check first: opening a store on a mistyped workdir would create it.
    """
    directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no checkpoints in {workdir!r} (looked for {directory})")
    return directory


def resume_point(
    store: CheckpointStore, workdir: str, resume: str
) -> tuple[CheckpointStore, int, str] | None:
    """The checkpoint to continue from: ``store``'s (the workdir's) latest, else that of
    the workdir ``resume`` (if given: then it must hold one). Returns (its store, step,
    source); a store opened on ``resume`` is the caller's to close."""
    step = store.latest_step()
    if step is not None:
        return store, step, workdir
    if not resume:
        return None
    empty = FileNotFoundError(f"config.resume={resume!r} holds no checkpoint")
    try:
        existing_checkpoint_dir(resume)
    except FileNotFoundError:
        raise empty from None
    other = CheckpointStore(resume, best_metric=None)
    step = other.latest_step()
    if step is None:
        other.close()
        raise empty
    return other, step, resume


def load_params(
    workdir: str,
    *,
    step: int | None = None,
    best_metric: str | None = "balanced_accuracy",
    best_mode: str = "max",
) -> tuple[dict[str, Any], int]:
    """Reads the parameter tree (``state['params']``) of a checkpoint as numpy arrays.

    Without ``step``: the best step by ``best_metric`` (the latest when no step
    has metrics, or when ``best_metric`` is None).
    """
    directory = existing_checkpoint_dir(workdir)
    store = CheckpointStore(
        workdir, keep_last=1 << 30, best_metric=best_metric, best_mode=best_mode
    )
    try:
        if step is None:
            step = store.best_step() or store.latest_step()
            if step is None:
                raise FileNotFoundError(f"no finished checkpoint step in {directory}")
        elif step not in (steps := list(store.all_steps())):
            raise FileNotFoundError(f"no checkpoint step {step} in {directory}; it holds {steps}")
        restored = store.restore_item(step, "state")
    finally:
        store.close()
    params = jax.tree.map(np.asarray, restored["params"])
    return params, int(step)


def _branch_problems(
    target: Mapping[str, Any],
    source: Mapping[str, Any],
    prefix: str,
    loaded: Callable[[str], bool],
) -> tuple[set[str], dict[str, Any], list[str]]:
    flat_target = _flatten(target)
    flat_source = {f"{prefix}/{k}": v for k, v in _flatten(source).items()}
    wanted = {
        k: tuple(np.shape(v))
        for k, v in flat_target.items()
        if k.startswith(prefix + "/") and loaded(k)
    }
    given = {k: tuple(np.shape(v)) for k, v in flat_source.items() if loaded(k)}
    problems = _differences(wanted, given, extra="unexpected in checkpoint", target="model")
    return set(wanted), flat_source, problems


def _raise_problems(problems: list[str], prefix: str, origin: str) -> None:
    if problems:
        where = f" from {origin!r}" if origin else ""
        raise CheckpointMismatch(
            f"cannot load branch {prefix!r}{where}:\n  " + "\n  ".join(problems)
        )


def _everything(path: str) -> bool:
    return True


def check_params(
    target: Mapping[str, Any],
    source: Mapping[str, Any],
    *,
    prefix: str,
    loaded: Callable[[str], bool] = _everything,
    origin: str = "",
) -> None:
    """Raises CheckpointMismatch unless ``source`` fits the ``prefix`` subtree of ``target``.

    ``target`` leaves need only a shape (arrays or ``jax.ShapeDtypeStruct``), so a
    checkpoint can be checked against a model before it is built. Paths
    ("branches/keypoints/head/...") for which ``loaded`` is false are ignored on both
    sides; every other key must exist on both sides with the same shape. All problems
    are reported in one error, which names ``origin`` (where the checkpoint came from)
    when given.
    """
    _raise_problems(_branch_problems(target, source, prefix, loaded)[2], prefix, origin)


def merge_params(
    target: Mapping[str, Any],
    source: Mapping[str, Any],
    *,
    prefix: str,
    loaded: Callable[[str], bool] = _everything,
    origin: str = "",
) -> dict[str, Any]:
    """Copies ``source`` into the ``prefix`` subtree of ``target``, strictly.

    Paths for which ``loaded`` is false (e.g. a stage-1 head) are left as initialised
    in ``target`` and ignored in ``source``. Every other key must exist on both sides
    with the same shape (``check_params``); all problems are reported in one error.
    """
    wanted, flat_source, problems = _branch_problems(target, source, prefix, loaded)
    _raise_problems(problems, prefix, origin)
    merged = dict(_flatten(target))
    for k in wanted:
        merged[k] = np.asarray(flat_source[k]).astype(np.asarray(merged[k]).dtype)
    return _unflatten(merged)
