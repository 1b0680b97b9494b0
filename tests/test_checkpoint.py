"""Checkpoint store: save/restore round trip, retention, strict branch loading."""

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from hemo_jax.experiment.experiment import load_trained
from hemo_jax.training import checkpoint, initialization


def _state(scale):
    return {
        "params": {"w": np.full((2, 3), scale, np.float32), "b": np.zeros(3, np.float32)},
        "opt": {"count": np.array(scale, np.int32)},
    }


def test_round_trip_and_retention(tmp_path):
    store = checkpoint.CheckpointStore(str(tmp_path), keep_last=2, best_metric="acc")
    for step, acc in [(1, 0.9), (2, 0.1), (3, 0.2), (4, 0.3)]:
        store.save(step, _state(step), data_iterator=None, config={"x": 1}, metrics={"acc": acc})
    # The last two and the best one (step 1) survive.
    assert sorted(store.all_steps()) == [1, 3, 4]
    assert store.best_step() == 1
    state, meta = store.restore(4, _state(0), data_iterator=None)
    np.testing.assert_array_equal(state["params"]["w"], np.full((2, 3), 4, np.float32))
    assert meta["step"] == 4 and meta["metrics"]["acc"] == pytest.approx(0.3)
    store.close()
    params, step = checkpoint.load_params(str(tmp_path), best_metric="acc")
    assert step == 1
    np.testing.assert_array_equal(params["w"], np.full((2, 3), 1, np.float32))


def test_resume_point_takes_the_workdir_then_config_resume(tmp_path):
    other = checkpoint.CheckpointStore(str(tmp_path / "other"), best_metric=None)
    other.save(3, _state(3), data_iterator=None, config={})
    other.close()
    empty = checkpoint.CheckpointStore(str(tmp_path / "empty"), best_metric=None)
    empty.close()
    run = checkpoint.CheckpointStore(str(tmp_path / "run"), best_metric=None)
    try:
        assert checkpoint.resume_point(run, str(tmp_path / "run"), "") is None
        src, step, origin = checkpoint.resume_point(
            run, str(tmp_path / "run"), str(tmp_path / "other")
        )
        assert (step, origin) == (3, str(tmp_path / "other")) and src is not run
        src.close()
        with pytest.raises(FileNotFoundError, match="config.resume=.*empty.* holds no checkpoint"):
            checkpoint.resume_point(run, str(tmp_path / "run"), str(tmp_path / "empty"))
        # The workdir's own checkpoint comes first.
        run.save(5, _state(5), data_iterator=None, config={})
        src, step, origin = checkpoint.resume_point(
            run, str(tmp_path / "run"), str(tmp_path / "other")
        )
        assert (src, step, origin) == (run, 5, str(tmp_path / "run"))
    finally:
        run.close()


def test_resuming_into_a_different_state_names_every_difference(tmp_path):
    store = checkpoint.CheckpointStore(str(tmp_path), best_metric=None)
    store.save(5, _state(1), data_iterator=None, config={})
    other = _state(0)
    other["params"]["w"] = np.zeros((2, 4), np.float32)
    other["opt"]["mu"] = {"w": np.zeros((2, 4), np.float32)}
    del other["params"]["b"]
    with pytest.raises(checkpoint.CheckpointMismatch) as err:
        store.restore(5, other, data_iterator=None)
    store.close()
    message = str(err.value)
    assert f"cannot resume from step 5 in {tmp_path / 'checkpoints'}" in message
    assert "missing in checkpoint: opt/mu/w" in message
    assert "not in this config: params/b" in message
    assert "shape of params/w: checkpoint (2, 3), config (2, 4)" in message


NO_HEADS = initialization.stage1_rule((r"/head/",))


def test_merge_params_is_strict_and_reports_every_problem():
    target = {
        "branches": {
            "keypoints": {"enc": {"w": np.zeros((2, 2))}, "head": {"w": np.zeros((2, 2))}},
            "text": {"w": np.zeros(3)},
        }
    }
    good = {"enc": {"w": np.ones((2, 2))}, "head": {"w": np.ones((4, 4))}}
    merged = checkpoint.merge_params(target, good, prefix="branches/keypoints", loaded=NO_HEADS)
    np.testing.assert_array_equal(merged["branches"]["keypoints"]["enc"]["w"], np.ones((2, 2)))
    # The skipped head keeps its initial value; other branches are untouched.
    np.testing.assert_array_equal(merged["branches"]["keypoints"]["head"]["w"], np.zeros((2, 2)))
    np.testing.assert_array_equal(merged["branches"]["text"]["w"], np.zeros(3))

    bad = {"enc": {"v": np.ones((2, 2))}, "extra": {"w": np.ones(1)}}
    with pytest.raises(checkpoint.CheckpointMismatch) as e:
        checkpoint.merge_params(target, bad, prefix="branches/keypoints", loaded=NO_HEADS)
    msg = str(e.value)
    assert "missing in checkpoint: branches/keypoints/enc/w" in msg
    assert "unexpected in checkpoint: branches/keypoints/enc/v" in msg
    assert "unexpected in checkpoint: branches/keypoints/extra/w" in msg

    shaped = {"enc": {"w": np.ones((3, 2))}}
    with pytest.raises(checkpoint.CheckpointMismatch, match=r"shape of branches/keypoints/enc/w"):
        checkpoint.merge_params(target, shaped, prefix="branches/keypoints", loaded=NO_HEADS)


def test_readers_name_a_mistyped_workdir_and_leave_no_trace_of_it(tmp_path):
    typo = tmp_path / "nothing"
    with pytest.raises(FileNotFoundError, match="no checkpoints in .*nothing"):
        checkpoint.load_params(str(typo))
    with pytest.raises(FileNotFoundError, match="no checkpoints in .*nothing"):
        load_trained(str(typo))
    store = checkpoint.CheckpointStore(str(tmp_path / "run"), best_metric=None)
    try:
        with pytest.raises(
            FileNotFoundError, match="config.resume=.*nothing.* holds no checkpoint"
        ):
            checkpoint.resume_point(store, str(tmp_path / "run"), str(typo))
    finally:
        store.close()
    assert not typo.exists()


def test_readers_name_a_step_that_is_not_there(tmp_path):
    store = checkpoint.CheckpointStore(str(tmp_path), best_metric=None)
    for step in (2, 4):
        store.save(step, _state(step), data_iterator=None, config={})
    store.close()
    with pytest.raises(FileNotFoundError, match=r"no checkpoint step 3 in .*holds \[2, 4\]"):
        checkpoint.load_params(str(tmp_path), step=3)
    with pytest.raises(ValueError, match="checkpoint 'last' is not latest, best or a step"):
        load_trained(str(tmp_path), checkpoint_step="last")


def test_load_params_reads_a_checkpoint_of_sharded_arrays_as_numpy(tmp_path):
    # Written from a 4-device mesh, parameters split over it: read back whole, on
    # the host, whatever mesh or number of processes the reader has.
    mesh = jax.make_mesh((4,), ("fsdp",), devices=jax.devices()[:4])
    value = np.arange(32, dtype=np.float32).reshape(8, 4)
    kernel = jax.device_put(value, NamedSharding(mesh, PartitionSpec("fsdp")))
    store = checkpoint.CheckpointStore(str(tmp_path), best_metric=None)
    store.save(5, {"params": {"w": kernel}, "opt": {}}, data_iterator=None, config={})
    # Host arrays, not arrays rebuilt on the saved devices (which a reader with
    # fewer devices does not have).
    assert type(store.restore_item(5, "state")["params"]["w"]) is np.ndarray
    store.close()
    params, step = checkpoint.load_params(str(tmp_path))
    assert step == 5
    assert type(params["w"]) is np.ndarray
    np.testing.assert_array_equal(params["w"], value)


def test_check_params_needs_only_shapes_and_names_the_origin():
    target = {"branches": {"image": {"w": jax.ShapeDtypeStruct((2, 3), np.float32)}}}
    checkpoint.check_params(target, {"w": np.ones((2, 3))}, prefix="branches/image")
    with pytest.raises(checkpoint.CheckpointMismatch) as e:
        checkpoint.check_params(
            target, {"w": np.ones((3, 3))}, prefix="branches/image", origin="/runs/image"
        )
    assert "cannot load branch 'branches/image' from '/runs/image'" in str(e.value)
    assert "shape of branches/image/w: checkpoint (3, 3), model (2, 3)" in str(e.value)
