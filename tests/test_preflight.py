"""``python -m hemo_jax.train --preflight``: the step compiled from shapes alone."""

from __future__ import annotations

import jax
import numpy as np
from records import FEATURE_DIM, write_learnable_shards

from configs import demo, pretrain
from hemo_jax import train
from hemo_jax.data import pipeline
from hemo_jax.experiment.experiment import Experiment
from hemo_jax.models import convert


def test_the_batch_spec_is_the_shape_of_a_real_training_batch(tmp_path):
    config = demo.get_config("fused,smoke")
    with config.unlocked():
        config.model.image_feature_dim = FEATURE_DIM
    exp = Experiment.from_config(config)
    shards = write_learnable_shards(tmp_path / "shards")
    with pipeline.make_loader(
        shards, exp.train_pipeline, train=True, text_fn=exp.text_fn
    ) as loader:
        batch = next(loader)
    spec = pipeline.batch_spec(exp.train_pipeline, text_length=exp.text_fn.max_length)
    assert {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in batch.items()} == {
        k: (v.shape, np.dtype(v.dtype)) for k, v in spec.items()
    }


def test_preflight_compiles_the_step_without_data_and_reports_its_size():
    config = pretrain.get_config("keypoints,smoke")  # no shard set: nothing is read
    with config.unlocked():
        config.mesh.data = 2
        config.mesh.fsdp = 4
    report = train.run_preflight(config)
    model = Experiment.from_config(config).model_fn(jax.random.key(0))
    assert report.parameters == report.trainable == convert.param_count(model)
    assert report.flops > 0
    assert report.memory.argument_size_in_bytes > 0
    text = "\n".join(report.lines())
    assert "mesh: data=2 fsdp=4 seq=1 over 8 cpu devices" in text
    assert f"parameters: {report.parameters:,}" in text
