"""Two ``jax.distributed`` processes on localhost (CPU, gloo) train like one process.

Each process feeds its slice of every global batch (the pipeline slices by
process index) and holds its own copies of the replicated parameters; after the
run both hold the same values, equal to those of one process on the same global
batches. Processes find each other through the environment, as on a cluster
without a manager: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from records import FEATURE_DIM, Run, free_port, run_env, train_rows, write_learnable_shards

from hemo_jax.training import sharding

# Trains the image smoke config in this process and saves the parameter shards it
# holds, by parameter and index. Nothing touches JAX before run_training, which
# must start the distributed runtime first.
DRIVER = f"""
import sys
import numpy as np
from configs import pretrain
from hemo_jax import train

dump, workdir, shards = sys.argv[1:4]
config = pretrain.get_config("image,smoke")
config.data.shards = shards
config.model.image_feature_dim = {FEATURE_DIM}
state, _ = train.run_training(config, workdir)

import jax

arrays = {{}}
for path, leaf in jax.tree_util.tree_leaves_with_path(state.params()):
    for shard in leaf.addressable_shards:
        arrays[jax.tree_util.keystr(path) + "|" + str(shard.index)] = np.asarray(shard.data)
np.savez(dump, **arrays)
print("processes", jax.process_count(), "devices", jax.device_count(), flush=True)
"""


def _launch(tmp_path, name: str, workdir, shards, env) -> Run:
    cmd = [sys.executable, "-c", DRIVER, str(tmp_path / f"{name}.npz"), str(workdir), shards]
    return Run(cmd, workdir, env, log_path=tmp_path / f"{name}.log")


@pytest.mark.slow
def test_two_processes_end_with_the_parameters_of_one(tmp_path, tmp_path_factory):
    shards = write_learnable_shards(tmp_path / "shards")
    # The compilation cache of the other training tests: the one-process reference
    # is the image smoke run of tests/test_train.py.
    cache = tmp_path_factory.getbasetemp() / "jax-cache"
    cluster = {
        "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{free_port()}",
        "JAX_NUM_PROCESSES": "2",
        "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
    }
    runs = {
        f"process{i}": _launch(
            tmp_path,
            f"process{i}",
            tmp_path / "two",
            shards,
            run_env(cache, devices=4, JAX_PROCESS_ID=str(i), **cluster),
        )
        for i in range(2)
    }
    runs["single"] = _launch(tmp_path, "single", tmp_path / "one", shards, run_env(cache))
    outputs = {}
    for name, run in runs.items():
        rc, out = run.finish(timeout=400)
        assert rc == 0, f"{name} failed:\n{out[-4000:]}"
        outputs[name] = out
    assert "processes 2 devices 8" in outputs["process0"]
    assert "processes 2 devices 8" in outputs["process1"]
    assert "processes 1 devices 8" in outputs["single"]
    # Only process 0 logs.
    assert "mesh: data=8 fsdp=1 seq=1 over 8 cpu devices, 2 process(es)" in outputs["process0"]
    assert "mesh:" not in outputs["process1"]

    dumps = {name: dict(np.load(tmp_path / f"{name}.npz")) for name in runs}
    # Both processes hold whole copies of every (replicated) parameter: the same ones.
    assert dumps["process0"].keys() == dumps["process1"].keys() == dumps["single"].keys()
    for key, value in dumps["process0"].items():
        np.testing.assert_array_equal(value, dumps["process1"][key], err_msg=key)
        # Equal to one process up to the order of floating-point sums.
        np.testing.assert_allclose(value, dumps["single"][key], atol=1e-5, err_msg=key)

    two = [r["loss"] for r in train_rows(tmp_path / "two")]
    one = [r["loss"] for r in train_rows(tmp_path / "one")]
    assert len(two) == len(one) == 6
    np.testing.assert_allclose(two, one, rtol=1e-5)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, False),
        ({"JAX_NUM_PROCESSES": "1", "JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, False),
        ({"JAX_NUM_PROCESSES": "4", "JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, True),
        ({"SLURM_NTASKS": "1"}, False),
        ({"SLURM_NTASKS": "16"}, True),
    ],
)
def test_the_environment_decides_whether_a_run_is_distributed(monkeypatch, env, expected):
    for name in ("JAX_NUM_PROCESSES", "JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("TPU_WORKER_HOSTNAMES", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert sharding.distributed_requested() is expected


def test_a_malformed_process_count_is_named(monkeypatch):
    monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES='two' is not an integer"):
        sharding.distributed_requested()
