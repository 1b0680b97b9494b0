"""The train step on the 8-device CPU mesh: data parallel, FSDP and gradient
accumulation compute the same losses and updates as one device on one batch."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec
from records import FEATURE_DIM, write_learnable_shards

from configs import pretrain
from hemo_jax.data import pipeline
from hemo_jax.experiment import data, objective
from hemo_jax.experiment.experiment import Experiment
from hemo_jax.training import sharding, trainer

STEPS = 3
BATCH = 16


@pytest.fixture(scope="module")
def config():
    c = pretrain.get_config("image,smoke")
    c.model.image_feature_dim = FEATURE_DIM
    c.data.batch_size = BATCH
    return c


def _model_fn(config):
    return Experiment.from_config(config).model_fn


def _tx(config):
    # warm-up 1: the schedule is 0 at the first step only, then updates are large
    # enough for any difference between the runs to show in the next losses.
    return trainer.make_optimizer(
        lr=1e-2, warmup_steps=1, total_steps=STEPS, weight_decay=0.05, clip_norm=1.0
    )


@pytest.fixture(scope="module")
def batches(tmp_path_factory, config):
    shards = write_learnable_shards(tmp_path_factory.mktemp("sharding") / "shards")
    with pipeline.make_loader(
        shards, data.pipeline_config(config, train=True), train=True
    ) as loader:
        return [next(loader) for _ in range(STEPS)]


@pytest.fixture(scope="module")
def initial(config):
    """One initial state on one device; every mesh starts from a copy of it."""
    one = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    return trainer.create_train_state(_model_fn(config), _tx(config), one)


def _on_mesh(initial, mesh, config) -> trainer.TrainState:
    abstract = trainer.abstract_train_state(_model_fn(config), _tx(config), mesh)
    # A fresh copy: the step donates its input state (and device_put to a
    # replicated sharding reuses the source buffer on its device).
    copy = jax.tree.map(lambda x: x.copy(), initial.state)
    state = jax.device_put(copy, abstract.shardings)
    return dataclasses.replace(abstract, state=state)


@dataclasses.dataclass
class Run:
    losses: np.ndarray
    grad_norms: np.ndarray
    state: trainer.TrainState
    step: object


def _train(initial, config, mesh, batches, *, grad_accum: int = 1) -> Run:
    state = _on_mesh(initial, mesh, config)
    options = trainer.StepOptions(grad_accum=grad_accum)
    step = trainer.make_train_step(
        state, mesh, batches[0], loss_fn=objective.loss_fn(0.0), options=options
    )
    losses, norms = [], []
    for i, batch in enumerate(batches, 1):
        state.state, out = step(state.state, batch, jax.random.fold_in(jax.random.key(0), i))
        trainer.check_finite(i, out, step.grad_names)
        losses.append(float(out["loss_sum"]) / float(out["weight_sum"]))
        norms.append(float(out["grad_norm"]))
    return Run(np.array(losses), np.array(norms), state, step)


@pytest.fixture(scope="module")
def meshes():
    return {
        "one": sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1]),
        "data": sharding.make_mesh(8, 1, 1),
        "fsdp": sharding.make_mesh(1, 8, 1),
    }


@pytest.fixture(scope="module")
def runs(initial, config, meshes, batches):
    return {name: _train(initial, config, mesh, batches) for name, mesh in meshes.items()}


def _params(run: Run) -> dict[str, np.ndarray]:
    return {
        jax.tree_util.keystr(path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(run.state.params())
    }


def _assert_same_training(run: Run, reference: Run) -> None:
    np.testing.assert_allclose(run.losses, reference.losses, rtol=1e-5)
    np.testing.assert_allclose(run.grad_norms, reference.grad_norms, rtol=1e-5)
    got, expected = _params(run), _params(reference)
    assert got.keys() == expected.keys()
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], atol=1e-5, err_msg=name)


def test_mesh_sizes_are_checked():
    assert dict(sharding.make_mesh(-1, 2, 1).shape) == {"data": 4, "fsdp": 2, "seq": 1}
    with pytest.raises(ValueError, match="needs 6 devices, have 8"):
        sharding.make_mesh(3, 2, 1)
    with pytest.raises(ValueError, match="at most one mesh axis may be -1"):
        sharding.make_mesh(-1, -1, 1)


@pytest.mark.slow
def test_the_seed_reaches_the_compiled_init_as_an_argument(config):
    """Each seed gives the parameters an eager build with it gives; two seeds differ."""
    one = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    built = {}
    for seed in (0, 3):
        state = trainer.create_train_state(_model_fn(config), _tx(config), one, seed=seed)
        got = jax.tree.leaves(nnx.state(state.model(), nnx.Param))
        want = jax.tree.leaves(nnx.state(_model_fn(config)(jax.random.key(seed)), nnx.Param))
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
        built[seed] = got
    assert any(not np.allclose(a, b) for a, b in zip(built[0], built[3], strict=True))


@pytest.mark.slow
def test_the_runs_learn(runs):
    # Loss moves after the first (zero learning rate) update: the equalities below
    # compare training, not three copies of the initial model.
    assert abs(runs["one"].losses[-1] - runs["one"].losses[0]) > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("name", ["data", "fsdp"])
def test_data_parallel_and_fsdp_train_like_one_device(runs, name):
    _assert_same_training(runs[name], runs["one"])


@pytest.mark.slow
def test_fsdp_shards_parameters_and_data_parallel_replicates_them(runs):
    def kernel(run):
        model = run.state.model()
        return model.branches["image"].proj.kernel.get_value()  # [features, embed]

    fsdp, data = kernel(runs["fsdp"]), kernel(runs["data"])
    assert fsdp.sharding.spec == PartitionSpec(None, "fsdp")
    width = fsdp.shape[1]
    assert {s.data.shape for s in fsdp.addressable_shards} == {(FEATURE_DIM, width // 8)}
    # The same rule on the data mesh names an fsdp axis of size 1: whole copies.
    assert {s.data.shape for s in data.addressable_shards} == {(FEATURE_DIM, width)}


@pytest.mark.slow
def test_gradient_accumulation_matches_one_batch_of_double_size(
    initial, config, meshes, batches, runs
):
    accumulated = _train(initial, config, meshes["data"], batches, grad_accum=2)
    _assert_same_training(accumulated, runs["data"])


def test_grad_accum_must_divide_the_batch(initial, config, meshes, batches):
    with pytest.raises(ValueError, match="grad_accum 3 must divide the global batch"):
        trainer.make_train_step(
            initial,
            meshes["one"],
            batches[0],
            loss_fn=objective.loss_fn(0.0),
            options=trainer.StepOptions(grad_accum=3),
        )


@pytest.mark.slow
def test_a_nan_on_one_device_stops_training_with_the_step_and_names(
    initial, config, meshes, batches, runs
):
    run = runs["data"]
    state = _on_mesh(initial, meshes["data"], config)
    batch = {k: v.copy() for k, v in batches[0].items()}
    batch["image_features"][3] = np.nan  # a row of device 1 of 8
    _, out = run.step(state.state, batch, jax.random.key(0))
    with pytest.raises(trainer.NonFiniteError) as error:
        trainer.check_finite(7, out, run.step.grad_names)
    message = str(error.value)
    assert message.startswith("step 7: loss=nan")
    assert "non-finite gradients: ['branches']['image']" in message
