"""Small shard sets with a learnable signal, and how training tests launch runs on them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from hemo_jax.contract.keypoint_layout import NUM_KEYPOINTS
from hemo_jax.contract.schema import VideoRecord
from hemo_jax.contract.shards import RecordInfo
from preprocess.shards import write_records

WORDS = {1: "great happy win confident", 0: "tough sad lose tired"}


def record(i: int, label: int, *, split: str, frames: int = 48, dim: int = 8, **kw) -> VideoRecord:
    """A seated figure whose wrists rise toward the face more often when label is 0."""
    rng = np.random.default_rng(i)
    kp = np.zeros((frames, NUM_KEYPOINTS, 3), np.float32)
    kp[..., :2] = rng.uniform(200, 400, (frames, NUM_KEYPOINTS, 2))
    kp[..., 2] = 0.9
    kp[:, 1, :2] = (300, 200)  # neck
    kp[:, 2, :2], kp[:, 5, :2] = (250, 200), (350, 200)  # shoulders
    lift = 120.0 if label == 0 else 0.0
    kp[:, 4, 1] = 320 - lift + rng.normal(0, 10, frames)  # right wrist height
    crop_frames = np.arange(0, frames, 4, dtype=np.int32)
    feats = rng.normal(0, 1, (len(crop_frames), dim)) + (0.8 if label else -0.8)
    return VideoRecord(
        video_id=f"v{i:03d}",
        subject_id=f"s{i % 5}",
        source="synthetic",
        split=split,
        fps=25.0,
        frame_size=(480, 640),
        keypoints=kp.astype(np.float32),
        keypoint_frames=np.arange(frames, dtype=np.int32),
        label=label if split != "unlabeled" else -1,
        crop_frames=crop_frames,
        boxes=np.zeros((len(crop_frames), 4), np.float32),
        image_features=feats.astype(np.float16),
        transcript=f"{WORDS[label]} match today",
        **kw,
    )


def write_learnable_shards(
    path, *, train: int = 16, test: int = 8, unlabeled: int = 8, keypoint_source: str = ""
) -> str:
    """Train/test/unlabeled records; image features have width ``FEATURE_DIM``."""
    kw = {"keypoint_source": keypoint_source}
    recs = [record(i, i % 2, split="train", **kw) for i in range(train)]
    recs += [
        record(100 + i, i % 2, split="test", pseudo_label=i % 2, pseudo_confidence=0.8, **kw)
        for i in range(test)
    ]
    recs += [
        record(200 + i, i % 2, split="unlabeled", pseudo_label=i % 2, pseudo_confidence=0.9, **kw)
        for i in range(unlabeled)
    ]
    write_records(recs, path, records_per_shard=8)
    return str(path)


FEATURE_DIM = 8  # image-feature width of record(); configs override model.image_feature_dim
ROOT = Path(__file__).resolve().parents[1]


def run_env(cache_dir: str | os.PathLike, *, devices: int = 8, **extra: str) -> dict[str, str]:
    """Environment for a training subprocess: CPU with ``devices`` host devices, offline.

    Compiling is most of a smoke run on a CPU, so runs share a persistent
    compilation cache (runs of one config compile once) and XLA skips LLVM's
    optimisation passes (half the compile time; tiny models run as fast).
    """
    env = dict(os.environ)
    env.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=(
            f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"
        ),
        JAX_COMPILATION_CACHE_DIR=str(cache_dir),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONPATH=str(ROOT),
    )
    env.update(extra)
    return env


class Run:
    """A training subprocess; stdout and stderr go to ``<workdir>.log`` (a pipe nobody
    reads while another run is awaited could fill and block the process)."""

    def __init__(
        self,
        cmd: list[str],
        workdir: str | os.PathLike,
        env: dict[str, str],
        *,
        log_path: str | os.PathLike | None = None,
    ):
        self.workdir = Path(workdir)
        self.log_path = Path(log_path or self.workdir.with_name(self.workdir.name + ".log"))
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True
            )

    def finish(self, timeout: float = 300) -> tuple[int, str]:
        """Waits for the run; its exit status and output."""
        self.proc.wait(timeout=timeout)
        return self.proc.returncode, self.log_path.read_text()

    def train_rows(self) -> list[dict]:
        return train_rows(self.workdir)


def train_rows(workdir: str | os.PathLike) -> list[dict]:
    """The ``train`` rows of a workdir's metrics.jsonl, in order."""
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    # Complete lines only: a run may be writing the last one.
    rows = [json.loads(line) for line in path.read_text().split("\n")[:-1] if line]
    return [r for r in rows if r["kind"] == "train"]


def launch_train(
    config: str, workdir: str | os.PathLike, *overrides: str, env: dict[str, str]
) -> Run:
    """Starts ``python -m hemo_jax.train --config configs/<config> --workdir W [overrides]``."""
    cmd = [sys.executable, "-m", "hemo_jax.train", f"--config=configs/{config}"]
    return Run([*cmd, f"--workdir={workdir}", *overrides], workdir, env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def record_info(video: str, subject: str, split: str = "train", label: int = 1, **kw) -> RecordInfo:
    """A manifest summary with the fields a split or stacking test does not vary."""
    defaults = dict(
        pseudo_label=-1,
        pseudo_confidence=0.0,
        num_frames=10,
        num_images=0,
        num_crops=0,
        feature_dim=None,
        transcript_chars=0,
        reasoning_chars=0,
    )
    return RecordInfo(video, subject, split, label, **{**defaults, **kw})
