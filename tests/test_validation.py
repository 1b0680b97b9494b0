"""Selection never sees the test split: the validation split carved out of training,
early stopping on it, and the report naming the split that selected."""

from __future__ import annotations

import ml_collections
import pytest
from records import record_info

from configs import pretrain
from hemo_jax.contract.shards import RecordInfo
from hemo_jax.data.splits import group_of, select, validation_groups
from hemo_jax.experiment.selection import selection_note
from hemo_jax.training.early_stopping import EarlyStopping


@pytest.fixture
def infos() -> list[RecordInfo]:
    """40 labelled train videos of 10 subjects, 10 test videos, 4 unlabelled ones."""
    rows = [record_info(f"v{i:03d}", f"s{i % 10}", "train", i % 2) for i in range(40)]
    rows += [record_info(f"v{100 + i:03d}", f"t{i % 5}", "test", i % 2) for i in range(10)]
    rows += [record_info(f"v{200 + i:03d}", f"s{i}", "train", -1) for i in range(4)]
    return rows


def test_validation_is_carved_subject_disjoint_and_test_untouched(infos):
    train = select(infos, splits=("train",), val_fraction=0.2)
    val = select(infos, splits=("val",), val_fraction=0.2)
    test = select(infos, splits=("test",), val_fraction=0.2)
    everything = select(infos, splits=("train",))
    assert set(train.indices) | set(val.indices) == set(everything.indices)
    assert not set(train.indices) & set(val.indices)
    val_subjects = {group_of(infos[i]) for i in val.indices}
    train_subjects = {group_of(infos[i]) for i in train.indices if infos[i].label >= 0}
    assert val_subjects and not val_subjects & train_subjects
    assert len(val.indices) == 8  # fold 0 of 5: 2 of the 10 subjects, 4 videos each
    assert all(infos[i].label >= 0 for i in val.indices)  # unlabelled videos stay in train
    assert test.indices.tolist() == list(range(40, 50))
    # The carve depends on the ids alone: the same for every run, in any order.
    assert validation_groups(infos[::-1], ("train",), 0.2) == val_subjects


def test_no_validation_without_a_fraction_and_bad_fractions_refused(infos):
    with pytest.raises(ValueError, match=r"no records in splits \('val',\)"):
        select(infos, splits=("val",))
    with pytest.raises(ValueError, match="val_fraction 1.5"):
        select(infos, splits=("train",), val_fraction=1.5)
    with pytest.raises(ValueError, match="val_fraction 0.05 carves one of 20 .* too few"):
        select(infos, splits=("val",), val_fraction=0.05)


def test_fold_runs_leave_out_their_fold_and_the_validation(infos):
    val = set(select(infos, splits=("val",), val_fraction=0.2).indices)
    full = set(select(infos, splits=("train",), val_fraction=0.2).indices)
    fold0 = set(select(infos, splits=("train",), val_fraction=0.2, hold_out=(0, 2)).indices)
    fold1 = set(select(infos, splits=("train",), val_fraction=0.2, hold_out=(1, 2)).indices)
    assert fold0 < full and fold1 < full and not (fold0 | fold1) & val


def test_default_config_selects_on_validation_and_reports_on_test():
    c = pretrain.get_config("keypoints")
    assert (c.data.eval_split, c.data.test_split) == ("val", "test")
    assert c.data.val_fraction > 0
    note = selection_note(c, "test")
    assert "split 'val'" in note and "not held out" not in note
    assert "early stopping" not in note  # patience 0: no stop
    c.train.patience = 3
    assert "(the best checkpoint, early stopping) on split 'val'" in selection_note(c, "test")
    c.data.eval_split = "test"
    assert "not held out" in selection_note(c, "test")


def test_early_stopping_after_patience_and_on_resume(tmp_path):
    stop = EarlyStopping(str(tmp_path), "bacc", 2)
    assert not stop.update(10, {"bacc": 0.6})
    assert not stop.update(20, {"bacc": 0.7})
    assert not stop.update(30, {"bacc": 0.7})  # equal is not better
    assert stop.update(40, {"bacc": 0.65}) and stop.stopped_at == 40
    assert "0.7000 at step 20" in stop.reason
    # A run rerun after it stopped stays stopped.
    assert EarlyStopping(str(tmp_path), "bacc", 2).stopped
    # Resumed from step 20: the later evaluations are dropped and made again.
    tmp = tmp_path / "resumed"
    tmp.mkdir()
    stop = EarlyStopping(str(tmp), "bacc", 2)
    for step, value in ((10, 0.6), (20, 0.7), (30, 0.5)):
        stop.update(step, {"bacc": value})
    again = EarlyStopping(str(tmp), "bacc", 2)
    assert not again.update(30, {"bacc": 0.8})  # better than 0.7: the count restarts
    assert not again.update(40, {"bacc": 0.79})
    assert again.update(50, {"bacc": 0.78})


def test_patience_zero_never_stops_and_writes_nothing(tmp_path):
    stop = EarlyStopping(str(tmp_path), "bacc", 0)
    assert not any(stop.update(s, {"bacc": 1.0 / s}) for s in range(1, 20))
    assert not list(tmp_path.iterdir())


def test_old_configs_without_the_new_fields_still_read():
    c = ml_collections.ConfigDict(
        {"data": {"eval_split": "test", "train_splits": ("train",)}, "train": {}}
    )
    assert "not held out" in selection_note(c, "test")


def test_only_training_and_the_val_split_see_the_carve():
    from hemo_jax.experiment import data as inputs

    c = pretrain.get_config("keypoints")
    assert inputs.pipeline_config(c, train=True).val_fraction == 0.2
    assert inputs.pipeline_config(c, train=False).splits == ("val",)
    assert inputs.pipeline_config(c, train=False).val_fraction == 0.2
    # "train" asked by name (stacking's out-of-fold rows, predict): every train video.
    assert inputs.pipeline_config(c, train=False, split="train").val_fraction == 0.0
