"""The shard set a training config names."""

from __future__ import annotations

import pytest
from records import write_learnable_shards

from configs import pretrain
from hemo_jax.experiment import data


def test_an_unset_shard_set_is_an_error_naming_the_config_key():
    config = pretrain.get_config("keypoints,smoke")
    assert config.data.shards == ""
    with pytest.raises(ValueError, match=r"config\.data\.shards is not set"):
        data.shard_set(config)


def test_the_named_shard_set_opens(tmp_path):
    config = pretrain.get_config("keypoints,smoke")
    config.unlock()
    config.data.shards = write_learnable_shards(tmp_path / "shards", train=4, test=2, unlabeled=2)
    shards = data.shard_set(config)
    assert (
        sorted(info.split for info in shards.infos)
        == ["test"] * 2 + ["train"] * 4 + ["unlabeled"] * 2
    )
