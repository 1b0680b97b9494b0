"""Draws a synthetic interview with OpenCV: a seated player (and sometimes a moderator)
from their true 137 keypoints, in front of a sponsor board, behind a table.

The drawing follows the keypoints exactly (torso from the shoulders, arms along
shoulder-elbow-wrist, the head from the 68 face landmarks, fingers from the 21
hand joints), so a pose estimator run on the pixels should find roughly what
the JSON files say. Everything random about the scene comes from the video's
``scene_seed``, so a video renders the same every time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from hemo_jax.contract import atomic
from preprocess.synthetic.plan import TABLE_BELOW_NECK, Subject, SyntheticVideo

_SHIFT = 4  # sub-pixel precision for OpenCV drawing: coordinates × 16
_WALL = ((120, 110, 100), (90, 60, 40), (60, 60, 60), (130, 120, 60))
_BOARD_WORDS = ("OPEN", "ACE", "SPORT", "TENNIS", "CLUB", "BANK", "AIR", "WATCH", "CAR")
_WOOD = ((40, 70, 110), (30, 45, 70), (200, 200, 200), (25, 25, 110))


_ONE = 1 << _SHIFT


def _pt(p: np.ndarray) -> tuple[int, int]:
    return int(round(float(p[0]) * _ONE)), int(round(float(p[1]) * _ONE))


def _pts(p: np.ndarray) -> np.ndarray:
    return np.round(p * _ONE).astype(np.int32).reshape(-1, 1, 2)


def _line(img: np.ndarray, a, b, color, thickness: float) -> None:
    cv2.line(img, _pt(a), _pt(b), color, max(1, int(round(thickness))), cv2.LINE_AA, _SHIFT)


def _polyline(img: np.ndarray, points: np.ndarray, color, closed: bool = False, width=1) -> None:
    cv2.polylines(img, [_pts(points)], closed, color, max(1, int(width)), cv2.LINE_AA, _SHIFT)


def _fill(img: np.ndarray, points: np.ndarray, color) -> None:
    cv2.fillPoly(img, [_pts(points)], color, cv2.LINE_AA, _SHIFT)


def _disc(img: np.ndarray, center, radius: float, color) -> None:
    cv2.circle(img, _pt(center), max(_ONE, int(radius * _ONE)), color, -1, cv2.LINE_AA, _SHIFT)


def _oval(img: np.ndarray, center, axes: tuple[float, float], angle: float, color) -> None:
    size = (int(axes[0] * _ONE), int(axes[1] * _ONE))
    cv2.ellipse(img, _pt(center), size, angle, 0, 360, color, -1, cv2.LINE_AA, _SHIFT)


def _shade(color: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    return tuple(int(min(255, c * factor)) for c in color)


def scene(seed: int, size: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int, int], int]:
    """(wall with sponsor board, table colour, microphone side ±1) for one video."""
    rng = np.random.default_rng(seed)
    height, width = size
    img = np.empty((height, width, 3), np.uint8)
    img[:] = _WALL[int(rng.integers(len(_WALL)))]
    cell_w, cell_h = width // 4, height // 6
    font = cv2.FONT_HERSHEY_SIMPLEX
    for row in range(7):
        for col in range(5):
            x = col * cell_w - (row % 2) * cell_w // 2
            y = row * cell_h
            color = tuple(int(c) for c in rng.integers(30, 230, 3))
            cv2.rectangle(img, (x + 3, y + 3), (x + cell_w - 3, y + cell_h - 3), color, -1)
            word = _BOARD_WORDS[int(rng.integers(len(_BOARD_WORDS)))]
            ink = (255, 255, 255) if sum(color) < 380 else (20, 20, 20)
            at = (x + 6, y + cell_h // 2 + 4)
            cv2.putText(img, word, at, font, 0.33, ink, 1, cv2.LINE_AA)
    return img, _WOOD[int(rng.integers(len(_WOOD)))], 1 if rng.random() < 0.5 else -1


def _draw_head(img: np.ndarray, pose: np.ndarray, look: Subject, s: float) -> None:
    """Neck, ears, hair, face and its features from the 70 face landmarks."""
    face = pose[25:95]
    chin, brows = face[8], face[17:27]
    _line(img, pose[1], chin, _shade(look.skin, 0.9), 0.55 * s)
    for ear in (pose[17], pose[18]):
        _disc(img, ear, 0.12 * s, _shade(look.skin, 0.9))
    width = float(np.linalg.norm(face[16] - face[0]))
    top = brows.mean(0) + (brows.mean(0) - chin) * 0.35
    center = (top + chin) / 2
    axes = (width * 0.55, float(np.linalg.norm(top - chin)) * 0.55)
    angle = float(np.degrees(np.arctan2(face[16][1] - face[0][1], face[16][0] - face[0][0])))
    _oval(img, center + (top - chin) * 0.12, (axes[0] * 1.08, axes[1] * 1.02), angle, look.hair)
    _oval(img, center + (chin - top) * 0.05, (axes[0], axes[1] * 0.95), angle, look.skin)
    _fill(img, face[0:17], look.skin)
    dark = (30, 30, 30)
    _polyline(img, face[17:22], look.hair)
    _polyline(img, face[22:27], look.hair)
    for eye, pupil in ((face[36:42], face[68]), (face[42:48], face[69])):
        _fill(img, eye, (235, 235, 235))
        _polyline(img, eye, dark, closed=True)
        _disc(img, pupil, 0.025 * width, dark)
    _polyline(img, face[27:31], _shade(look.skin, 0.7))
    _polyline(img, face[31:36], _shade(look.skin, 0.7))
    _fill(img, face[48:60], (70, 70, 170))
    _fill(img, face[60:68], (40, 30, 60))


def draw_person(
    img: np.ndarray,
    pose: np.ndarray,
    look: Subject,
    table: tuple[float, tuple[int, int, int]] | None = None,
) -> None:
    """Draws one person from true keypoints [137, 2]; ``table`` (top y, colour) goes
    in front of the torso and behind the arms."""
    neck, r_sh, l_sh = pose[1], pose[2], pose[5]
    s = max(2.0, float(np.linalg.norm(l_sh - r_sh)) / 2)
    _fill(
        img,
        np.array([r_sh, l_sh, l_sh + (0.1 * s, 2.4 * s), r_sh + (-0.1 * s, 2.4 * s)]),
        look.shirt,
    )
    collar = [neck + (-0.3 * s, -0.05 * s), neck + (0.3 * s, -0.05 * s), neck + (0, 0.35 * s)]
    _fill(img, np.array(collar), _shade(look.skin, 0.95))
    if table is not None:
        h, w = img.shape[:2]
        top = int(round(table[0]))
        cv2.rectangle(img, (0, top), (w - 1, h - 1), table[1], -1)
        cv2.line(img, (0, top), (w - 1, top), (20, 20, 20), 1, cv2.LINE_AA)
    _draw_head(img, pose, look, s)
    # Arms over the torso and table, hands last (in front of the face when touching it).
    for sh, el, wr in ((2, 3, 4), (5, 6, 7)):
        _line(img, pose[sh], pose[el], look.shirt, 0.5 * s)
        _line(img, pose[el], pose[wr], look.shirt if look.long_sleeves else look.skin, 0.38 * s)
    for hand in (pose[95:116], pose[116:137]):
        _fill(img, hand[[0, 1, 5, 9, 13, 17]], look.skin)
        for finger in range(5):
            joints = [0] * (finger == 0) + list(range(1 + 4 * finger, 5 + 4 * finger))
            _polyline(img, hand[joints], _shade(look.skin, 0.85), width=0.1 * s)


def frames(video: SyntheticVideo) -> Iterator[np.ndarray]:
    """The video's BGR frames [H, W, 3] uint8, in order."""
    wall, table, mic_side = scene(video.scene_seed, video.frame_size)
    # The table does not move: place it from the player's median pose.
    neck_y = float(np.median(video.pose[:, 1, 1]))
    half = float(np.median(np.linalg.norm(video.pose[:, 5] - video.pose[:, 2], axis=-1))) / 2
    table_y = neck_y + TABLE_BELOW_NECK * half
    moderator = _moderator_look(video)
    for t in range(video.num_frames):
        img = wall.copy()
        if video.second_present[t]:
            draw_person(img, video.second_pose[t], moderator)
        if video.present[t]:
            draw_person(img, video.pose[t], video.subject, (table_y, table))
            mouth = video.pose[t, 25 + 57]
            base = np.array([mouth[0] + mic_side * half * 0.6, table_y])
            _line(img, base, base + (0, -0.9 * half), (25, 25, 25), 0.12 * half)
            _disc(img, base + (0, -0.95 * half), 0.15 * half, (15, 15, 15))
        yield img


def _moderator_look(video: SyntheticVideo) -> Subject:
    return dataclasses.replace(
        video.subject, shirt=(60, 50, 40), hair=(40, 40, 40), long_sleeves=True
    )


def write_video(video: SyntheticVideo, path: Path) -> None:
    """Encodes the frames as mp4 (mp4v) atomically: a temporary file renamed into place."""
    height, width = video.frame_size
    fourcc = cv2.VideoWriter_fourcc(*"mp4v")
    with atomic.replacing(path) as tmp:
        writer = cv2.VideoWriter(str(tmp), fourcc, video.fps, (width, height))
        try:
            if not writer.isOpened():
                raise RuntimeError(
                    f"{path}: OpenCV cannot write mp4v video (FFmpeg backend missing?)"
                )
            for img in frames(video):
                writer.write(img)
        finally:
            writer.release()
