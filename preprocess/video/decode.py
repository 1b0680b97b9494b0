"""Video decoding with OpenCV: sampled RGB frames with their source indices.

Frames are sampled at a configured image rate (``image_fps``, default
``DEFAULT_IMAGE_FPS``) or densely (``"dense"``: every frame). Skipped frames
are only grabbed, never retrieved, so they cost the decode but not the colour
conversion and copy.

A file that cannot be opened, that ends before the frame count its container
announces, or whose frame cannot be retrieved raises ``VideoError`` naming the
file and the frame reached. ``map_videos`` runs a function over many videos,
records each ``VideoError`` and goes on with the rest.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Generic, Literal, TypeVar

import cv2
import numpy as np

log = logging.getLogger(__name__)

DEFAULT_IMAGE_FPS = 2.0
ImageRate = float | Literal["dense"]
T = TypeVar("T")


class VideoError(RuntimeError):
    """A video that cannot be decoded; names the file and the frame reached."""

    def __init__(self, path: str | Path, frame: int, message: str):
        super().__init__(f"video {str(path)!r}: {message} (frame reached: {frame})")
        self.path = str(path)
        self.frame = frame
        self.reason = message


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video.

    ``container_frames`` is the container's frame count, which for some
    formats is an estimate from the duration; the number of frames actually
    decoded is reported separately by the reader.
    """

    path: str
    fps: float
    frame_size: tuple[int, int]  # (H, W)
    container_frames: int


@dataclasses.dataclass
class DecodedVideo:
    """Sampled frames of one video, all in memory (for short videos and tests)."""

    info: VideoInfo
    frames: np.ndarray  # uint8 [N, H, W, 3], RGB
    frame_indices: np.ndarray  # int32 [N], source frame index of each frame
    decoded_frames: int  # frames the decoder delivered (sampled or not)
    truncated: bool  # ended before container_frames (only when strict=False)


def _frame_tolerance(container_frames: int) -> int:
    # Container counts estimated from the duration (MKV, some AVI) can be off
    # by a frame or two, so only a larger shortfall counts as truncation.
    return max(2, int(0.01 * container_frames))


class VideoReader:
    """An open video; iterate ``frames(image_fps)`` once to decode it.

    ``strict=True`` (the default) raises ``VideoError`` when the stream ends
    noticeably before the container's frame count; ``strict=False`` logs a
    warning, keeps the decoded prefix and sets ``truncated``.
    """

    def __init__(self, path: str | Path, *, strict: bool = True):
        self.path = Path(path)
        self.strict = strict
        self.decoded_frames = 0
        self.truncated = False
        if not self.path.is_file():
            raise VideoError(self.path, 0, "no such file")
        self._cap = cv2.VideoCapture(str(self.path))
        if not self._cap.isOpened():
            self._cap.release()
            raise VideoError(self.path, 0, "cannot open: not a video OpenCV can decode")
        fps = float(self._cap.get(cv2.CAP_PROP_FPS))
        height = int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        width = int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))
        if not (math.isfinite(fps) and fps > 0):
            self.close()
            raise VideoError(self.path, 0, f"no usable frame rate ({fps!r})")
        if height <= 0 or width <= 0:
            self.close()
            raise VideoError(self.path, 0, f"no usable frame size ({height}x{width})")
        self.info = VideoInfo(str(self.path), fps, (height, width), max(count, 0))

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._cap.release()

    def frames(self, image_fps: ImageRate = DEFAULT_IMAGE_FPS) -> Iterator[tuple[int, np.ndarray]]:
        """Yields ``(source frame index, RGB uint8 [H, W, 3])`` for sampled frames.

        A frame is kept when it is the first at or after each multiple of
        ``1 / image_fps`` seconds, so the kept rate is ``min(image_fps, fps)``.
        """
        step = _sampling_step(image_fps, self.info.fps)
        next_pick = 0.0
        index = -1
        while self._cap.grab():
            index += 1
            self.decoded_frames = index + 1
            if index + 1e-6 >= next_pick:
                ok, bgr = self._cap.retrieve()
                if not ok or bgr is None:
                    raise VideoError(self.path, index, "decoder returned no image")
                if bgr.shape[:2] != self.info.frame_size:
                    raise VideoError(
                        self.path,
                        index,
                        f"frame size {bgr.shape[:2]} differs from {self.info.frame_size}",
                    )
                while next_pick <= index + 1e-6:
                    next_pick += step
                yield index, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        self._check_complete()

    def _check_complete(self) -> None:
        expected = self.info.container_frames
        if self.decoded_frames == 0:
            raise VideoError(self.path, 0, "no frame could be decoded")
        if expected and self.decoded_frames < expected - _frame_tolerance(expected):
            message = (
                f"stream ends after {self.decoded_frames} of {expected} frames "
                "announced by the container (truncated or corrupt)"
            )
            if self.strict:
                raise VideoError(self.path, self.decoded_frames, message)
            log.warning("video %r: %s; keeping the decoded frames", str(self.path), message)
            self.truncated = True


def _sampling_step(image_fps: ImageRate, fps: float) -> float:
    """Source frames between two kept frames (1.0 keeps every frame)."""
    if image_fps == "dense":
        return 1.0
    if isinstance(image_fps, str) or not image_fps > 0:
        raise ValueError(f"image_fps must be a positive rate or 'dense', got {image_fps!r}")
    return max(1.0, fps / float(image_fps))


def read_video(
    path: str | Path, *, image_fps: ImageRate = DEFAULT_IMAGE_FPS, strict: bool = True
) -> DecodedVideo:
    """Decodes the sampled frames of one video into memory."""
    with VideoReader(path, strict=strict) as reader:
        indices, frames = [], []
        for index, frame in reader.frames(image_fps):
            indices.append(index)
            frames.append(frame)
        return DecodedVideo(
            info=reader.info,
            frames=np.stack(frames),
            frame_indices=np.asarray(indices, np.int32),
            decoded_frames=reader.decoded_frames,
            truncated=reader.truncated,
        )


@dataclasses.dataclass(frozen=True)
class VideoFailure:
    path: str
    frame: int
    reason: str


@dataclasses.dataclass
class BatchReport(Generic[T]):
    """Results of a function over many videos: what worked and what failed, and why."""

    done: dict[str, T]
    failed: list[VideoFailure]


def map_videos(paths: Iterable[str | Path], fn: Callable[[Path], T]) -> BatchReport[T]:
    """Applies ``fn`` to each video; a ``VideoError`` is recorded and the rest go on.

    Any other exception is a bug, not bad input, and propagates.
    """
    report: BatchReport[T] = BatchReport(done={}, failed=[])
    for path in paths:
        try:
            report.done[str(path)] = fn(Path(path))
        except VideoError as e:
            log.error("%s", e)
            report.failed.append(VideoFailure(e.path, e.frame, e.reason))
    return report
