"""Small shard sets with a learnable signal, for training tests."""

from __future__ import annotations

import numpy as np

from hemo_jax.data.schema import NUM_KEYPOINTS, VideoRecord
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
        keypoints=kp.astype(np.float16),
        keypoint_frames=np.arange(frames, dtype=np.int32),
        label=label if split != "unlabeled" else -1,
        crop_frames=crop_frames,
        boxes=np.zeros((len(crop_frames), 4), np.float32),
        image_features=feats.astype(np.float16),
        transcript=f"{WORDS[label]} match today",
        **kw,
    )


def write_learnable_shards(path, *, train: int = 16, test: int = 8, unlabeled: int = 8) -> str:
    recs = [record(i, i % 2, split="train") for i in range(train)]
    recs += [record(100 + i, i % 2, split="test", pseudo_label=i % 2, pseudo_confidence=0.8)
             for i in range(test)]
    recs += [
        record(200 + i, i % 2, split="unlabeled", pseudo_label=i % 2, pseudo_confidence=0.9)
        for i in range(unlabeled)
    ]
    write_records(recs, path, records_per_shard=8)
    return str(path)
