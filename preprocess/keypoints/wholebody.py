"""Keypoints without the OpenPose binary: a pip pose estimator on the subject's boxes.

Chosen by name (the ``--pose`` values besides OpenPose's own), one of ``POSE_ESTIMATORS``:

- ``rtmw``: RTMW-l 384×288 (rtmlib's "performance" whole-body model), 133
  COCO-WholeBody points, run by ``rtmlib`` on ``onnxruntime``.
- ``dwpose``: DWPose-l 384×288, the same 133 points, same runtime.
- ``yolo11-pose``: ultralytics YOLO11x-pose, the 17 COCO body points only: feet, face
  and hands stay (0, 0, 0).

Each estimator takes RGB frames and the subject's box in each (x1, y1, x2, y2, source
pixels, as the person tracker gives them) and returns float32 [T, 137, 3] in the record's
OpenPose layout, in source-frame pixels, through the one table in
``preprocess.keypoints.coco_wholebody_to_openpose``. A frame whose box is missing (NaN,
empty or outside the frame) gets an all-zero row. Weights come through each library's own
download and cache (rtmlib: ``~/.cache/rtmlib/hub/checkpoints``; ultralytics: its weights
directory) unless ``weights`` names a local file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from hemo_jax.contract.keypoint_layout import NUM_KEYPOINTS
from preprocess.keypoints.coco_wholebody_to_openpose import (
    COCO_WHOLEBODY_POINTS,
    coco_wholebody_to_openpose,
)
from preprocess.video.track import box_iou

POSE_ESTIMATORS = ("rtmw", "dwpose", "yolo11-pose")

_ONNX_SDK = "https://download.openmmlab.com/mmpose/v1/projects"


@dataclasses.dataclass(frozen=True)
class RtmposeModel:
    """A top-down SimCC model as rtmlib loads it: ONNX file (URL or path) and input size."""

    weights: str
    input_size: tuple[int, int]  # (width, height), rtmlib's order


RTMPOSE_MODELS: dict[str, RtmposeModel] = {
    "rtmw": RtmposeModel(
        f"{_ONNX_SDK}/rtmw/onnx_sdk/rtmw-dw-x-l_simcc-cocktail14_270e-384x288_20231122.zip",
        (288, 384),
    ),
    "dwpose": RtmposeModel(
        f"{_ONNX_SDK}/rtmposev1/onnx_sdk/"
        "rtmpose-l_simcc-ucoco_dw-ucoco_270e-384x288-2438fd99_20230728.zip",
        (288, 384),
    ),
}
DEFAULT_YOLO_POSE_WEIGHTS = "yolo11x-pose.pt"


class PoseEstimator(Protocol):
    """RGB frames and the subject's box in each → float32 [T, 137, 3] (x px, y px, conf)."""

    name: str

    def estimate(self, frames: Sequence[np.ndarray], boxes: np.ndarray) -> np.ndarray: ...


def make_pose_estimator(
    name: str, *, weights: str | Path | None = None, device: str = "cpu", batch_size: int = 16
) -> PoseEstimator:
    """The estimator called ``name`` (one of ``POSE_ESTIMATORS``); ``weights`` overrides
    its default file (a local path, or for the rtmlib models also a URL)."""
    if name in RTMPOSE_MODELS:
        return RtmposeEstimator(name, weights=weights, device=device, batch_size=batch_size)
    if name == "yolo11-pose":
        return YoloPoseEstimator(
            weights or DEFAULT_YOLO_POSE_WEIGHTS, device=device, batch_size=batch_size
        )
    raise ValueError(f"unknown pose estimator {name!r}; choose one of {', '.join(POSE_ESTIMATORS)}")


def _checked_boxes(frames: Sequence[np.ndarray], boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, np.float32)
    if boxes.shape != (len(frames), 4):
        raise ValueError(f"boxes must be [{len(frames)}, 4] (one per frame); got {boxes.shape}")
    return boxes


def _has_box(box: np.ndarray, frame_size: tuple[int, ...]) -> bool:
    """A finite, non-empty box that overlaps the frame."""
    height, width = frame_size[:2]
    return bool(
        np.isfinite(box).all()
        and max(box[0], 0) < min(box[2], width)
        and max(box[1], 0) < min(box[3], height)
    )


class RtmposeEstimator:
    """RTMW or DWPose through rtmlib's ``RTMPose`` (its preprocessing, ONNX session and
    SimCC decoding), run over many boxes per session call when the model's batch axis is
    dynamic; rtmlib's own ``__call__`` runs one box per call."""

    def __init__(
        self,
        name: str = "rtmw",
        *,
        weights: str | Path | None = None,
        input_size: tuple[int, int] | None = None,
        device: str = "cpu",
        batch_size: int = 16,
    ):
        from rtmlib import RTMPose

        spec = RTMPOSE_MODELS[name]
        self.name = name
        self.model = RTMPose(
            str(weights or spec.weights),
            model_input_size=input_size or spec.input_size,
            backend="onnxruntime",
            device=device,
        )
        batch_axis = self.model.session.get_inputs()[0].shape[0]
        self.batch_size = batch_size if not isinstance(batch_axis, int) else batch_axis

    def estimate(self, frames: Sequence[np.ndarray], boxes: np.ndarray) -> np.ndarray:
        boxes = _checked_boxes(frames, boxes)
        out = np.zeros((len(frames), NUM_KEYPOINTS, 3), np.float32)
        todo = [i for i in range(len(frames)) if _has_box(boxes[i], frames[i].shape)]
        for start in range(0, len(todo), self.batch_size):
            rows = todo[start : start + self.batch_size]
            out[rows] = self._estimate_batch([frames[i] for i in rows], boxes[rows])
        return out

    def _estimate_batch(self, frames: list[np.ndarray], boxes: np.ndarray) -> np.ndarray:
        # rtmlib and the models' own demos feed OpenCV's BGR frames: give them the same.
        pairs = zip(frames, boxes, strict=True)
        prepared = [self.model.preprocess(f[..., ::-1], b) for f, b in pairs]
        images = np.stack([p[0] for p in prepared]).transpose(0, 3, 1, 2)
        session = self.model.session
        outputs = session.run(None, {session.get_inputs()[0].name: images.astype(np.float32)})
        points = np.zeros((len(frames), COCO_WHOLEBODY_POINTS, 3), np.float32)
        for i, (_, center, scale) in enumerate(prepared):
            xy, score = self.model.postprocess([o[i : i + 1] for o in outputs], center, scale)
            # SimCC maxima are not probabilities and can pass 1: clip to OpenPose's range.
            points[i] = np.concatenate([xy[0], np.clip(score[0], 0.0, 1.0)[:, None]], axis=1)
        return coco_wholebody_to_openpose(points)


def pick_subject(person_boxes: np.ndarray, target: np.ndarray) -> int | None:
    """Which detected person is the subject: the one whose box overlaps ``target`` most
    (None when nothing overlaps it)."""
    if len(person_boxes) == 0:
        return None
    iou = box_iou(target, person_boxes)
    best = int(np.argmax(iou))
    return best if iou[best] > 0 else None


class YoloPoseEstimator:
    """YOLO11-pose on the region around each box (the box grown by ``margin`` of its size
    on each side), batched in ultralytics' ``predict``; of the people it finds there, the
    one overlapping the box most is the subject."""

    name = "yolo11-pose"

    def __init__(
        self,
        weights: str | Path = DEFAULT_YOLO_POSE_WEIGHTS,
        *,
        device: str = "cpu",
        confidence: float = 0.25,
        margin: float = 0.25,
        image_size: int = 640,
        batch_size: int = 16,
    ):
        from ultralytics import YOLO

        self.model = YOLO(str(weights))
        if self.model.task != "pose":
            raise ValueError(f"{weights}: a {self.model.task} model, not a pose model")
        self.device = device
        self.confidence = confidence
        self.margin = margin
        self.image_size = image_size
        self.batch_size = batch_size

    def _region(self, box: np.ndarray, frame_size: tuple[int, int]) -> tuple[int, int, int, int]:
        grow = self.margin * (box[2:] - box[:2])
        x1, y1 = np.floor(np.maximum(box[:2] - grow, 0)).astype(int)
        x2, y2 = np.ceil(box[2:] + grow).astype(int)
        return int(x1), int(y1), min(int(x2), frame_size[1]), min(int(y2), frame_size[0])

    def estimate(self, frames: Sequence[np.ndarray], boxes: np.ndarray) -> np.ndarray:
        boxes = _checked_boxes(frames, boxes)
        out = np.zeros((len(frames), NUM_KEYPOINTS, 3), np.float32)
        todo = [i for i in range(len(frames)) if _has_box(boxes[i], frames[i].shape)]
        for start in range(0, len(todo), self.batch_size):
            rows = todo[start : start + self.batch_size]
            regions = [self._region(boxes[i], frames[i].shape[:2]) for i in rows]
            # ultralytics takes numpy images as BGR, like cv2.imread gives them.
            crops = [
                np.ascontiguousarray(frames[i][y1:y2, x1:x2, ::-1])
                for i, (x1, y1, x2, y2) in zip(rows, regions, strict=True)
            ]
            results = self.model.predict(
                crops,
                conf=self.confidence,
                imgsz=self.image_size,
                device=self.device,
                verbose=False,
            )
            for i, (x1, y1, _, _), result in zip(rows, regions, results, strict=True):
                offset = np.array([x1, y1], np.float32)
                found = result.boxes.xyxy.float().cpu().numpy()
                best = pick_subject(found, boxes[i] - np.tile(offset, 2))
                if best is None:
                    continue
                points = result.keypoints.data[best].float().cpu().numpy().copy()
                points[:, :2] += offset
                out[i] = coco_wholebody_to_openpose(points)
        return out
