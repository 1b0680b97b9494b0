"""Per-video predictions on a split: windows averaged, padding dropped, metrics computed."""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from hemo_jax.contract.shards import ShardSet
from hemo_jax.data import pipeline
from hemo_jax.models import factory
from hemo_jax.training import checkpoint, inputs, metrics, sharding, trainer


@dataclasses.dataclass(frozen=True)
class Predictions:
    """One row per video of the split, in shard order."""

    record_index: np.ndarray  # int [N], index into the shard set
    probability: np.ndarray  # float [N], P(win), mean over the video's windows
    branch_probability: dict[str, np.ndarray]  # each branch's own P(win)


class Evaluator:
    """Runs the model over every window of every video of one split."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        shards: ShardSet,
        mesh: Mesh,
        *,
        text_fn: Any = None,
        split: str | None = None,
    ):
        self.config, self.shards, self.mesh, self.text_fn = config, shards, mesh, text_fn
        self.pcfg = inputs.pipeline_config(config, train=False, split=split)
        self._step = None

    def predict(self, state: trainer.TrainState) -> Predictions:
        loader = pipeline.make_loader(
            self.shards,
            self.pcfg,
            train=False,
            mesh=self.mesh,
            data_axis=sharding.BATCH_AXES,
            text_fn=self.text_fn,
        )
        sums: dict[str, dict[int, float]] = {}
        counts: dict[int, int] = {}
        with loader:
            for batch in loader:
                if self._step is None:
                    self._step = trainer.make_eval_step(
                        state, self.mesh, batch, self.config.train.compute_dtype
                    )
                out = {k: np.asarray(v) for k, v in self._step(state.state, batch).items()}
                for row in np.flatnonzero(out["valid"]):
                    vid = int(out["video_index"][row])
                    counts[vid] = counts.get(vid, 0) + 1
                    for key, value in out.items():
                        if key.startswith("prob"):
                            sums.setdefault(key, {})[vid] = sums.get(key, {}).get(vid, 0.0) + float(
                                value[row]
                            )
        order = np.array(sorted(counts), np.int64)
        mean = {k: np.array([v[i] / counts[i] for i in order]) for k, v in sums.items()}
        return Predictions(
            record_index=order,
            probability=mean.pop("prob"),
            branch_probability={k.removeprefix("prob_"): v for k, v in mean.items()},
        )

    def labels(self, predictions: Predictions) -> np.ndarray:
        return np.array([self.shards.infos[i].label for i in predictions.record_index])

    def metrics(self, state: trainer.TrainState) -> dict[str, float]:
        """Point metrics of the fused prediction on the split's true labels."""
        pred = self.predict(state)
        labels = self.labels(pred)
        known = labels >= 0
        if not known.any():
            return {}
        out = metrics.point_metrics(labels[known], pred.probability[known])
        for name, probs in pred.branch_probability.items():
            if len(pred.branch_probability) > 1:
                branch = metrics.point_metrics(labels[known], probs[known])
                out[f"{name}_balanced_accuracy"] = branch["balanced_accuracy"]
        return out


def load_trained(
    workdir: str, *, checkpoint_step: str = "latest", shards: str | None = None
) -> tuple[ml_collections.ConfigDict, trainer.TrainState, Mesh, int]:
    """The config and trained parameters of a workdir, on a mesh of all devices.

    ``checkpoint_step`` is "latest", "best" (by the config's best metric) or a step number.
    ``shards`` replaces the config's shard set (to predict on other data).
    """
    if checkpoint_step not in ("latest", "best") and not checkpoint_step.isdigit():
        raise ValueError(f"checkpoint {checkpoint_step!r} is not latest, best or a step number")
    checkpoint.existing_checkpoint_dir(workdir)
    store = checkpoint.CheckpointStore(workdir, best_metric=None)
    try:
        latest = store.latest_step()
        if latest is None:
            raise FileNotFoundError(f"no checkpoint in {workdir!r}")
        config = ml_collections.ConfigDict(store.restore_item(latest, "config"))
    finally:
        store.close()
    if shards:
        config.data.shards = shards
    step = None if checkpoint_step in ("latest", "best") else int(checkpoint_step)
    best = config.train.best_metric if checkpoint_step == "best" else None
    params, step = checkpoint.load_params(workdir, step=step, best_metric=best)
    mesh = sharding.make_mesh(data=-1)
    state = trainer.create_train_state(
        lambda key: factory.build_model(config, seed=key), optax.set_to_zero(), mesh
    )
    state = trainer.restore_checkpoint_tree(state, {"params": params})
    return config, state, mesh, step
