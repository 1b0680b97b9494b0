"""Person crops: detect people, follow the interviewee, cut square 224² JPEG crops.

Three detectors share one interface (``PersonDetector``), chosen by name with
``make_detector``:

- ``yolo``: ultralytics YOLO (default ``yolo11x.pt``, any YOLO weights file),
  batched, person class only. Weights are never downloaded.
- ``keypoints``: the box around a video's OpenPose keypoints, for corpora that
  come with skeletons (iMiGUE, the synthetic one).
- ``full-frame``: the whole frame.

The interviewee is followed over the detections by ``preprocess.track``.

``crop_video`` streams a video through decode → detect → track → crop, so only
the frames still waiting for their box are held in memory.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Literal, Protocol

import cv2
import numpy as np

from preprocess.track import SubjectTracker, TrackParams
from preprocess.video import (
    DEFAULT_IMAGE_FPS,
    BatchReport,
    ImageRate,
    VideoInfo,
    VideoReader,
    map_videos,
)

log = logging.getLogger(__name__)

DEFAULT_YOLO_WEIGHTS = "yolo11x.pt"
PERSON_CLASS = 0  # COCO "person"
CROP_SIZE = 224
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


# ---------------------------------------------------------------------------
# Cropping


def square_crop(
    frame: np.ndarray, box: np.ndarray, *, margin: float, size: int = CROP_SIZE
) -> np.ndarray:
    """A square around ``box`` grown by ``margin`` each side, resized to ``size``²; black
    where the square leaves the image."""
    height, width = frame.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    side = max(int(round(max(x2 - x1, y2 - y1, 2.0) * (1 + 2 * margin))), 2)
    left = int(round((x1 + x2) / 2 - side / 2))
    top = int(round((y1 + y2) / 2 - side / 2))
    # The part of the square inside the image, in source pixels and in crop pixels.
    ix1, iy1 = min(max(left, 0), width), min(max(top, 0), height)
    ix2, iy2 = max(min(left + side, width), ix1), max(min(top + side, height), iy1)
    scale = size / side
    cx1, cy1 = round((ix1 - left) * scale), round((iy1 - top) * scale)
    cx2, cy2 = round((ix2 - left) * scale), round((iy2 - top) * scale)
    crop = np.zeros((size, size, 3), np.uint8)
    if cx2 > cx1 and cy2 > cy1:
        crop[cy1:cy2, cx1:cx2] = _resize(frame[iy1:iy2, ix1:ix2], cx2 - cx1, cy2 - cy1)
    return crop


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    # Area averaging for shrinking, done by exact halves first: OpenCV's fast path for
    # those is several times quicker than one large non-integer INTER_AREA step.
    while image.shape[1] >= 2 * width and image.shape[0] >= 2 * height:
        image = cv2.resize(
            image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA
        )
    if image.shape[:2] == (height, width):
        return image
    shrink = image.shape[1] > width or image.shape[0] > height
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interpolation)


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    )
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


# ---------------------------------------------------------------------------
# One video, many videos


@dataclasses.dataclass(frozen=True)
class CropParams:
    image_fps: ImageRate = DEFAULT_IMAGE_FPS
    size: int = CROP_SIZE
    jpeg_quality: int = 90
    batch_size: int = 16  # frames per detector call
    margin: float | None = None  # None: the detector's own crop_margin
    strict: bool = True  # a truncated video is an error (see preprocess.video)
    track: TrackParams = TrackParams()


@dataclasses.dataclass
class VideoCrops:
    """One video's crops, with the VideoRecord fields ``crops``, ``crop_frames``, ``boxes``."""

    info: VideoInfo
    crops: list[bytes]  # JPEG, size² each
    crop_frames: np.ndarray  # int32 [T_img]
    boxes: np.ndarray  # float32 [T_img, 4], smoothed subject box in source pixels
    matched: np.ndarray  # bool [T_img], a detection matched the subject in that frame
    decoded_frames: int
    truncated: bool  # the video ended early and strict was off (see preprocess.video)
    detector: str


def _batched(items: Iterator[tuple[int, np.ndarray]], n: int) -> Iterator[list]:
    while batch := list(itertools.islice(items, n)):
        yield batch


def crop_video(
    path: str | Path, detector: PersonDetector, params: CropParams = CropParams()
) -> VideoCrops:
    """Decode → detect → track → crop, streaming; raises ``VideoError`` on a bad video.

    Frames are held only until the tracker decides their box: the first
    ``params.track.warmup`` frames with a person, and any stretch before them
    where nobody is found.
    """
    margin = detector.crop_margin if params.margin is None else params.margin
    with VideoReader(path, strict=params.strict) as reader:
        tracker = SubjectTracker(reader.info.frame_size, params.track)
        waiting: collections.deque[tuple[int, np.ndarray]] = collections.deque()
        crops: list[bytes] = []
        frames: list[int] = []
        boxes: list[np.ndarray] = []
        matched: list[bool] = []

        def emit(decided: list[tuple[np.ndarray, bool]]) -> None:
            for box, hit in decided:
                index, frame = waiting.popleft()
                crop = square_crop(frame, box, margin=margin, size=params.size)
                crops.append(encode_jpeg(crop, params.jpeg_quality))
                frames.append(index)
                boxes.append(box)
                matched.append(hit)

        for batch in _batched(reader.frames(params.image_fps), params.batch_size):
            detections = detector.detect([f for _, f in batch], [i for i, _ in batch])
            for item, cands in zip(batch, detections, strict=True):
                waiting.append(item)
                emit(tracker.push(cands))
        emit(tracker.finish())
        if not any(matched):
            log.warning("video %r: no person found by %s", str(path), detector.name)
        return VideoCrops(
            info=reader.info,
            crops=crops,
            crop_frames=np.asarray(frames, np.int32),
            boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
            matched=np.asarray(matched, bool),
            decoded_frames=reader.decoded_frames,
            truncated=reader.truncated,
            detector=detector.name,
        )


def crop_videos(
    paths: Iterable[str | Path], detector: PersonDetector, params: CropParams = CropParams()
) -> BatchReport[VideoCrops]:
    """``crop_video`` over many videos with one detector; a bad video is recorded, not fatal."""
    return map_videos(paths, lambda p: crop_video(p, detector, params))
