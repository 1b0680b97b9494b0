"""preprocess.keypoints.openpose_binary: command, discovery and the run plumbing.

The real OpenPose binary is not available here. Its place is taken by a TEST DOUBLE: a small
executable script named ``openpose.bin`` that parses the same flags, records its arguments
and writes OpenPose-format JSON files (or fails, on request). It is a real subprocess, so the
search on PATH, the flags, the exit-code handling and the atomic rename are all exercised.
"""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

from hemo_jax.contract.keypoint_layout import NUM_KEYPOINTS
from preprocess.keypoints.openpose import read_openpose_dir
from preprocess.keypoints.openpose_binary import (
    OpenPoseNotFoundError,
    OpenPoseRunError,
    find_openpose,
    openpose_command,
    openpose_json_dir,
    run_openpose,
)

# The test double. OPENPOSE_DOUBLE_MODE: "ok" writes two frames, "fail" exits 3 with a
# message on stderr, "silent" exits 0 without writing anything.
DOUBLE = """#!{python}
import argparse, json, os, sys
p = argparse.ArgumentParser()
p.add_argument("--video"); p.add_argument("--write_json"); p.add_argument("--display")
p.add_argument("--render_pose"); p.add_argument("--model_folder")
p.add_argument("--face", action="store_true"); p.add_argument("--hand", action="store_true")
args = p.parse_args()
with open(os.environ["OPENPOSE_DOUBLE_LOG"], "w") as f:
    json.dump(sys.argv[1:], f)
mode = os.environ.get("OPENPOSE_DOUBLE_MODE", "ok")
if mode == "fail":
    print("Check failed: cuda error: no CUDA-capable device is detected", file=sys.stderr)
    sys.exit(3)
if mode == "ok":
    stem = os.path.splitext(os.path.basename(args.video))[0]
    for frame in range(2):
        person = {{
            "person_id": [-1],
            "pose_keypoints_2d": [10.0 + frame, 20.0, 0.9] * 25,
            "face_keypoints_2d": [30.0, 40.0, 0.8] * 70,
            "hand_left_keypoints_2d": [0.0] * 63,
            "hand_right_keypoints_2d": [50.0, 60.0, 0.7] * 21,
        }}
        name = "%s_%012d_keypoints.json" % (stem, frame)
        with open(os.path.join(args.write_json, name), "w") as f:
            json.dump({{"version": 1.3, "people": [person]}}, f)
"""


@pytest.fixture
def double(tmp_path, monkeypatch):
    """Puts the test double on an otherwise empty PATH; returns (binary, argument log)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    binary = bin_dir / "openpose.bin"
    binary.write_text(DOUBLE.format(python=sys.executable))
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "argv.json"
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("OPENPOSE_DOUBLE_LOG", str(log))
    monkeypatch.delenv("OPENPOSE_DOUBLE_MODE", raising=False)
    return binary, log


@pytest.fixture
def video(tmp_path):
    path = tmp_path / "interview 01.mp4"  # a space, to check arguments are not shell-split
    path.write_bytes(b"not decoded by the double")
    return path


def test_command_asks_for_face_hands_json_and_no_display():
    command = openpose_command("/op/openpose.bin", "/v/a.mp4", "/out/a", model_folder="/op/models")
    assert command == [
        "/op/openpose.bin",
        "--video",
        "/v/a.mp4",
        "--face",
        "--hand",
        "--write_json",
        "/out/a",
        "--display",
        "0",
        "--render_pose",
        "0",
        "--model_folder",
        "/op/models",
    ]
    assert "--model_folder" not in openpose_command("op", "v", "o")


def test_found_on_path_or_configured(double, tmp_path):
    binary, _ = double
    assert find_openpose() == binary
    assert find_openpose(binary) == binary
    not_executable = tmp_path / "openpose_copy.bin"
    not_executable.write_text("")
    with pytest.raises(OpenPoseNotFoundError, match="openpose_copy.bin.*not an executable"):
        find_openpose(not_executable)


def test_not_found_names_what_was_looked_for(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(OpenPoseNotFoundError, match="openpose.bin, OpenPoseDemo.exe"):
        find_openpose()


def test_run_writes_json_the_reader_reads(double, video, tmp_path):
    _, log = double
    out = tmp_path / "json" / "interview01"
    assert run_openpose(video, out) == out
    argv = json.loads(log.read_text())
    assert argv[:2] == ["--video", str(video.resolve())]
    assert argv[2:4] == ["--face", "--hand"]
    assert argv[6:] == ["--display", "0", "--render_pose", "0"]
    # Written next to the target, then renamed: no temporary folder is left behind.
    assert Path(argv[5]).parent == out.parent
    assert sorted(p.name for p in out.parent.iterdir()) == ["interview01"]
    sequence = read_openpose_dir(out)
    np.testing.assert_array_equal(sequence.frames, [0, 1])
    assert sequence.keypoints.shape == (2, NUM_KEYPOINTS, 3)
    np.testing.assert_allclose(sequence.keypoints[1, 0], [11.0, 20.0, 0.9], rtol=1e-6)
    np.testing.assert_allclose(sequence.keypoints[0, 116], [50.0, 60.0, 0.7], rtol=1e-6)


def test_failed_run_names_video_exit_code_and_stderr(double, video, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENPOSE_DOUBLE_MODE", "fail")
    out = tmp_path / "json" / "v"
    with pytest.raises(OpenPoseRunError, match=r"interview 01.mp4.*exited with 3.*no CUDA"):
        run_openpose(video, out)
    assert list(out.parent.iterdir()) == []  # neither the target nor a temporary folder


def test_run_that_writes_nothing_is_an_error(double, video, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENPOSE_DOUBLE_MODE", "silent")
    with pytest.raises(OpenPoseRunError, match="wrote no"):
        run_openpose(video, tmp_path / "json" / "v")
    assert list((tmp_path / "json").iterdir()) == []


def test_existing_json_folder_is_used_without_a_binary(video, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "nothing here"))
    folder = tmp_path / "skeleton" / "0001"
    folder.mkdir(parents=True)
    (folder / "0001_000000000000_keypoints.json").write_text('{"version":1.3,"people":[]}')
    assert openpose_json_dir(video, folder) == folder
    with pytest.raises(OpenPoseNotFoundError, match=r"interview 01.mp4.*no OpenPose JSON"):
        openpose_json_dir(video, tmp_path / "skeleton" / "0002")


def test_json_dir_runs_the_binary_once(double, video, tmp_path):
    _, log = double
    out = tmp_path / "json" / "v"
    openpose_json_dir(video, out)
    assert log.exists()
    log.unlink()
    openpose_json_dir(video, out)  # done already: the binary is not run again
    assert not log.exists()
    assert len(list(out.glob("*_keypoints.json"))) == 2
