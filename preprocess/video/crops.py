"""Person crops: decode, detect, follow the interviewee, cut square 224² JPEG crops.

``crop_video`` streams a video through decode (``preprocess.video.decode``) → detect
(``preprocess.video.detect``) → track (``preprocess.video.track``) → crop, so only the
frames still waiting for their box are held in memory.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np

from preprocess.video.decode import (
    DEFAULT_IMAGE_FPS,
    BatchReport,
    ImageRate,
    VideoInfo,
    VideoReader,
    map_videos,
)
from preprocess.video.detect import PersonDetector
from preprocess.video.track import SubjectTracker, TrackParams

log = logging.getLogger(__name__)

CROP_SIZE = 224


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
    strict: bool = True  # a truncated video is an error (see preprocess.video.decode)
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
    truncated: bool  # the video ended early and strict was off (see preprocess.video.decode)
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
