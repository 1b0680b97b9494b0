"""preprocess.atomic: a JSON file is replaced whole or not at all."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from preprocess.atomic import write_json_atomic


def test_writes_and_replaces_json_creating_the_folder(tmp_path):
    path = tmp_path / "new" / "status.json"
    write_json_atomic(path, {"b": 1, "a": [1, 2]})
    write_json_atomic(path, {"c": 3})
    assert json.loads(path.read_text()) == {"c": 3}
    assert [p.name for p in path.parent.iterdir()] == ["status.json"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "status.json"
    write_json_atomic(path, {"kept": True})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"kept": True}
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


def test_default_converts_what_json_cannot(tmp_path):
    path = tmp_path / "result.json"
    write_json_atomic(path, {"ratio": np.float32(0.5), "ok": np.bool_(True)}, default=float)
    assert json.loads(path.read_text()) == {"ratio": 0.5, "ok": 1.0}


def test_new_file_gets_the_permissions_the_umask_allows(tmp_path):
    old = os.umask(0o027)
    try:
        write_json_atomic(tmp_path / "shared.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "shared.json").stat().st_mode) == 0o640
