"""Running the OpenPose binary on a video, when it is installed, into a JSON folder.

OpenPose writes one ``<video>_<12-digit frame>_keypoints.json`` file a frame,
the format ``preprocess.keypoints.openpose.read_openpose_dir`` reads. Corpora that ship
these folders (iMiGUE) need no binary: ``openpose_json_dir`` returns an
existing folder as it is and runs the binary only for a video without one.

The binary is the configured path, else the first of ``OPENPOSE_EXECUTABLES``
found on PATH. Without ``model_folder`` OpenPose looks for ``models/`` in the
working directory, so either run from the OpenPose root or pass it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from hemo_jax.contract import atomic

# Linux build (build/examples/openpose/openpose.bin) and the Windows portable demo.
OPENPOSE_EXECUTABLES = ("openpose.bin", "OpenPoseDemo.exe", "OpenPoseDemo")
JSON_PATTERN = "*_keypoints.json"


class OpenPoseNotFoundError(FileNotFoundError):
    """No OpenPose binary to run (and no existing JSON folder to use instead)."""


class OpenPoseRunError(RuntimeError):
    """The binary ran on a video and failed; names the video, exit code and stderr."""


def find_openpose(binary: str | Path | None = None) -> Path:
    """The configured binary, else the first of ``OPENPOSE_EXECUTABLES`` on PATH."""
    if binary:
        path = Path(binary).expanduser()
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise OpenPoseNotFoundError(
            f"OpenPose binary {str(binary)!r} (configured) is not an executable file"
        )
    for name in OPENPOSE_EXECUTABLES:
        found = shutil.which(name)
        if found:
            return Path(found)
    raise OpenPoseNotFoundError(
        f"OpenPose binary not found: none of {', '.join(OPENPOSE_EXECUTABLES)} is on PATH "
        "and no path is configured. Configure the path of openpose.bin "
        "(build/examples/openpose/openpose.bin in an OpenPose build), or provide the "
        "OpenPose JSON folder of each video instead."
    )


def openpose_command(
    binary: str | Path,
    video: str | Path,
    json_dir: str | Path,
    *,
    model_folder: str | Path | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """Body, face and hand keypoints to JSON, with no window and no rendering."""
    command = [
        str(binary),
        "--video",
        str(video),
        "--face",
        "--hand",
        "--write_json",
        str(json_dir),
        "--display",
        "0",
        "--render_pose",
        "0",
    ]
    if model_folder is not None:
        command += ["--model_folder", str(model_folder)]
    return command + list(extra_args)


def _has_json(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob(JSON_PATTERN))


def run_openpose(
    video: str | Path,
    json_dir: str | Path,
    *,
    binary: str | Path | None = None,
    model_folder: str | Path | None = None,
    extra_args: Sequence[str] = (),
    timeout_s: float | None = None,
) -> Path:
    """Runs OpenPose on ``video`` into ``json_dir`` and returns it.

    The binary writes into a temporary sibling folder that is renamed to
    ``json_dir`` only once it exited 0 and wrote at least one JSON file, so a
    ``json_dir`` that exists is complete, and an interrupted run leaves none.
    """
    video, json_dir = Path(video), Path(json_dir)
    if not video.is_file():
        raise FileNotFoundError(f"video {str(video)!r}: no such file")
    executable = find_openpose(binary)
    with atomic.replacing_dir(json_dir) as tmp:
        command = openpose_command(
            executable, video.resolve(), tmp, model_folder=model_folder, extra_args=extra_args
        )
        try:
            proc = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired as e:
            raise OpenPoseRunError(
                f"OpenPose on {str(video)!r}: no result after {timeout_s} s"
            ) from e
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-20:])
            raise OpenPoseRunError(
                f"OpenPose on {str(video)!r} exited with {proc.returncode}: {tail}"
            )
        if not _has_json(tmp):
            raise OpenPoseRunError(
                f"OpenPose on {str(video)!r} exited with 0 but wrote no {JSON_PATTERN} file"
            )
    return json_dir


def openpose_json_dir(
    video: str | Path,
    json_dir: str | Path,
    *,
    binary: str | Path | None = None,
    model_folder: str | Path | None = None,
    timeout_s: float | None = None,
) -> Path:
    """``json_dir`` when it already holds OpenPose JSON, else the binary's output there.

    Raises ``OpenPoseNotFoundError`` when there is neither a folder nor a binary.
    """
    json_dir = Path(json_dir)
    if _has_json(json_dir):
        return json_dir
    try:
        find_openpose(binary)
    except OpenPoseNotFoundError as e:
        raise OpenPoseNotFoundError(
            f"video {str(video)!r}: no OpenPose JSON in {str(json_dir)!r} and {e}"
        ) from e
    return run_openpose(
        video, json_dir, binary=binary, model_folder=model_folder, timeout_s=timeout_s
    )
