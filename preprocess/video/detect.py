"""Person detectors: boxes of the people in a frame, for the crops (``preprocess.video.crops``).

Three detectors share one interface (``PersonDetector``), chosen by name with
``make_detector``:

- ``yolo``: ultralytics YOLO (default ``yolo11x.pt``, any YOLO weights file),
  batched, person class only. Weights are never downloaded.
- ``keypoints``: the box around a video's OpenPose keypoints, for corpora that
  come with skeletons (iMiGUE, the synthetic one).
- ``full-frame``: the whole frame.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_YOLO_WEIGHTS = "yolo11x.pt"
PERSON_CLASS = 0  # COCO "person"
DETECTORS = ("yolo", "keypoints", "full-frame")
DetectorName = Literal["yolo", "keypoints", "full-frame"]


# ---------------------------------------------------------------------------
# Detectors


class PersonDetector(Protocol):
    """Finds people in frames.

    ``detect`` returns, for each frame, a float32 array [n, 5] of candidate
    boxes ``(x1, y1, x2, y2, score)`` in source pixels (n may be 0).
    ``crop_margin`` is the context to add around its boxes when cropping, as a
    fraction of the box's longer side on each side: it depends on how tight
    the detector's boxes are.
    """

    name: str
    crop_margin: float

    def detect(
        self, frames: Sequence[np.ndarray], frame_indices: Sequence[int]
    ) -> list[np.ndarray]:
        """``frames`` are RGB uint8 [H, W, 3]; ``frame_indices`` their source indices."""
        ...


class WeightsNotFoundError(FileNotFoundError):
    """Model weights missing locally; this project never downloads them."""


def pick_device(requested: str | None = None) -> str:
    """``requested`` if it is usable, else the best of cuda, mps and cpu."""
    import torch

    if requested in (None, "", "auto"):
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    kind = requested.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {requested!r} requested but torch sees no CUDA device")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {requested!r} requested but MPS is not available")
    if kind not in ("cuda", "mps", "cpu"):
        raise ValueError(f"device {requested!r} is not one of cuda, cuda:N, mps, cpu, auto")
    return requested


def resolve_weights(weights: str | Path) -> Path:
    """The local weights file, or ``WeightsNotFoundError`` saying where to put it."""
    path = Path(weights).expanduser()
    if path.is_file():
        return path.resolve()
    raise WeightsNotFoundError(
        f"YOLO weights {str(weights)!r} not found at {path.resolve()}. Weights are never "
        f"downloaded at run time: put {path.name} there (the official files are in the "
        "Ultralytics assets releases, https://github.com/ultralytics/assets/releases) "
        "or pass the path of a local YOLO weights file."
    )


def load_yolo(weights: str | Path = DEFAULT_YOLO_WEIGHTS):
    """Loads any local ultralytics YOLO weights file (detection or segmentation)."""
    from ultralytics import YOLO

    path = resolve_weights(weights)
    # An existing local path makes ultralytics read the file and skip its download step.
    return YOLO(str(path))


def native_image_size(frame_size: tuple[int, int], largest: int = 640) -> int:
    """The network input side for a frame: its longer side rounded up to YOLO's stride
    of 32, at most ``largest``; small videos are not upscaled, which would only cost time."""
    return min(largest, -(-max(frame_size) // 32) * 32)


def _half_precision_args() -> dict[str, object]:
    # ultralytics 8.4 replaced `half=True` with `quantize=16`; 8.3 knows only `half`.
    from ultralytics.cfg import DEFAULT_CFG_DICT

    return {"quantize": 16} if "quantize" in DEFAULT_CFG_DICT else {"half": True}


class YoloDetector:
    """ultralytics YOLO, person class only, one batched call per list of frames.

    ``image_size`` None: the frame's own size rounded to the stride, at most 640.
    """

    name = "yolo"

    def __init__(
        self,
        weights: str | Path = DEFAULT_YOLO_WEIGHTS,
        *,
        device: str | None = None,
        confidence: float = 0.25,
        image_size: int | None = None,
        half: bool | None = None,
        crop_margin: float = 0.1,
    ):
        self.model = load_yolo(weights)
        self.weights = str(weights)
        self.device = pick_device(device)
        self.confidence = confidence
        self.image_size = image_size
        # fp16 only where it is fast and supported: CUDA.
        self.half = self.device.startswith("cuda") if half is None else half
        self._precision = _half_precision_args() if self.half else {}
        self.crop_margin = crop_margin

    def detect(
        self, frames: Sequence[np.ndarray], frame_indices: Sequence[int]
    ) -> list[np.ndarray]:
        if len(frames) == 0:
            return []
        # ultralytics takes numpy images as BGR, like cv2.imread gives them.
        bgr = [np.ascontiguousarray(f[..., ::-1]) for f in frames]
        results = self.model.predict(
            bgr,
            classes=[PERSON_CLASS],
            conf=self.confidence,
            imgsz=self.image_size or native_image_size(frames[0].shape[:2]),
            device=self.device,
            verbose=False,
            **self._precision,
        )
        out = []
        for r in results:
            xyxy = r.boxes.xyxy.float().cpu().numpy()
            conf = r.boxes.conf.float().cpu().numpy()
            out.append(np.concatenate([xyxy, conf[:, None]], axis=1).astype(np.float32))
        return out


class KeypointDetector:
    """The box around a frame's confident OpenPose keypoints (one person a frame).

    Frames without a keypoint row, or with fewer than ``min_points``
    keypoints above ``min_confidence``, get no box (the tracker carries the
    last one over them).
    """

    name = "keypoints"

    def __init__(
        self,
        keypoints: np.ndarray,
        keypoint_frames: np.ndarray,
        *,
        min_confidence: float = 0.1,
        min_points: int = 3,
        crop_margin: float = 0.25,
    ):
        keypoints = np.asarray(keypoints, np.float32)
        keypoint_frames = np.asarray(keypoint_frames)
        if keypoints.ndim != 3 or keypoints.shape[2] != 3:
            raise ValueError(f"keypoints: expected [T, K, 3], got shape {keypoints.shape}")
        if keypoint_frames.shape != keypoints.shape[:1]:
            raise ValueError(
                f"keypoint_frames: shape {keypoint_frames.shape} does not match "
                f"keypoints {keypoints.shape}"
            )
        self.keypoints = keypoints
        self._row = {int(f): i for i, f in enumerate(keypoint_frames)}
        self.min_confidence = min_confidence
        self.min_points = min_points
        self.crop_margin = crop_margin

    def detect(
        self, frames: Sequence[np.ndarray], frame_indices: Sequence[int]
    ) -> list[np.ndarray]:
        out = []
        for frame, index in zip(frames, frame_indices, strict=True):
            row = self._row.get(int(index))
            points = self.keypoints[row] if row is not None else np.zeros((0, 3), np.float32)
            good = points[points[:, 2] > self.min_confidence]
            if len(good) < self.min_points:
                out.append(np.zeros((0, 5), np.float32))
                continue
            height, width = frame.shape[:2]
            x1, y1 = np.clip(good[:, :2].min(0), 0, [width, height])
            x2, y2 = np.clip(good[:, :2].max(0), 0, [width, height])
            score = float(good[:, 2].mean())
            out.append(np.array([[x1, y1, x2, y2, score]], np.float32))
        return out


class FullFrameDetector:
    """The whole frame as the one candidate; crops are the letterboxed frame."""

    name = "full-frame"
    crop_margin = 0.0

    def detect(
        self, frames: Sequence[np.ndarray], frame_indices: Sequence[int]
    ) -> list[np.ndarray]:
        out = []
        for frame in frames:
            height, width = frame.shape[:2]
            out.append(np.array([[0, 0, width, height, 1.0]], np.float32))
        return out


def make_detector(
    name: DetectorName,
    *,
    weights: str | Path = DEFAULT_YOLO_WEIGHTS,
    device: str | None = None,
    keypoints: np.ndarray | None = None,
    keypoint_frames: np.ndarray | None = None,
) -> PersonDetector:
    """A detector by name; ``keypoints`` needs that video's keypoints and their frames."""
    if name == "yolo":
        return YoloDetector(weights, device=device)
    if name == "keypoints":
        if keypoints is None or keypoint_frames is None:
            raise ValueError("detector 'keypoints' needs keypoints and keypoint_frames")
        return KeypointDetector(keypoints, keypoint_frames)
    if name == "full-frame":
        return FullFrameDetector()
    raise ValueError(f"unknown detector {name!r}; choose one of {DETECTORS}")
