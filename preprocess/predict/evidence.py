"""What a person can look at beside a prediction: the per-window evidence along the video,
how much the body moves, and the crops at the moments that pushed the prediction most."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np

from hemo_jax.contract.schema import VideoRecord


@dataclasses.dataclass(frozen=True)
class Window:
    """One window of the model's input: source frames, P(win) and its log-odds."""

    first_frame: int
    last_frame: int
    probability_win: float
    log_odds: float


def read_windows(path: str | Path) -> dict[str, list[Window]]:
    """``hemo_jax.predict --windows`` rows, per video in frame order."""
    out: dict[str, list[Window]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            out.setdefault(row["video_id"], []).append(
                Window(
                    int(row["first_frame"]),
                    int(row["last_frame"]),
                    float(row["probability_win"]),
                    float(row["log_odds"]),
                )
            )
    return {vid: sorted(ws, key=lambda w: w.first_frame) for vid, ws in out.items()}


def motion_energy(record: VideoRecord, min_confidence: float = 0.1) -> np.ndarray:
    """[T] mean displacement of the points seen in a keypoint row and the one before it,
    in fractions of the frame's diagonal (0 for the first row and rows sharing no point)."""
    kp = record.keypoints
    energy = np.zeros(len(kp), np.float64)
    if len(kp) < 2:
        return energy
    seen = kp[..., 2] > min_confidence
    both = seen[1:] & seen[:-1]
    step = np.linalg.norm(kp[1:, :, :2] - kp[:-1, :, :2], axis=-1)
    count = both.sum(axis=1)
    moved = np.where(both, step, 0.0).sum(axis=1)
    energy[1:] = np.divide(moved, count, out=np.zeros_like(moved), where=count > 0)
    return energy / float(np.hypot(*record.frame_size))


def strongest_windows(windows: list[Window], k: int = 3) -> list[Window]:
    """The ``k`` windows farthest from even odds, the strongest first."""
    return sorted(windows, key=lambda w: -abs(w.log_odds))[:k]


def crop_at(record: VideoRecord, window: Window) -> bytes | None:
    """The JPEG crop nearest the middle of ``window``; None when the record has no crops."""
    if not record.crops:
        return None
    middle = (window.first_frame + window.last_frame) / 2
    return record.crops[int(np.argmin(np.abs(record.crop_frames - middle)))]
