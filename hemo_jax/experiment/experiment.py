"""A training config turned, once, into the typed parts of an experiment.

``Experiment.from_config`` is the one place that reads a ConfigDict for training,
evaluation and prediction: the model constructor, the pipeline settings with the text
hook, the optimizer with its trainable and learning-rate masks, the loss and predict
functions, the initialisation plan and the loop's settings. Below it, ``models``,
``data`` and ``training`` take only typed arguments.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections
import optax
from jax.sharding import Mesh

from hemo_jax.contract.shards import ShardSet
from hemo_jax.data import pipeline
from hemo_jax.data.text import RecordText
from hemo_jax.experiment import checks, data, model, objective
from hemo_jax.models import convert
from hemo_jax.training import checkpoint, evaluation, sharding, trainer
from hemo_jax.training.initialization import InitPlan, stage1_rule


@dataclasses.dataclass(frozen=True)
class LoopOptions:
    steps: int
    log_every: int
    eval_every: int
    checkpoint_every: int
    keep_checkpoints: int
    best_metric: str  # "" keeps the latest checkpoints only
    patience: int  # evaluations without a better best_metric before stopping; 0: never
    progress: bool
    seed: int


@dataclasses.dataclass(frozen=True)
class Experiment:
    config: ml_collections.ConfigDict  # saved beside each checkpoint; read only here
    model_fn: trainer.ModelFn
    text_fn: RecordText | None
    train_pipeline: pipeline.PipelineConfig
    optimizer: optax.GradientTransformation
    trainable: Any  # an nnx filter: parameters, less the frozen ones
    step_options: trainer.StepOptions
    loss_fn: trainer.LossFn
    predict_fn: trainer.PredictFn
    init: InitPlan
    loop: LoopOptions
    mesh_shape: tuple[int, int, int]  # data, fsdp, seq
    distributed: bool | None  # initialise jax.distributed: None decides from the environment

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, workdir: str = "") -> Experiment:
        """Checks the config's run settings, then builds every part; reads no data, and
        resolves the BERT checkpoint (if any) once."""
        checks.check_run_config(config)
        m = config.model
        text_encoder = (
            str(convert.resolve_checkpoint(m.text_encoder))
            if "text" in config.branches and m.text_encoder
            else None
        )
        stage1_loaded = stage1_rule(tuple(config.init_skip))
        c, t = config.optim, config.train
        tx = trainer.make_optimizer(
            lr=c.lr,
            warmup_steps=c.warmup_steps,
            total_steps=t.steps,
            weight_decay=c.weight_decay,
            clip_norm=c.clip_norm,
            b1=c.b1,
            b2=c.b2,
            lr_scale=c.init_lr_scale,
            lr_scaled=stage1_loaded if checks.stage1_workdirs(config) else None,
        )
        init = config.distributed.initialize
        return cls(
            config=config,
            model_fn=model.model_fn(config, text_encoder=text_encoder),
            text_fn=data.text_fn(config, text_encoder=text_encoder),
            train_pipeline=data.pipeline_config(config, train=True),
            optimizer=tx,
            trainable=trainer.trainable_filter(model.frozen_prefixes(config)),
            step_options=trainer.StepOptions(
                compute_dtype=t.compute_dtype, grad_accum=c.grad_accum
            ),
            loss_fn=objective.loss_fn(t.aux_loss_weight),
            predict_fn=objective.predict,
            init=InitPlan(
                workdir=workdir,
                resume=config.resume,
                stage1=checks.stage1_workdirs(config),
                stage1_loaded=stage1_loaded,
                pretrained=lambda: model.pretrained_params(text_encoder),
                seed=config.seed,
            ),
            loop=LoopOptions(
                steps=t.steps,
                log_every=t.log_every,
                eval_every=t.eval_every,
                checkpoint_every=t.checkpoint_every,
                keep_checkpoints=t.keep_checkpoints,
                best_metric=t.best_metric,
                patience=t.get("patience", 0),  # absent in configs saved before it existed
                progress=t.progress,
                seed=config.seed,
            ),
            mesh_shape=(config.mesh.data, config.mesh.fsdp, config.mesh.seq),
            distributed=None if init == "auto" else init == "yes",
        )

    @property
    def branches(self) -> tuple[str, ...]:
        return tuple(self.config.branches)

    @property
    def stage(self) -> int:
        return self.config.stage

    def summary(self) -> str:
        """Branches, stage and held-out fold, for the run's log."""
        fold = self.config.data.fold
        return f"branches {self.branches}, stage {self.stage}" + (
            f"; fold {fold} held out of training" if fold else ""
        )

    def shards(self) -> ShardSet:
        return data.shard_set(self.config)

    def make_mesh(self) -> Mesh:
        return sharding.make_mesh(*self.mesh_shape)

    def evaluator(
        self, shards: ShardSet, mesh: Mesh, split: str | None = None, *, windows: int = 0
    ) -> evaluation.Evaluator:
        """Runs the model over every window of every video of ``split`` (default: the
        config's eval split); ``windows`` > 0 lays that many windows over each video instead
        of the config's ``data.eval_windows``."""
        pipeline_config = data.pipeline_config(self.config, train=False, split=split)
        if windows:
            pipeline_config = dataclasses.replace(pipeline_config, eval_windows=windows)
        return evaluation.Evaluator(
            shards,
            mesh,
            pipeline_config,
            text_fn=self.text_fn,
            predict_fn=self.predict_fn,
            compute_dtype=self.step_options.compute_dtype,
        )


@dataclasses.dataclass(frozen=True)
class Trained:
    """A trained workdir ready to predict: its experiment and its model's parameters."""

    experiment: Experiment
    model: trainer.ModelState
    mesh: Mesh
    step: int

    @property
    def config(self) -> ml_collections.ConfigDict:
        return self.experiment.config

    @property
    def window_rows(self) -> int:
        """Keypoint rows one window spans (its frames times the stride)."""
        return self.config.data.max_frames * self.config.data.frame_stride


def load_trained(
    workdir: str, *, checkpoint_step: str = "latest", shards: str | None = None
) -> Trained:
    """The experiment and trained parameters of a workdir, on a mesh of all devices; the
    parameters alone, no optimizer.

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
    experiment = Experiment.from_config(config)
    mesh = sharding.make_mesh(data=-1)
    state = trainer.load_model_state(experiment.model_fn, params, mesh, seed=config.seed)
    return Trained(experiment, state, mesh, step)
