"""Train one stage: ``python -m hemo_jax.train --config configs/pretrain.py:keypoints --workdir W``.

Stage 1 trains one branch with its own head; stage 2 (configs/finetune.py)
trains the fused model from the stage-1 branches with the pseudo-labelled
pool merged into training. One loop serves both. Every process of a
multi-host job runs this same command.

``--preflight`` instead compiles the step for the config's mesh from abstract shapes
and prints the parameter count, FLOPs and memory per device, reading no data: whether a
long-sequence config fits the devices is known before the run.
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
from hemo_jax.experiment.experiment import Experiment
from hemo_jax.models import convert
from hemo_jax.training import (
    checkpoint,
    early_stopping,
    initialization,
    metrics,
    preflight,
    sharding,
    trainer,
    xla_cpu,
)
from hemo_jax.training.logger import MetricLogger


def _define_flags() -> None:
    """The command line, defined only when this module runs as the program: tests and
    notebooks import ``run_training`` beside other entry points whose flags share names."""
    config_flags.DEFINE_config_file("config", None, "Training config file.")
    flags.DEFINE_string("workdir", None, "Where checkpoints, logs and metrics go.")
    flags.DEFINE_bool(
        "preflight",
        False,
        "Compile the train step on the target devices and print the parameter count, FLOPs "
        "and memory per device; reads no data, trains nothing, needs no --workdir.",
    )


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
    exp = Experiment.from_config(config, workdir)
    sharding.maybe_initialize_distributed(exp.distributed)
    stop = _install_sigterm()
    shards = exp.shards()
    os.makedirs(workdir, exist_ok=True)
    mesh = exp.make_mesh()
    log = MetricLogger(workdir, enabled=jax.process_index() == 0)
    log.text(f"mesh: {sharding.describe(mesh)}")

    train_loader = pipeline.make_loader(
        shards,
        exp.train_pipeline,
        train=True,
        mesh=mesh,
        data_axis=sharding.BATCH_AXES,
        text_fn=exp.text_fn,
    )
    state = trainer.abstract_train_state(exp.model_fn, exp.optimizer, mesh, trainable=exp.trainable)
    log.text(_parameters(exp, state))

    loop = exp.loop
    store = checkpoint.CheckpointStore(
        workdir, keep_last=loop.keep_checkpoints, best_metric=loop.best_metric
    )
    stopper = early_stopping.EarlyStopping(
        workdir, loop.best_metric, loop.patience, writer=jax.process_index() == 0
    )
    start = initialization.initial_state(
        exp.init,
        state,
        exp.model_fn,
        exp.optimizer,
        mesh,
        store,
        data_iterator=train_loader.iterator,
    )
    state, start_step = start.state, start.step
    log.text(f"starting at step {start_step} from {start.origin}")

    first = next(train_loader)
    train_step = trainer.make_train_step(
        state, mesh, first, loss_fn=exp.loss_fn, options=exp.step_options
    )
    evaluator = exp.evaluator(shards, mesh)
    config_json = json.loads(config.to_json_best_effort())

    rng = jax.random.key(loop.seed)
    sums: dict[str, float] = {}
    last_eval: dict[str, float] = {}
    batch = first
    t0 = time.time()
    progress = log.progress(start_step, loop.steps, enabled=loop.progress)
    step = start_step
    while step < loop.steps and not stopper.stopped:
        step += 1
        state.state, out = train_step(state.state, batch, jax.random.fold_in(rng, step))
        trainer.check_finite(step, out, train_step.grad_names)
        for k in ("loss_sum", "weight_sum", "correct", "count"):
            sums[k] = sums.get(k, 0.0) + float(out[k])
        progress.update(1)
        stopping = _stop_requested(stop)
        if step % loop.log_every == 0 or step == loop.steps or stopping:
            row = {"step": step, **metrics.finalize_sums(sums)}
            row["grad_norm"] = float(out["grad_norm"])
            row["steps_per_s"] = (step - start_step) / max(time.time() - t0, 1e-9)
            log.write("train", row)
            sums = {}
        is_last = step == loop.steps
        evaluated = step % loop.eval_every == 0 or is_last
        if evaluated:
            last_eval = evaluator.metrics(trainer.model_state(state))
            log.write("eval", {"step": step, **last_eval})
            if stopper.update(step, last_eval):
                log.text(stopper.reason)
                is_last = True
        if step % loop.checkpoint_every == 0 or is_last or stopping:
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


def _parameters(exp: Experiment, state: trainer.TrainState) -> str:
    """The parameter count of an (abstract) state, for the run's log."""
    model = state.model()
    trainable = sum(x.size for x in jax.tree.leaves(nnx.state(model, exp.trainable)))
    return f"parameters: {convert.param_count(model):,} ({trainable:,} trainable); {exp.summary()}"


def run_preflight(config: ml_collections.ConfigDict) -> preflight.Preflight:
    """Compiles the step of ``config`` from abstract shapes on its mesh (see --preflight)."""
    exp = Experiment.from_config(config)
    sharding.maybe_initialize_distributed(exp.distributed)
    mesh = exp.make_mesh()
    state = trainer.abstract_train_state(exp.model_fn, exp.optimizer, mesh, trainable=exp.trainable)
    text_length = exp.text_fn.max_length if exp.text_fn else None
    batch = pipeline.batch_spec(exp.train_pipeline, text_length=text_length)
    return preflight.preflight(state, mesh, batch, loss_fn=exp.loss_fn, options=exp.step_options)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    xla_cpu.prefer_xla_reductions()
    args = flags.FLAGS
    if args.preflight:
        print("\n".join(run_preflight(args.config).lines()))
        return
    if args.workdir is None:
        raise app.UsageError("--workdir is required")
    np.set_printoptions(precision=4)
    train_and_evaluate(args.config, args.workdir)


if __name__ == "__main__":
    _define_flags()
    flags.mark_flag_as_required("config")
    app.run(main)
