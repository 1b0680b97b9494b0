"""Where the initial state comes from: a resumed run and inference restore straight into
abstract shapes, with no random initialisation to throw away."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from configs import pretrain
from hemo_jax.experiment.experiment import Experiment
from hemo_jax.training import checkpoint, initialization, sharding, trainer


@pytest.fixture(scope="module")
def exp():
    return Experiment.from_config(pretrain.get_config("keypoints,smoke"))


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _moved(x):
    x = np.asarray(x)
    return x + np.asarray(0.5, x.dtype) if np.issubdtype(x.dtype, np.floating) else x + 1


def _no_initialize(*args, **kwargs):
    raise AssertionError("a random initialisation was compiled")


def test_resume_restores_params_and_optimizer_without_initialising(exp, tmp_path, monkeypatch):
    mesh = sharding.make_mesh(data=-1)
    saved = trainer.create_train_state(
        exp.model_fn, exp.optimizer, mesh, seed=3, trainable=exp.trainable
    )
    tree = trainer.checkpoint_tree(saved)
    # Moved off the initial values, so a fresh initialisation could not pass for a restore.
    tree = jax.tree.map(_moved, tree)
    store = checkpoint.CheckpointStore(str(tmp_path), best_metric=None)
    store.save(7, tree, data_iterator=None, config={})

    monkeypatch.setattr(trainer, "initialize", _no_initialize)
    abstract = trainer.abstract_train_state(
        exp.model_fn, exp.optimizer, mesh, trainable=exp.trainable
    )
    plan = initialization.InitPlan(workdir=str(tmp_path), seed=0)
    start = initialization.initial_state(
        plan, abstract, exp.model_fn, exp.optimizer, mesh, store, data_iterator=None
    )
    store.close()
    assert (start.step, start.origin) == (7, str(tmp_path))
    got = trainer.checkpoint_tree(start.state)
    for a, b in zip(_leaves(got), _leaves(tree), strict=True):
        np.testing.assert_array_equal(a, b)
    # The state is complete and on the mesh: every leaf a sharded array.
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(start.state.state))


def test_inference_loads_the_parameters_and_no_optimizer(exp):
    mesh = sharding.make_mesh(data=-1)
    model = exp.model_fn(jax.random.key(5))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    params = jax.tree.map(lambda x: np.asarray(x) + 1.0, params)
    loaded = trainer.load_model_state(exp.model_fn, params, mesh)
    got = nnx.to_pure_dict(nnx.state(loaded.model(), nnx.Param))
    for a, b in zip(_leaves(got), _leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not [x for x in jax.tree.leaves(loaded.state) if isinstance(x, jax.ShapeDtypeStruct)]
    assert isinstance(loaded.model(), type(model))  # the model alone, no optimizer
