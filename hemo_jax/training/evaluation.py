"""Per-video predictions on a split: windows averaged, padding dropped, metrics computed."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
from jax.sharding import Mesh

from hemo_jax.contract.shards import ShardSet
from hemo_jax.data import pipeline
from hemo_jax.data.text import RecordText
from hemo_jax.training import metrics, sharding, trainer


@dataclasses.dataclass(frozen=True)
class Predictions:
    """One row per video of the split, in shard order."""

    record_index: np.ndarray  # int [N], index into the shard set
    probability: np.ndarray  # float [N], P(win), mean over the video's windows
    branch_probability: dict[str, np.ndarray]  # each branch's own P(win)


class Evaluator:
    """Runs the model over every window of every video of one split (``pipeline_config``)."""

    def __init__(
        self,
        shards: ShardSet,
        mesh: Mesh,
        pipeline_config: pipeline.PipelineConfig,
        *,
        text_fn: RecordText | None,
        predict_fn: trainer.PredictFn,
        compute_dtype: str,
    ):
        self.shards, self.mesh, self.pcfg, self.text_fn = shards, mesh, pipeline_config, text_fn
        self.predict_fn, self.compute_dtype = predict_fn, compute_dtype
        self._step = None

    def _window_rows(self, state: trainer.ModelState) -> Iterator[dict[str, float]]:
        """One dict per real (not padding) window: video_index, window_index and every
        probability the predict function returns."""
        loader = pipeline.make_loader(
            self.shards,
            self.pcfg,
            train=False,
            mesh=self.mesh,
            data_axis=sharding.BATCH_AXES,
            text_fn=self.text_fn,
        )
        with loader:
            for batch in loader:
                if self._step is None:
                    self._step = trainer.make_eval_step(
                        state.graphdef,
                        self.mesh,
                        batch,
                        predict_fn=self.predict_fn,
                        compute_dtype=self.compute_dtype,
                    )
                out = {k: np.asarray(v) for k, v in self._step(state.state, batch).items()}
                for row in np.flatnonzero(out["valid"]):
                    values = {k: float(v[row]) for k, v in out.items() if k.startswith("prob")}
                    yield {
                        "video_index": int(out["video_index"][row]),
                        "window_index": int(out["window_index"][row]),
                        **values,
                    }

    def predict(self, state: trainer.ModelState) -> Predictions:
        sums: dict[str, dict[int, float]] = {}
        counts: dict[int, int] = {}
        for row in self._window_rows(state):
            vid = row["video_index"]
            counts[vid] = counts.get(vid, 0) + 1
            for key, value in row.items():
                if key.startswith("prob"):
                    sums.setdefault(key, {})[vid] = sums.get(key, {}).get(vid, 0.0) + value
        order = np.array(sorted(counts), np.int64)
        mean = {k: np.array([v[i] / counts[i] for i in order]) for k, v in sums.items()}
        return Predictions(
            record_index=order,
            probability=mean.pop("prob"),
            branch_probability={k.removeprefix("prob_"): v for k, v in mean.items()},
        )

    def window_predictions(self, state: trainer.ModelState) -> dict[tuple[int, int], float]:
        """P(win) of every window: (record index, window index) -> probability."""
        return {
            (row["video_index"], row["window_index"]): row["prob"]
            for row in self._window_rows(state)
        }

    def labels(self, predictions: Predictions) -> np.ndarray:
        return np.array([self.shards.infos[i].label for i in predictions.record_index])

    def metrics(self, state: trainer.ModelState) -> dict[str, float]:
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
