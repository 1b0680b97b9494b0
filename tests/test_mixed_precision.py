"""``train.compute_dtype`` reaches every Transformer and the fusion of the fused model."""

from __future__ import annotations

import jax
import pytest
from records import FEATURE_DIM, write_learnable_shards

from configs import demo
from hemo_jax.data import pipeline
from hemo_jax.experiment import data, objective
from hemo_jax.experiment.experiment import Experiment
from hemo_jax.models import transformer
from hemo_jax.training import sharding, trainer


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    shards = write_learnable_shards(tmp_path_factory.mktemp("precision") / "shards")
    config = _config("float32")
    with pipeline.make_loader(
        shards,
        data.pipeline_config(config, train=True),
        train=True,
        text_fn=data.text_fn(config, text_encoder=None),
    ) as loader:
        return next(loader)


def _config(compute_dtype: str):
    c = demo.get_config("fused,smoke")
    with c.unlocked():
        c.model.image_feature_dim = FEATURE_DIM
        c.model.fusion = "cross_attention"  # attention in the fusion too
        c.train.compute_dtype = compute_dtype
    return c


@pytest.mark.parametrize("compute_dtype", ["bfloat16", "float32"])
def test_every_attention_of_the_train_step_runs_in_the_compute_dtype(
    compute_dtype, batch, monkeypatch
):
    """The keypoint, image and text Transformers and the cross-attention fusion see
    queries, keys and values in the compute dtype; parameters stay float32."""
    seen = []

    def recording_attention(q, k, v, **kw):
        seen.append((q.dtype.name, k.dtype.name, v.dtype.name))
        return attention(q, k, v, **kw)

    attention = transformer.attention
    monkeypatch.setattr(transformer, "attention", recording_attention)
    config = _config(compute_dtype)
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    state = trainer.create_train_state(
        Experiment.from_config(config).model_fn,
        trainer.make_optimizer(
            lr=1e-3, warmup_steps=1, total_steps=2, weight_decay=0.0, clip_norm=1.0
        ),
        mesh,
    )
    assert {p.dtype.name for p in jax.tree.leaves(state.params())} == {"float32"}
    step = trainer.make_train_step(
        state,
        mesh,
        batch,
        loss_fn=objective.loss_fn(config.train.aux_loss_weight),
        options=trainer.StepOptions(compute_dtype=compute_dtype),
    )
    step.lower(state.state, batch, jax.random.key(0))  # traced here
    # Self-attention in three branches and the fusion's cross-attention, at least once each.
    assert len(seen) >= 4
    assert set(seen) == {(compute_dtype,) * 3}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"compute_dtype": "float16"}, "compute_dtype 'float16' is not one of"),
        ({"compute_dtype": "fp16"}, "compute_dtype 'fp16' is not one of"),
        ({"grad_accum": 0}, "grad_accum must be >= 1, got 0"),
    ],
)
def test_step_options_refuse_what_the_step_cannot_run(options, message):
    with pytest.raises(ValueError, match=message):
        trainer.StepOptions(**options)
