"""hemo_jax.contract.atomic: files and folders are replaced whole or not at all."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from hemo_jax.contract import atomic


def test_writes_and_replaces_json_creating_the_folder(tmp_path):
    path = tmp_path / "new" / "status.json"
    atomic.write_json(path, {"b": 1, "a": [1, 2]})
    atomic.write_json(path, {"c": 3})
    assert json.loads(path.read_text()) == {"c": 3}
    assert [p.name for p in path.parent.iterdir()] == ["status.json"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "status.json"
    atomic.write_json(path, {"kept": True})
    with pytest.raises(TypeError):
        atomic.write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"kept": True}
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


def test_default_converts_what_json_cannot(tmp_path):
    path = tmp_path / "result.json"
    atomic.write_json(path, {"ratio": np.float32(0.5), "ok": np.bool_(True)}, default=float)
    assert json.loads(path.read_text()) == {"ratio": 0.5, "ok": 1.0}


def test_new_file_gets_the_permissions_the_umask_allows(tmp_path):
    old = os.umask(0o027)
    try:
        atomic.write_json(tmp_path / "shared.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "shared.json").stat().st_mode) == 0o640


def test_replacing_publishes_only_a_block_that_ends_cleanly(tmp_path):
    path = tmp_path / "video.mp4"
    with atomic.replacing(path) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".mp4"  # writers pick codecs by suffix
        tmp.write_bytes(b"first")
    with pytest.raises(RuntimeError), atomic.replacing(path) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer died")
    assert path.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["video.mp4"]


def test_replacing_dir_renames_the_whole_folder_or_leaves_nothing(tmp_path):
    folder = tmp_path / "json" / "video_1"
    with pytest.raises(ValueError), atomic.replacing_dir(folder) as tmp:
        (tmp / "a.json").write_text("{}")
        raise ValueError("second file failed")
    assert list(folder.parent.iterdir()) == []
    with atomic.replacing_dir(folder) as tmp:
        (tmp / "a.json").write_text("{}")
        (tmp / "b.json").write_text("{}")
    assert sorted(p.name for p in folder.iterdir()) == ["a.json", "b.json"]
    assert [p.name for p in folder.parent.iterdir()] == ["video_1"]
