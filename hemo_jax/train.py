"""Train one stage: ``python -m hemo_jax.train --config configs/pretrain.py:keypoints --workdir W``.

Stage 1 trains one branch with its own head; stage 2 (configs/finetune.py)
trains the fused model from the stage-1 branches with the pseudo-labelled
pool merged into training. One loop serves both. Every process of a
multi-host job runs this same command.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging
from flax import nnx
from jax.experimental import multihost_utils
from ml_collections import config_flags

from hemo_jax.data import pipeline
from hemo_jax.models import convert, factory
from hemo_jax.training import (
    checkpoint,
    early_stopping,
    evaluation,
    inputs,
    metrics,
    run_checks,
    sharding,
    trainer,
    xla_cpu,
)
from hemo_jax.training.logger import MetricLogger

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, logs and metrics go.")


def _install_sigterm() -> dict[str, bool]:
    """SIGTERM (a preempted VM, a scheduler's time limit) asks the loop to checkpoint
    and stop at the next step boundary; rerunning the same command resumes."""
    flag = {"stop": False}

    def handler(signum: int, frame: Any) -> None:
        logging.warning("SIGTERM received: saving a checkpoint and stopping")
        flag["stop"] = True

    signal.signal(signal.SIGTERM, handler)
    return flag


def _stop_requested(flag: dict[str, bool]) -> bool:
    """Whether any process got SIGTERM; every process must stop at the same step, since
    saving a checkpoint is collective."""
    if jax.process_count() == 1:
        return flag["stop"]
    return bool(np.any(multihost_utils.process_allgather(np.int32(flag["stop"]))))


def _stage1_branches(
    config: ml_collections.ConfigDict, abstract_params: Any
) -> dict[str, tuple[str, Any]]:
    """Stage 2: ``{branch: (stage-1 workdir, its parameters)}``, checked against the model.

    Checked before anything is compiled, so a wrong or missing workdir fails at once.
    """
    if config.stage != 2 or not config.get("from_stage1", True):
        return {}
    stray = [k for k, v in config.init_from.items() if v and k not in config.branches]
    if stray:
        raise ValueError(
            f"config.init_from names {stray}, which are not in config.branches "
            f"{tuple(config.branches)}"
        )
    loaded = {}
    for name in config.branches:
        source = config.init_from[name]
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
            skip=tuple(config.init_skip),
            origin=source,
        )
        loaded[name] = (source, branches[name])
    return loaded


def _initial_params(
    config: ml_collections.ConfigDict,
    state: trainer.TrainState,
    stage1: dict[str, tuple[str, Any]],
) -> Any | None:
    """Pretrained parts (a BERT text encoder), then stage-1 branches; None if neither."""
    params = None
    for prefix, tree in factory.pretrained_params(config).items():
        params = checkpoint.merge_params(params or state.params(), tree, prefix=prefix)
    for name, (source, tree) in stage1.items():
        params = checkpoint.merge_params(
            params or state.params(),
            tree,
            prefix=f"branches/{name}",
            skip=tuple(config.init_skip),
            origin=source,
        )
    return params


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Runs training to ``config.train.steps``; returns the last evaluation metrics."""
    return run_training(config, workdir)[1]


def run_training(
    config: ml_collections.ConfigDict, workdir: str
) -> tuple[trainer.TrainState, dict[str, float]]:
    """Runs training; returns the final state (for notebooks and tests) and eval metrics.

    Resume order: a checkpoint in ``workdir``, then ``config.resume``, then
    ``config.init_from`` (stage-1 branches, stage 2), then scratch.
    """
    run_checks.check_run_config(config)
    init = config.distributed.initialize
    sharding.maybe_initialize_distributed(None if init == "auto" else init == "yes")
    stop = _install_sigterm()
    options = trainer.StepOptions(
        compute_dtype=config.train.compute_dtype,
        grad_accum=config.optim.grad_accum,
        aux_loss_weight=config.train.aux_loss_weight,
    )
    shards = inputs.shard_set(config)
    os.makedirs(workdir, exist_ok=True)
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.seq)
    log = MetricLogger(workdir, enabled=jax.process_index() == 0)
    log.text(f"mesh: {sharding.describe(mesh)}")

    text_fn = factory.make_text_fn(config)
    train_loader = pipeline.make_loader(
        shards,
        inputs.pipeline_config(config, train=True),
        train=True,
        mesh=mesh,
        data_axis=sharding.BATCH_AXES,
        text_fn=text_fn,
    )

    c = config.optim
    tx = trainer.make_optimizer(
        lr=c.lr,
        warmup_steps=c.warmup_steps,
        total_steps=config.train.steps,
        weight_decay=c.weight_decay,
        clip_norm=c.clip_norm,
        b1=c.b1,
        b2=c.b2,
        lr_scale=c.init_lr_scale,
        lr_scaled=factory.loaded_from_stage1(config),
    )
    trainable = trainer.trainable_filter(factory.frozen_prefixes(config))

    def model_fn(key: jax.Array) -> nnx.Module:
        return factory.build_model(config, seed=key)

    state = trainer.abstract_train_state(model_fn, tx, mesh, trainable=trainable)
    model = state.model()
    log.text(
        f"parameters: {convert.param_count(model):,} "
        f"({sum(x.size for x in jax.tree.leaves(nnx.state(model, trainable))):,} trainable); "
        f"branches {tuple(config.branches)}, stage {config.stage}"
        + (f"; fold {config.data.fold} held out of training" if config.data.fold else "")
    )
    del model

    store = checkpoint.CheckpointStore(
        workdir,
        keep_last=config.train.keep_checkpoints,
        best_metric=config.train.best_metric,
    )
    stopper = early_stopping.EarlyStopping(
        workdir,
        config.train.best_metric,
        config.train.get("patience", 0),
        writer=jax.process_index() == 0,
    )
    resume = checkpoint.resume_point(store, workdir, config.resume)
    stage1 = {} if resume else _stage1_branches(config, state.params())
    state = trainer.initialize(state, model_fn, tx, mesh, seed=config.seed)
    if resume:
        src, start_step, origin = resume
        tree, meta = src.restore(
            start_step, trainer.abstract_checkpoint_tree(state), data_iterator=train_loader.iterator
        )
        if src is not store:
            src.close()
        state = trainer.restore_checkpoint_tree(state, tree)
        start_step = int(meta["step"])
    else:
        start_step, origin = 0, "init_from" if stage1 else "scratch"
        params = _initial_params(config, state, stage1)
        if params is not None:
            state = trainer.restore_checkpoint_tree(state, {"params": params})
    log.text(f"starting at step {start_step} from {origin}")

    first = next(train_loader)
    train_step = trainer.make_train_step(state, mesh, first, options=options)
    evaluator = evaluation.Evaluator(config, shards, mesh, text_fn=text_fn)
    config_json = json.loads(config.to_json_best_effort())

    rng = jax.random.key(config.seed)
    sums: dict[str, float] = {}
    last_eval: dict[str, float] = {}
    batch = first
    t0 = time.time()
    progress = log.progress(start_step, config.train.steps, enabled=config.train.progress)
    step = start_step
    while step < config.train.steps and not stopper.stopped:
        step += 1
        state.state, out = train_step(state.state, batch, jax.random.fold_in(rng, step))
        trainer.check_finite(step, out, train_step.grad_names)
        for k in ("loss_sum", "weight_sum", "correct", "count"):
            sums[k] = sums.get(k, 0.0) + float(out[k])
        progress.update(1)
        stopping = _stop_requested(stop)
        if step % config.train.log_every == 0 or step == config.train.steps or stopping:
            row = {"step": step, **metrics.finalize_sums(sums)}
            row["grad_norm"] = float(out["grad_norm"])
            row["steps_per_s"] = (step - start_step) / max(time.time() - t0, 1e-9)
            log.write("train", row)
            sums = {}
        is_last = step == config.train.steps
        evaluated = step % config.train.eval_every == 0 or is_last
        if evaluated:
            last_eval = evaluator.metrics(state)
            log.write("eval", {"step": step, **last_eval})
            if stopper.update(step, last_eval):
                log.text(stopper.reason)
                is_last = True
        if step % config.train.checkpoint_every == 0 or is_last or stopping:
            store.save(
                step,
                trainer.checkpoint_tree(state),
                data_iterator=train_loader.iterator,
                config=config_json,
                metrics=last_eval if evaluated else None,
            )
        if stopping:
            log.text(f"stopped by SIGTERM after step {step}; resume with the same command")
            break
        if not is_last:
            batch = next(train_loader)
    progress.close()
    store.close()
    train_loader.close()
    log.close()
    return state, last_eval


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _WORKDIR.value is None:
        raise app.UsageError("--workdir is required")
    np.set_printoptions(precision=4)
    xla_cpu.prefer_xla_reductions()
    train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main)
