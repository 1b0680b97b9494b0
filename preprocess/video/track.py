"""Following the interviewee: one box per frame from each frame's candidate boxes.

Plain logic over per-frame candidate boxes (no model, no I/O). ``SubjectTracker``
picks the subject by size, centrality and persistence over the first frames,
then follows the candidate that overlaps most with the previous box, smooths the
box with an exponential moving average, carries the last box over frames without
a match, and gives a leading stretch without a match the first box found after
it. A subject without a match for ``max_misses`` frames (a camera cut) is chosen
again. ``track_subject`` runs it over a whole video's detections at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class TrackParams:
    """How the subject is chosen and followed.

    ``warmup``: frames (from the first with a candidate) looked at before
    choosing the subject, so a passer-by that is large in one frame does not
    win. ``max_misses``: frames without a match after which the subject is
    considered lost (e.g. a camera cut) and chosen again. ``smoothing``: the
    weight of the new box in the moving average (1.0 = no smoothing).
    """

    iou_match: float = 0.2
    warmup: int = 5
    max_misses: int = 6
    smoothing: float = 0.6
    weight_size: float = 1.0
    weight_center: float = 1.0
    weight_persistence: float = 2.0


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box [4] with each of boxes [n, 4] (x1, y1, x2, y2)."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def _as_candidates(candidates: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """float32 [n, 5]; boxes given without a score get score 1."""
    c = np.asarray(candidates, np.float32)
    if c.size == 0:
        return np.zeros((0, 5), np.float32)
    if c.ndim != 2 or c.shape[1] not in (4, 5):
        raise ValueError(f"candidates: expected [n, 4] or [n, 5] boxes, got shape {c.shape}")
    if c.shape[1] == 4:
        c = np.concatenate([c, np.ones((len(c), 1), np.float32)], axis=1)
    return c


class SubjectTracker:
    """Follows one person; ``push`` one frame's candidates at a time.

    ``push`` and ``finish`` return ``(box float32 [4], matched bool)`` for the
    frames whose box is decided, in frame order; a frame may wait (while the
    subject is being chosen) and is then returned by a later call.
    """

    def __init__(self, frame_size: tuple[int, int], params: TrackParams = TrackParams()):
        self.frame_size = frame_size
        self.params = params
        self._pending: list[np.ndarray] = []  # candidates of frames waiting for a subject
        self._subject: np.ndarray | None = None  # last matched raw box; None while choosing
        self._smooth: np.ndarray | None = None  # the box given out
        self._misses = 0

    def push(self, candidates: np.ndarray) -> list[tuple[np.ndarray, bool]]:
        cands = _as_candidates(candidates)
        if self._subject is not None:
            return [self._step(cands)]
        self._pending.append(cands)
        seen = [len(c) > 0 for c in self._pending]
        if any(seen) and len(seen) - seen.index(True) >= self.params.warmup:
            return self._acquire()
        return []

    def finish(self) -> list[tuple[np.ndarray, bool]]:
        out: list[tuple[np.ndarray, bool]] = []
        while self._pending:
            out.extend(self._acquire())
        return out

    def _step(self, cands: np.ndarray) -> tuple[np.ndarray, bool]:
        assert self._subject is not None and self._smooth is not None
        match = self._match(cands, self._subject)
        if match is None:
            self._misses += 1
            if self._misses > self.params.max_misses:
                self._subject = None  # lost: choose again from the next frames
            return self._smooth.copy(), False
        a = self.params.smoothing
        self._misses = 0
        self._subject = match
        self._smooth = a * match + (1 - a) * self._smooth
        return self._smooth.copy(), True

    def _match(self, cands: np.ndarray, previous: np.ndarray) -> np.ndarray | None:
        if len(cands) == 0:
            return None
        iou = box_iou(previous, cands[:, :4])
        best = int(np.argmax(iou))
        return cands[best, :4].copy() if iou[best] >= self.params.iou_match else None

    def _acquire(self) -> list[tuple[np.ndarray, bool]]:
        frames, self._pending = self._pending, []
        with_boxes = [c for c in frames if len(c)]
        if not with_boxes:  # only at the end: nobody found in the last frames
            height, width = self.frame_size
            fallback = self._smooth if self._smooth is not None else np.array([0, 0, width, height])
            return [(fallback.astype(np.float32), False) for _ in frames]
        every = np.concatenate(with_boxes)
        self._subject = every[int(np.argmax(self._scores(every, with_boxes))), :4].copy()
        self._smooth = None
        self._misses = 0
        out: list[tuple[np.ndarray, bool]] = []
        waiting = 0
        for i, cands in enumerate(frames):
            if self._subject is None:  # lost again while replaying: these frames wait again
                self._pending = frames[i:]
                break
            if self._smooth is not None:
                out.append(self._step(cands))
                continue
            match = self._match(cands, self._subject)
            if match is None:
                waiting += 1
                continue
            # The first match also stands for the frames before it.
            self._subject, self._smooth = match, match.copy()
            out.extend((match.copy(), False) for _ in range(waiting))
            out.append((match.copy(), True))
        return [(box.astype(np.float32), hit) for box, hit in out]

    def _scores(self, cands: np.ndarray, frames: list[np.ndarray]) -> np.ndarray:
        """Size, centrality and persistence (share of frames with an overlapping box)."""
        p = self.params
        height, width = self.frame_size
        boxes = cands[:, :4]
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / (height * width)
        cx = (boxes[:, 0] + boxes[:, 2]) / 2
        cy = (boxes[:, 1] + boxes[:, 3]) / 2
        offset = np.hypot((cx - width / 2) / (width / 2), (cy - height / 2) / (height / 2))
        centrality = 1 - np.clip(offset / np.sqrt(2), 0, 1)
        persistence = np.array(
            [np.mean([box_iou(b, f[:, :4]).max() >= p.iou_match for f in frames]) for b in boxes]
        )
        return (
            p.weight_size * np.sqrt(np.clip(area, 0, 1))
            + p.weight_center * centrality
            + p.weight_persistence * persistence
        )


@dataclasses.dataclass
class Track:
    boxes: np.ndarray  # float32 [T, 4], smoothed subject box per frame
    matched: np.ndarray  # bool [T], whether a candidate matched in that frame


def track_subject(
    detections: Sequence[np.ndarray],
    frame_size: tuple[int, int],
    params: TrackParams = TrackParams(),
) -> Track:
    """The subject's box in every frame, from each frame's candidate boxes."""
    tracker = SubjectTracker(frame_size, params)
    decided = [d for cands in detections for d in tracker.push(cands)] + tracker.finish()
    if not decided:
        return Track(np.zeros((0, 4), np.float32), np.zeros((0,), bool))
    return Track(np.stack([b for b, _ in decided]), np.array([m for _, m in decided]))
