"""Videos, settings and request counts for labeler tests against the simulated VLM server."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from preprocess.labeling.cache import file_sha256
from preprocess.labeling.config import LabelerConfig
from preprocess.labeling.labeler import label_videos
from preprocess.labeling.results import VideoItem
from preprocess.synthetic import vlm_oracle, vlm_sim

KEY = "AIzaSy-TEST-hemo-secret-key-0123456789"


def make_videos(root: Path, n: int, size: int = 2048) -> list[VideoItem]:
    """Random bytes named .mp4: the labeler only hashes and sends the bytes."""
    root.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(n):
        path = root / f"vid{i:02d}.mp4"
        path.write_bytes(os.urandom(size + i))
        items.append(VideoItem(f"vid{i:02d}", path, i % 2))
    return items


def write_real_video(path: Path, seconds: float, fps: int = 10) -> None:
    """A small mp4 OpenCV can read, for the container's duration."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (64, 48))
    for i in range(round(seconds * fps)):
        writer.write(np.full((48, 64, 3), i % 255, np.uint8))
    writer.release()


def truth_of(items: list[VideoItem]) -> dict[str, int]:
    return vlm_oracle.truth_for_videos([(v.path, v.label) for v in items])


def sha(item: VideoItem) -> str:
    return file_sha256(item.path)


def config(tmp_path: Path, sim: vlm_sim.SimulatedVLM, **overrides) -> LabelerConfig:
    """Settings for the simulation: quick backoff and polling, two requests in flight."""
    settings = {
        "cache_dir": tmp_path / "cache",
        "base_url": sim.base_url,
        "timeout_s": 5.0,
        "backoff_initial_s": 0.001,
        "backoff_max_s": 0.01,
        "file_poll_interval_s": 0.001,
        "concurrency": 2,
    }
    return LabelerConfig(**(settings | overrides))


def run(items, cfg, **kw):
    return label_videos(items, cfg, api_key=KEY, progress=False, **kw)


def turn_counts_in(log, video_sha: str, outcome: str | None = None) -> list[int]:
    """Requests for (turn 1, turn 2) of one video in a server log, optionally by outcome."""
    records = [r for r in log if r.kind == "generate" and r.video_sha == video_sha]
    if outcome:
        records = [r for r in records if r.outcome == outcome]
    return [sum(r.turn == t for r in records) for t in (1, 2)]


def turn_counts(sim: vlm_sim.SimulatedVLM, video_sha: str, outcome: str | None = None):
    return turn_counts_in(sim.log, video_sha, outcome)
