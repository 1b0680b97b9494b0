"""Synthetic interview corpus in the exact iMiGUE layout, so every command runs without real data.

``python -m preprocess synth --out DIR --videos N --seed S`` writes::

    DIR/Label/labels_20200831.csv        one row per micro-gesture clip (iMiGUE columns)
    DIR/Label/protocol.json              split lists in the format of imigue_protocol.json
    DIR/Data/skeleton/raw/<vid>/<vid>_<12-digit frame>_keypoints.json   (OpenPose 1.3)
    DIR/Data/transcripts/<vid>.txt       the press-conference transcript (Q:/A: lines)
    DIR/videos/<vid>.mp4                 the rendered interview (mp4v)
    DIR/synth_config.json                the settings, so a rerun resumes or refuses

Video ids are zero-padded (``0007``) in names and the CSV; subject ids are plain
integers; the protocol lists integers, as iMiGUE's does (``preprocess.imigue``
canonicalises all of them to ``"7"``).

The world. A seated player behind a table, filmed from the front, with head,
68+2 face landmarks and both hands: 137 OpenPose keypoints per frame, with
OpenPose-like jitter, confidences, hands that drop out, far ears that vanish
on head turns, leg joints at 0 under the table. Each video's hidden state is
win/lose (``win_rate`` of wins, exactly rounded). Losing raises a latent
*stress* (normal, mean shifted by ``stress_shift``), which raises the rates
of face touching, neck touching, head down, folding arms and fidgeting (and
lowers open-palm gestures); nodding, scratching the head and leaning forward
do not depend on it. Every subject has its own rate for every gesture
(log-normal), a dominant hand, a build, a head pose and a fidget amplitude;
every video has its own activity level. So any gesture appears in both
classes and no single frame tells the answer. Some videos cut away from the
player (frames with no person: ``"people": []``), some show a moderator at
the edge of the frame (two people; the JSON order is random), some miss a
few skeleton files (gaps in the frame numbering). Transcripts come from
``preprocess.transcripts``, with their own latent mood, independent of the
stress, so fusing the two modalities can beat either.

Splits. ``Label/protocol.json`` is built like iMiGUE's emotion protocol:
subjects are split in two halves; in each half every losing video is taken
with as many winning ones (seeded), giving a balanced train list and a
balanced, subject-disjoint test list (majority class scores 0.50 there); the
remaining wins are in neither list and become the ``unlabeled`` pool under
the ``emotion-protocol`` split policy. The two subject halves are also the
cross-subject lists.

Difficulty (``tests/test_synth.py`` asserts the band 0.65–0.85 on seed 0).
Balanced accuracy of a logistic regression, 5-fold cross-validated with
subjects grouped, on 240 default videos; seed 0, then mean ± sd (range) over
seeds 0–7:

- per-video keypoint statistics (mean, std and mean absolute velocity of
  neck-centred, shoulder-scaled upper-body joints and of the face and hand
  centroids): 0.732; 0.761 ± 0.033 (0.72–0.81);
- transcript bag of words (tf-idf unigrams and bigrams): 0.777;
  0.763 ± 0.022 (0.73–0.80);
- the two averaged (late fusion), seeds 0–2: 0.77, 0.81, 0.81.

The demo's corpus (``--fps 5 --min-seconds 20 --max-seconds 40``: longer
interviews, more gestures each) measured the same way: keypoints 0.803 (seed 0)
and 0.757 (seed 1); with 8–16 s at 10 fps instead, 0.654 and 0.673.

The knobs are ``stress_shift`` (keypoints) and ``TranscriptStyle`` (text).

Determinism: the same config gives byte-identical CSV, JSON, transcripts and
protocol. Who is in which video, its label and length come from a corpus plan
drawn up front; everything else about video ``i`` (motion, observation noise,
transcript, scene) from streams keyed by ``(seed, i)``. The mp4 files are identical too with the
OpenCV build tested here (``tests/test_synth.py`` checks).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import math
import multiprocessing
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from hemo_jax.contract import atomic
from hemo_jax.contract.keypoint_layout import NUM_KEYPOINTS
from preprocess.transcripts import TranscriptStyle, make_transcript

CSV_COLUMNS = (
    "video_id", "label_id", "start_time", "start_frame", "end_time", "end_frame",
    "class", "subject_id", "subject_gender", "subject_nationality", "win_or_lose",
)  # fmt: skip
NATIONALITIES = (
    "ESP", "SUI", "SRB", "GBR", "USA", "ARG", "FRA", "GER", "AUS", "JPN", "RUS", "CAN",
    "ITA", "CRO", "BEL", "POL", "CZE", "CHN", "BRA", "RSA",
)  # fmt: skip
LABELS_CSV = Path("Label/labels_20200831.csv")
PROTOCOL_JSON = Path("Label/protocol.json")
SKELETON_DIR = Path("Data/skeleton/raw")
TRANSCRIPT_DIR = Path("Data/transcripts")
VIDEO_DIR = Path("videos")
CONFIG_JSON = Path("synth_config.json")


@dataclasses.dataclass(frozen=True)
class Gesture:
    label_id: int
    name: str
    limbs: str  # "arm" (one, chosen per event), "arms" (both), "head", "torso"
    rate_per_min: float
    stress_gain: float  # log-rate change per unit of stress
    seconds: tuple[float, float]  # duration range


GESTURES = (
    Gesture(1, "touching face", "arm", 1.6, 0.55, (1.5, 4.0)),
    Gesture(2, "touching neck", "arm", 1.0, 0.55, (1.5, 3.5)),
    Gesture(3, "head down", "head", 1.4, 0.55, (1.5, 4.0)),
    Gesture(4, "folding arms", "arms", 0.8, 0.55, (3.0, 8.0)),
    Gesture(5, "fidgeting hands", "arms", 1.2, 0.55, (2.0, 5.0)),
    Gesture(6, "nodding", "head", 2.0, 0.0, (1.0, 2.5)),
    Gesture(7, "scratching head", "arm", 0.9, 0.0, (1.5, 3.0)),
    Gesture(8, "open-palm gesture", "arm", 2.2, -0.3, (1.0, 3.0)),
    Gesture(9, "leaning forward", "torso", 0.9, 0.0, (2.0, 5.0)),
)
_GESTURE = {g.name: g for g in GESTURES}
TABLE_BELOW_NECK = 1.5  # table top under the resting neck, in shoulder half-widths


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    videos: int = 100
    seed: int = 0
    win_rate: float = 0.72
    videos_per_subject: float = 4.0
    fps: float = 15.0
    width: int = 320
    height: int = 240
    min_seconds: float = 10.0
    max_seconds: float = 30.0
    stress_shift: float = 2.8  # mean latent stress of losers (winners: 0; sd 1)
    cutaway_rate: float = 0.2  # share of videos that cut away from the player
    second_person_rate: float = 0.3  # share of videos where a moderator shows up
    frame_gap_rate: float = 0.1  # share of videos missing a few skeleton files
    transcript: TranscriptStyle = TranscriptStyle()

    def __post_init__(self) -> None:
        problems = []
        if self.videos < 1:
            problems.append(f"videos={self.videos} must be >= 1")
        if not 0.0 < self.win_rate < 1.0:
            problems.append(f"win_rate={self.win_rate} must be in (0, 1)")
        if self.videos_per_subject < 1:
            problems.append(f"videos_per_subject={self.videos_per_subject} must be >= 1")
        if not self.fps > 0:
            problems.append(f"fps={self.fps} must be positive")
        if self.width < 64 or self.height < 64 or self.width % 2 or self.height % 2:
            problems.append(f"frame {self.width}x{self.height} must be even and >= 64")
        if not 0.5 <= self.min_seconds <= self.max_seconds:
            problems.append(
                f"seconds {self.min_seconds}..{self.max_seconds} must be 0.5 <= min <= max"
            )
        if problems:
            raise ValueError("SynthConfig: " + "; ".join(problems))

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Subject:
    subject_id: str
    gender: str
    nationality: str
    scale: float  # shoulder half-width as a share of the frame width
    x_offset: float  # share of the frame width
    y_offset: float  # share of the frame height
    dominant: int  # side of the dominant hand in the image: -1 left (person's right), +1 right
    gesture_rates: tuple[float, ...]  # multiplier per entry of GESTURES
    head_pose: tuple[float, float, float]  # yaw, pitch, roll bias (radians)
    sway: float  # idle body motion, in shoulder half-widths
    fidget: float  # fidgeting amplitude, in shoulder half-widths
    hand_spread: float  # resting hands apart, in shoulder half-widths
    rest_curl: float  # resting finger curl 0..1
    verbosity: float
    skin: tuple[int, int, int]  # BGR
    shirt: tuple[int, int, int]
    hair: tuple[int, int, int]
    long_sleeves: bool


@dataclasses.dataclass(frozen=True)
class Event:
    gesture: Gesture
    start_frame: int
    end_frame: int  # inclusive
    side: int  # for one-arm gestures: -1 image left (person's right), +1 image right


@dataclasses.dataclass
class SyntheticVideo:
    """One generated video: the truth (for rendering) and what OpenPose would report."""

    video_id: str
    subject: Subject
    label: int  # 1 win, 0 lose
    fps: float
    frame_size: tuple[int, int]  # (H, W)
    pose: np.ndarray  # float32 [T, 137, 2]: true positions of the player
    present: np.ndarray  # bool [T]: the player is on screen
    second_pose: np.ndarray  # float32 [T, 137, 2]: a moderator at the frame edge
    second_present: np.ndarray  # bool [T]
    keypoints: np.ndarray  # float32 [T, 137, 3]: observed player, zeros when absent
    second_keypoints: np.ndarray  # float32 [T, 137, 3]
    keypoint_frames: np.ndarray  # int32 [T']: frames that get a skeleton file
    events: list[Event]
    transcript: str
    scene_seed: int

    @property
    def num_frames(self) -> int:
        return int(self.pose.shape[0])

    def track(self) -> tuple[np.ndarray, np.ndarray]:
        """The player's keypoints on frames with a skeleton file, as the OpenPose reader
        gives them."""
        return self.keypoints[self.keypoint_frames], self.keypoint_frames


@dataclasses.dataclass(frozen=True)
class CorpusPlan:
    """Who is in which video and how long it is: cheap, decided up front from the seed."""

    config: SynthConfig
    subjects: tuple[Subject, ...]
    video_subject: tuple[int, ...]  # index into subjects, per video
    labels: tuple[int, ...]
    num_frames: tuple[int, ...]

    def video_id(self, index: int) -> str:
        return f"{index + 1:04d}"


def _rng(seed: int, *key: int) -> np.random.Generator:
    """An independent stream per (seed, purpose, index), stable when other parts change."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


_PLAN, _SUBJECT, _MOTION, _OBSERVE, _TEXT, _SCENE, _EXTRAS = range(7)
SKIN = ((205, 222, 250), (160, 190, 230), (120, 160, 205), (80, 120, 170), (55, 85, 130))
SHIRTS = (
    (40, 40, 200),
    (200, 90, 30),
    (30, 30, 30),
    (235, 235, 235),
    (40, 150, 40),
    (140, 60, 140),
)
HAIR = ((20, 20, 20), (30, 50, 90), (60, 110, 170), (140, 140, 150), (15, 30, 60))


def _make_subject(seed: int, index: int) -> Subject:
    rng = _rng(seed, _SUBJECT, index)
    dominant = -1 if rng.random() < 0.85 else 1  # most players are right-handed
    return Subject(
        subject_id=str(index + 1),
        gender="M" if rng.random() < 0.5 else "F",
        nationality=NATIONALITIES[int(rng.integers(len(NATIONALITIES)))],
        scale=float(rng.uniform(0.12, 0.16)),
        x_offset=float(rng.uniform(-0.06, 0.06)),
        y_offset=float(rng.uniform(-0.03, 0.03)),
        dominant=dominant,
        gesture_rates=tuple(float(v) for v in rng.lognormal(0.0, 0.5, len(GESTURES))),
        head_pose=(
            float(rng.normal(0, 0.1)),
            float(rng.normal(0, 0.08)),
            float(rng.normal(0, 0.05)),
        ),
        sway=float(rng.uniform(0.01, 0.04)),
        fidget=float(rng.uniform(0.04, 0.1)),
        hand_spread=float(rng.uniform(0.35, 0.8)),
        rest_curl=float(rng.uniform(0.3, 0.6)),
        verbosity=float(rng.uniform(0.6, 1.4)),
        skin=SKIN[int(rng.integers(len(SKIN)))],
        shirt=SHIRTS[int(rng.integers(len(SHIRTS)))],
        hair=HAIR[int(rng.integers(len(HAIR)))],
        long_sleeves=bool(rng.random() < 0.4),
    )


def plan_corpus(config: SynthConfig) -> CorpusPlan:
    rng = _rng(config.seed, _PLAN)
    n = config.videos
    n_subjects = max(1, min(n, round(n / config.videos_per_subject)))
    # Every subject gets a video, the rest are spread at random; then shuffled.
    assignment = np.concatenate(
        [np.arange(n_subjects), rng.integers(0, n_subjects, n - n_subjects)]
    )
    assignment = rng.permutation(assignment)
    wins = round(config.win_rate * n)
    labels = rng.permutation(np.r_[np.ones(wins, int), np.zeros(n - wins, int)])
    seconds = rng.uniform(config.min_seconds, config.max_seconds, n)
    frames = np.maximum(2, np.round(seconds * config.fps)).astype(int)
    return CorpusPlan(
        config=config,
        subjects=tuple(_make_subject(config.seed, i) for i in range(n_subjects)),
        video_subject=tuple(int(s) for s in assignment),
        labels=tuple(int(v) for v in labels),
        num_frames=tuple(int(v) for v in frames),
    )


# ---------------------------------------------------------------------------
# Geometry: a face template (68 landmarks + 2 pupils, 3-D so the head can turn),
# a hand template (wrist + 4 joints per finger) and the body around them.


def _face_template() -> np.ndarray:
    """[70, 3] in face widths, x right, y down, z towards the camera; origin mid-face.

    The 68-point layout runs left to right across the image within each part
    (jaw, brows, nose, eyes from their left corner clockwise, lips), then the
    two pupils.
    """
    pts = []
    for i in range(17):  # jaw, from the image-left ear down round the chin
        phi = -0.08 * math.pi + i / 16 * 1.16 * math.pi
        pts.append((-0.5 * math.cos(phi), -0.1 + 0.6 * math.sin(phi), -0.35 + 0.42 * math.sin(phi)))
    for x0 in (-0.38, 0.08):  # brows
        for u in np.linspace(0, 1, 5):
            inner = u if x0 < 0 else 1 - u  # 1 at the end nearest the nose
            pts.append((x0 + 0.3 * u, -0.36 - 0.05 * math.sin(math.pi * u), 0.02 + 0.1 * inner))
    for y, z in ((-0.28, 0.1), (-0.19, 0.15), (-0.1, 0.2), (-0.01, 0.28)):  # nose bridge
        pts.append((0.0, y, z))
    for x in (-0.1, -0.05, 0.0, 0.05, 0.1):  # nostrils
        pts.append((x, 0.06 if x == 0.0 else 0.04, 0.2 if x == 0.0 else 0.15))
    eye = ((-0.08, 0.0), (-0.03, -0.03), (0.03, -0.03), (0.08, 0.0), (0.03, 0.03), (-0.03, 0.03))
    for cx in (-0.2, 0.2):
        pts += [(cx + dx, -0.24 + dy, 0.05) for dx, dy in eye]
    outer = (
        (-0.18, 0.22), (-0.11, 0.19), (-0.04, 0.175), (0.0, 0.18), (0.04, 0.175), (0.11, 0.19),
        (0.18, 0.22), (0.11, 0.27), (0.04, 0.29), (0.0, 0.295), (-0.04, 0.29), (-0.11, 0.27),
    )  # fmt: skip
    inner_lips = ((-0.15, 0.22), (-0.05, 0.205), (0.0, 0.205), (0.05, 0.205),
                  (0.15, 0.22), (0.05, 0.24), (0.0, 0.24), (-0.05, 0.24))  # fmt: skip
    pts += [(x, y, 0.12 - 0.3 * abs(x)) for x, y in outer + inner_lips]
    pts += [(-0.2, -0.24, 0.07), (0.2, -0.24, 0.07)]  # pupils
    return np.array(pts, np.float32)


FACE_TEMPLATE = _face_template()
EAR_TEMPLATE = np.array([(-0.52, -0.12, -0.4), (0.52, -0.12, -0.4)], np.float32)
LOWER_LIP = np.array([55, 56, 57, 58, 59, 65, 66, 67])
CHIN = np.array([6, 7, 8, 9, 10])
UPPER_LIDS = np.array([37, 38, 43, 44])

# Hand: (u along the hand towards the fingertips, v across), in hand lengths, person's right hand.
HAND_TEMPLATE = np.array([
    (0.0, 0.0),
    (0.1, 0.18), (0.22, 0.3), (0.33, 0.38), (0.43, 0.43),  # thumb
    (0.5, 0.17), (0.68, 0.19), (0.79, 0.2), (0.88, 0.2),  # index
    (0.52, 0.05), (0.72, 0.05), (0.86, 0.05), (0.98, 0.05),  # middle
    (0.5, -0.07), (0.68, -0.08), (0.8, -0.085), (0.9, -0.09),  # ring
    (0.46, -0.17), (0.6, -0.2), (0.68, -0.22), (0.75, -0.23),  # pinky
], np.float32)  # fmt: skip
# How far each joint folds back towards its knuckle per unit of curl (knuckle joints stay).
_CURL = np.array([0, 0, 0.15, 0.3, 0.45] + [0, 0.35, 0.75, 1.1] * 4, np.float32)
_KNUCKLE = np.array([0, 1, 1, 1, 1] + [k for k in (5, 9, 13, 17) for _ in range(4)])


def _smooth_noise(rng: np.random.Generator, n: int, fps: float, seconds: float, dims: int = 1):
    """Zero-mean unit-variance noise varying on a time scale of ``seconds`` [n, dims]."""
    step = fps * seconds
    knots = rng.standard_normal((int(n / step) + 3, dims))
    t = np.arange(n) / step
    i = t.astype(int)
    f = ((1 - np.cos(np.pi * (t - i))) / 2)[:, None]
    return (knots[i] * (1 - f) + knots[i + 1] * f).astype(np.float32)


def _envelope(event: Event, n: int, fps: float) -> np.ndarray:
    """0 → 1 → 0 over the event with smooth 0.4 s ramps [n]."""
    t = np.arange(n, dtype=np.float32)
    ramp = max(1.0, 0.4 * fps)
    w = np.clip(np.minimum((t - event.start_frame) / ramp, (event.end_frame - t) / ramp), 0, 1)
    return w * w * (3 - 2 * w)


def _rotation(yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """[T, 3, 3]: yaw about y, then pitch about x (positive: head down), then roll in-plane."""
    cy, sy, cp, sp, cr, sr = (f(a) for a in (yaw, pitch, roll) for f in (np.cos, np.sin))
    one, zero = np.ones_like(yaw), np.zeros_like(yaw)
    r_yaw = np.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).reshape(-1, 3, 3)
    r_pitch = np.stack([one, zero, zero, zero, cp, sp, zero, -sp, cp], -1).reshape(-1, 3, 3)
    r_roll = np.stack([cr, -sr, zero, sr, cr, zero, zero, zero, one], -1).reshape(-1, 3, 3)
    return r_roll @ r_pitch @ r_yaw


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-6)


def _hand(
    wrist: np.ndarray, direction: np.ndarray, curl: np.ndarray, length: np.ndarray, side: int
):
    """[T, 21, 2] hand joints; ``side`` -1 for the person's right hand (image left)."""
    tpl = np.broadcast_to(HAND_TEMPLATE, (len(wrist), 21, 2))
    knuckle = tpl[:, _KNUCKLE]
    tpl = knuckle + (tpl - knuckle) * (1 - curl[:, None, None] * _CURL[None, :, None])
    d = _unit(direction)
    across = np.stack([-d[:, 1], d[:, 0]], -1) * (-side)
    u, v = tpl[..., :1], tpl[..., 1:]
    return wrist[:, None] + length[:, None, None] * (u * d[:, None] + v * across[:, None])


@dataclasses.dataclass
class _Motion:
    pose: np.ndarray  # [T, 137, 2]
    scale: np.ndarray  # [T] shoulder half-width in px
    yaw: np.ndarray  # [T]
    hands_hidden: np.ndarray  # [T, 2] 0..1 (person's left, person's right)
    face_touch: np.ndarray  # [T] 0..1


def _animate(
    rng: np.random.Generator,
    subject: Subject,
    events: list[Event],
    n: int,
    fps: float,
    size: tuple[int, int],
    camera: tuple[float, float],
) -> _Motion:
    """The player's true 137 keypoints over ``n`` frames."""
    height, width = size
    zoom, shift = camera
    t = np.arange(n, dtype=np.float32) / fps
    sw0 = subject.scale * width * zoom
    envelopes = [(e, _envelope(e, n, fps)) for e in events]

    def total(name: str) -> np.ndarray:
        return sum((w for e, w in envelopes if e.gesture.name == name), np.zeros(n, np.float32))

    lean = total("leaning forward")
    s = sw0 * (1 + 0.07 * lean)
    neck0 = np.array(
        [width / 2 + (subject.x_offset + shift) * width, height * (0.5 + subject.y_offset)]
    )
    sway = _smooth_noise(rng, n, fps, 3.0, 2) * subject.sway * sw0
    neck = neck0 + sway + np.stack([0 * t, 0.012 * sw0 * np.sin(2 * np.pi * 0.25 * t)], -1)
    neck[:, 1] += 0.2 * sw0 * lean
    table_y = neck0[1] + TABLE_BELOW_NECK * sw0

    # Head: turns towards questioners, nods, drops; the face template follows.
    head_down = total("head down")
    nod = total("nodding") * 0.18 * np.sin(2 * np.pi * 1.8 * t)
    yaw = subject.head_pose[0] + 0.28 * _smooth_noise(rng, n, fps, 2.5)[:, 0]
    pitch = subject.head_pose[1] + 0.05 * _smooth_noise(rng, n, fps, 2.0)[:, 0]
    pitch = pitch + 0.55 * head_down + nod
    roll = subject.head_pose[2] + 0.04 * _smooth_noise(rng, n, fps, 3.0)[:, 0]
    head = neck + np.stack([0 * t, -1.15 * s + 0.12 * s * head_down], -1)
    face_width = 0.75 * s
    tpl = np.broadcast_to(FACE_TEMPLATE, (n, 70, 3)).copy()
    talk = np.abs(_smooth_noise(rng, n, fps, 0.15)[:, 0]) * (
        _smooth_noise(rng, n, fps, 2.0)[:, 0] > -0.3
    )
    tpl[:, LOWER_LIP, 1] += 0.06 * talk[:, None]
    tpl[:, CHIN, 1] += 0.04 * talk[:, None]
    blink_at = np.cumsum(rng.uniform(2.0, 5.0, int(t[-1] / 2) + 2) * fps).astype(int)
    blink = np.isin(np.arange(n), np.concatenate([blink_at, blink_at + 1]))
    tpl[blink[:, None] & np.isin(np.arange(70), UPPER_LIDS)[None], 1] += 0.03
    pivot = np.array([0.0, 0.6, -0.4], np.float32)
    rot = _rotation(yaw, pitch, roll)
    rot_t = rot.transpose(0, 2, 1).astype(np.float32)
    face3 = (tpl - pivot) @ rot_t + pivot
    ears3 = (EAR_TEMPLATE - pivot) @ rot_t + pivot
    face = head[:, None] + face_width[:, None, None] * face3[..., :2]
    ears = head[:, None] + face_width[:, None, None] * ears3[..., :2]

    pose = np.zeros((n, NUM_KEYPOINTS, 2), np.float32)
    pose[:, 25:95] = face
    pose[:, 0] = face[:, 30]  # nose tip
    pose[:, 1] = neck
    pose[:, 15], pose[:, 16] = face[:, 68], face[:, 69]  # eyes at the pupils
    pose[:, 17], pose[:, 18] = ears[:, 0], ears[:, 1]
    pose[:, 8] = neck + np.stack([0 * t, 2.3 * s], -1)  # hips, hidden by the table
    pose[:, 9] = pose[:, 8] + np.stack([-0.45 * s, 0 * t], -1)
    pose[:, 12] = pose[:, 8] + np.stack([0.45 * s, 0 * t], -1)

    hidden = np.zeros((n, 2), np.float32)
    face_touch = total("touching face")
    # side -1: person's right arm, image left (body 2-4, right hand 116-137).
    anchors = _Anchors(t, fps, s, neck, head, face, face_width, subject.fidget)
    # hand: column of hands_hidden (0 person's left, 1 person's right)
    for side, (sh_i, el_i, wr_i, hand_slice, hand) in (
        (-1, (2, 3, 4, slice(116, 137), 1)),
        (1, (5, 6, 7, slice(95, 116), 0)),
    ):
        shoulder = neck + np.stack([side * s, 0.08 * s], -1)
        rest = np.stack(
            [neck0[0] + side * subject.hand_spread * sw0 + 0 * t, table_y - 0.08 * sw0 + 0 * t], -1
        )
        rest = rest + _smooth_noise(rng, n, fps, 2.0, 2) * 0.04 * sw0
        rest_dir = np.broadcast_to(np.array([-side * 0.9, 0.35], np.float32), (n, 2))
        wrist, direction = rest.copy(), rest_dir.copy()
        curl = np.full(n, subject.rest_curl, np.float32)
        elbow_off = np.broadcast_to(np.array([side * 0.35, 0.15], np.float32), (n, 2)).copy()
        for e, w in envelopes:
            if e.gesture.limbs == "arms" or (e.gesture.limbs == "arm" and e.side == side):
                target, tdir, tcurl, off = _arm_target(e.gesture.name, side, anchors, rest, rng)
                wk = w[:, None]
                wrist += wk * (target - rest)
                direction += wk * (np.asarray(tdir, np.float32) - rest_dir)
                curl += w * (tcurl - subject.rest_curl)
                elbow_off += wk * (np.array([side * off[0], off[1]], np.float32) - elbow_off)
                if e.gesture.name == "folding arms":
                    hidden[:, hand] = np.maximum(hidden[:, hand], w)
        elbow = (shoulder + wrist) / 2 + elbow_off * s[:, None]
        pose[:, sh_i], pose[:, el_i], pose[:, wr_i] = shoulder, elbow, wrist
        pose[:, hand_slice] = _hand(wrist, direction, np.clip(curl, 0, 1), 0.95 * s, side)
    return _Motion(pose=pose, scale=s, yaw=yaw, hands_hidden=hidden, face_touch=face_touch)


@dataclasses.dataclass
class _Anchors:
    """Per-frame places the arm gestures aim at."""

    t: np.ndarray  # [T] seconds
    fps: float
    s: np.ndarray  # [T] shoulder half-width, px
    neck: np.ndarray  # [T, 2]
    head: np.ndarray  # [T, 2] head centre
    face: np.ndarray  # [T, 70, 2]
    face_width: np.ndarray  # [T] px
    fidget: float  # the subject's fidgeting amplitude, shoulder half-widths


def _arm_target(
    name: str, side: int, a: _Anchors, rest: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, tuple[float, float], float | np.ndarray, tuple[float, float]]:
    """Where one wrist goes during a gesture: (wrist [T,2], hand direction, curl, elbow offset).

    The elbow offset (outwards, down) is in shoulder half-widths from the midpoint of
    shoulder and wrist, a stand-in for the foreshortened arm seen from the front.
    """
    t, s, neck, head = a.t, a.s, a.neck, a.head
    up = np.float32(-1.0)
    if name == "touching face":
        target = a.face[:, 4 if side < 0 else 12] + np.stack([side * 0.05 * s, 0.5 * s], -1)
        return target, (-side * 0.35, up), 0.25, (0.1, 0.55)
    if name == "touching neck":
        target = neck + np.stack([side * 0.3 * s, -0.05 * s], -1)
        return target, (-side * 0.8, up), 0.45, (0.15, 0.55)
    if name == "scratching head":
        scratch = 0.04 * s * np.sin(2 * np.pi * 4.5 * t)
        target = head + np.stack([side * 0.85 * a.face_width, -0.1 * a.face_width + scratch], -1)
        return target, (-side * 0.6, up), 0.55, (0.45, 0.1)
    if name == "open-palm gesture":
        beat = 0.08 * s * np.sin(2 * np.pi * 1.6 * t + rng.uniform(0, 2 * np.pi))
        target = rest + np.stack([side * 0.3 * s, -0.6 * s + beat], -1)
        return target, (side * 0.4, up), 0.05, (0.3, 0.35)
    if name == "folding arms":
        target = neck + np.stack([-side * 0.55 * s, (1.0 + 0.03 * side) * s], -1)
        return target, (-side * 1.0, 0.15), 0.6, (0.55, 0.55)
    if name == "fidgeting hands":
        jitter = _smooth_noise(rng, len(t), a.fps, 0.12, 2) * a.fidget * s[:, None]
        target = neck + np.stack([side * 0.18 * s, 1.4 * s], -1) + jitter
        curl = 0.5 + 0.25 * _smooth_noise(rng, len(t), a.fps, 0.15)[:, 0]
        return target, (-side * 1.0, -0.2), curl, (0.45, 0.25)
    raise ValueError(f"no arm motion for gesture {name!r}")


def _schedule(
    rng: np.random.Generator, subject: Subject, stress: float, activity: float, n: int, fps: float
) -> list[Event]:
    """Micro-gesture events: Poisson per gesture, then no two on the same limb at once."""
    seconds = n / fps
    candidates = []
    for gi, g in enumerate(GESTURES):
        rate = (
            g.rate_per_min * subject.gesture_rates[gi] * activity * math.exp(g.stress_gain * stress)
        )
        for _ in range(rng.poisson(rate * seconds / 60)):
            duration = min(rng.uniform(*g.seconds), seconds)
            start = rng.uniform(0, seconds - duration)
            side = subject.dominant if rng.random() < 0.75 else -subject.dominant
            candidates.append((start, gi, duration, side))
    candidates.sort()
    free_at: dict[str, float] = {}
    events = []
    for start, gi, duration, side in candidates:
        g = GESTURES[gi]
        limbs = {"arm": [str(side)], "arms": ["-1", "1"], "head": ["head"], "torso": ["torso"]}
        parts = limbs[g.limbs]
        if any(free_at.get(p, -1.0) + 0.3 > start for p in parts):
            continue
        for p in parts:
            free_at[p] = start + duration
        first = int(round(start * fps))
        events.append(
            Event(g, first, min(n - 1, max(first + 1, int(round((start + duration) * fps)))), side)
        )
    if not events:  # every video has at least one annotated clip, as in iMiGUE
        first = int(rng.integers(0, max(1, n - int(1.5 * fps))))
        events.append(Event(_GESTURE["nodding"], first, min(n - 1, first + int(1.5 * fps)), 0))
    return events


def _runs(rng: np.random.Generator, n: int, count: int, lengths: tuple[int, int]) -> np.ndarray:
    """bool [n] with ``count`` runs of random length in ``lengths`` (frames)."""
    mask = np.zeros(n, bool)
    for _ in range(count):
        length = int(rng.integers(lengths[0], lengths[1] + 1))
        start = int(rng.integers(0, max(1, n - length)))
        mask[start : start + length] = True
    return mask


def _observe(
    rng: np.random.Generator, motion: _Motion, present: np.ndarray, size: tuple[int, int]
) -> np.ndarray:
    """What OpenPose would report: jitter, confidences, drop-outs, zeros off-frame [T, 137, 3]."""
    pose, s = motion.pose, motion.scale
    n = len(pose)
    height, width = size
    visible = np.zeros(NUM_KEYPOINTS, bool)
    visible[[0, 1, 2, 3, 4, 5, 6, 7, 15, 16, 17, 18]] = True
    visible[25:] = True
    if rng.random() < 0.5:  # hips guessed through the table in some videos
        visible[[8, 9, 12]] = True
    base = np.full(NUM_KEYPOINTS, 0.8, np.float32)
    base[[8, 9, 12]] = 0.25
    base[25:95] = 0.72
    base[95:] = 0.55
    jitter = np.full(NUM_KEYPOINTS, 0.02, np.float32)
    jitter[25:95] = 0.012
    jitter[95:] = 0.03
    noise = rng.standard_normal(pose.shape, dtype=np.float32)
    xy = pose + noise * (jitter[None, :, None] * s[:, None, None]).astype(np.float32)
    conf = base + 0.08 * rng.standard_normal((n, NUM_KEYPOINTS), dtype=np.float32)
    keep = np.broadcast_to(visible, (n, NUM_KEYPOINTS)).copy()
    keep &= rng.random((n, NUM_KEYPOINTS)) > 0.01
    for h, sl in enumerate((slice(95, 116), slice(116, 137))):
        # Hands are lost in runs (a two-state chain), and mostly while the arms are folded.
        lost = np.zeros(n, bool)
        state = False
        for i, draw in enumerate(rng.random(n).tolist()):
            state = draw < (0.8 if state else 0.02)
            lost[i] = state
        lost |= rng.random(n) < 0.85 * motion.hands_hidden[:, h]
        keep[:, sl] &= ~lost[:, None]
    # A hand on the face hides the landmarks under it.
    touch = np.flatnonzero(motion.face_touch > 0.5)
    if len(touch):
        hands = np.concatenate([pose[touch, 95:116], pose[touch, 116:137]], 1)
        gap = pose[touch, 25:95, None] - hands[:, None]
        near = (gap**2).sum(-1).min(-1) < (0.3 * s[touch, None]) ** 2
        keep[touch, 25:95] &= ~(near & (rng.random(near.shape) < 0.7))
    keep[motion.yaw > 0.35, 18] = False  # far ear hidden on a head turn
    keep[motion.yaw < -0.35, 17] = False
    inside = (xy[..., 0] >= 0) & (xy[..., 0] < width) & (xy[..., 1] >= 0) & (xy[..., 1] < height)
    keep &= inside & present[:, None]
    out = np.zeros((n, NUM_KEYPOINTS, 3), np.float32)
    out[..., :2] = np.where(keep[..., None], xy, 0)
    out[..., 2] = np.where(keep, np.clip(conf, 0.05, 0.99), 0)
    return out


def generate_video(plan: CorpusPlan, index: int) -> SyntheticVideo:
    """Video ``index`` of the plan, in memory (keypoints, events, transcript; no pixels)."""
    cfg = plan.config
    subject = plan.subjects[plan.video_subject[index]]
    label = plan.labels[index]
    n = plan.num_frames[index]
    size = (cfg.height, cfg.width)
    rng = _rng(cfg.seed, _MOTION, index)
    stress = rng.normal(0.0 if label == 1 else cfg.stress_shift, 1.0)
    activity = rng.lognormal(0.0, 0.3)
    camera = (float(rng.uniform(0.92, 1.08)), float(rng.uniform(-0.03, 0.03)))
    events = _schedule(rng, subject, stress, activity, n, cfg.fps)
    motion = _animate(rng, subject, events, n, cfg.fps, size, camera)

    extras = _rng(cfg.seed, _EXTRAS, index)
    fps = cfg.fps
    present = np.ones(n, bool)
    if extras.random() < cfg.cutaway_rate:
        present &= ~_runs(extras, n, int(extras.integers(1, 3)), (int(0.7 * fps), int(2.5 * fps)))
    second_present = np.zeros(n, bool)
    if extras.random() < cfg.second_person_rate:
        second_present = _runs(extras, n, 1 + int(extras.poisson(1.0)), (int(fps), int(4 * fps)))
        second_present &= present
    moderator_seed = int(extras.integers(2**31))
    keep = np.ones(n, bool)
    if extras.random() < cfg.frame_gap_rate:
        keep &= ~_runs(extras, n, int(extras.integers(1, 4)), (1, 5))
        keep[0] = True
    # Drop clip rows that overlap a cut-away: nobody could annotate them.
    events = [e for e in events if present[e.start_frame : e.end_frame + 1].all()] or events[:1]

    observe = _rng(cfg.seed, _OBSERVE, index)
    keypoints = _observe(observe, motion, present, size)
    if second_present.any():
        moderator = _moderator(np.random.default_rng(moderator_seed), subject, n, fps, size)
        second_pose = moderator.pose
        second_keypoints = _observe(observe, moderator, second_present, size)
    else:
        second_pose = np.zeros_like(motion.pose)
        second_keypoints = np.zeros_like(keypoints)
    transcript = make_transcript(
        _rng(cfg.seed, _TEXT, index),
        label,
        verbosity=subject.verbosity,
        gender=subject.gender,
        style=cfg.transcript,
    )
    return SyntheticVideo(
        video_id=plan.video_id(index),
        subject=subject,
        label=label,
        fps=cfg.fps,
        frame_size=size,
        pose=motion.pose,
        present=present,
        second_pose=second_pose,
        second_present=second_present,
        keypoints=keypoints,
        second_keypoints=second_keypoints,
        keypoint_frames=np.flatnonzero(keep).astype(np.int32),
        events=events,
        transcript=transcript,
        scene_seed=int(_rng(cfg.seed, _SCENE, index).integers(2**31)),
    )


def _moderator(rng: np.random.Generator, player: Subject, n: int, fps: float, size) -> _Motion:
    """A second, smaller person sitting at one edge of the frame, half out of it."""
    edge = -1 if rng.random() < 0.5 else 1
    style = dataclasses.replace(
        _make_subject(int(rng.integers(2**31)), 0),
        scale=player.scale * 0.7,
        x_offset=edge * 0.45,
        y_offset=0.04,
    )
    return _animate(rng, style, [], n, fps, size, (1.0, 0.0))


def generate_corpus(config: SynthConfig) -> list[SyntheticVideo]:
    """All videos in memory: for tests and difficulty measurements (no files)."""
    plan = plan_corpus(config)
    return [generate_video(plan, i) for i in range(config.videos)]


# ---------------------------------------------------------------------------
# Protocol: balanced, subject-disjoint train/test lists like iMiGUE's.


def make_protocol(plan: CorpusPlan) -> dict:
    rng = _rng(plan.config.seed, _PLAN, 1)
    subjects = rng.permutation(len(plan.subjects))
    halves = {
        "test": set(subjects[: len(subjects) // 2]),
        "train": set(subjects[len(subjects) // 2 :]),
    }
    lists: dict[str, list[int]] = {}
    for name, members in halves.items():
        videos = [i for i in range(plan.config.videos) if plan.video_subject[i] in members]
        wins = [i for i in videos if plan.labels[i] == 1]
        losses = [i for i in videos if plan.labels[i] == 0]
        k = min(len(wins), len(losses))
        chosen = list(rng.choice(wins, k, replace=False)) + list(
            rng.choice(losses, k, replace=False)
        )
        lists[name] = sorted(int(i) + 1 for i in chosen)  # video ids are index + 1
    return {
        "source": f"synthetic corpus, seed {plan.config.seed}: balanced, subject-disjoint lists "
        "built like the iMiGUE emotion protocol",
        "emotion": {"train_video_ids": lists["train"], "test_video_ids": lists["test"]},
        "micro_gesture_cross_subject": {
            "train_subject_ids": sorted(int(plan.subjects[i].subject_id) for i in halves["train"]),
            "test_subject_ids": sorted(int(plan.subjects[i].subject_id) for i in halves["test"]),
        },
    }


# ---------------------------------------------------------------------------
# Writing the corpus.


def _person_json(kp: np.ndarray) -> dict:
    a = np.round(kp.astype(np.float64), 3)
    return {
        "person_id": [-1],
        "pose_keypoints_2d": a[0:25].ravel().tolist(),
        "face_keypoints_2d": a[25:95].ravel().tolist(),
        "hand_left_keypoints_2d": a[95:116].ravel().tolist(),
        "hand_right_keypoints_2d": a[116:137].ravel().tolist(),
        "pose_keypoints_3d": [],
        "face_keypoints_3d": [],
        "hand_left_keypoints_3d": [],
        "hand_right_keypoints_3d": [],
    }


def frame_json(video: SyntheticVideo, frame: int) -> str:
    """The OpenPose 1.3 JSON of one frame; people in a seeded random order."""
    people = []
    if video.present[frame]:
        people.append(_person_json(video.keypoints[frame]))
    if video.second_present[frame]:
        people.append(_person_json(video.second_keypoints[frame]))
        if (video.scene_seed + frame) % 2:  # the player is not always listed first
            people.reverse()
    return json.dumps({"version": 1.3, "people": people}, separators=(",", ":"))


def write_skeletons(video: SyntheticVideo, folder: Path) -> None:
    """All frame files of one video, made in a temporary folder and renamed into place."""
    with atomic.replacing_dir(folder) as tmp:
        for frame in video.keypoint_frames:
            name = f"{video.video_id}_{int(frame):012d}_keypoints.json"
            (tmp / name).write_text(frame_json(video, int(frame)), encoding="utf-8")


def clip_rows(video: SyntheticVideo) -> list[dict[str, str]]:
    rows = []
    for e in video.events:
        rows.append(
            {
                "video_id": video.video_id,
                "label_id": str(e.gesture.label_id),
                "start_time": f"{e.start_frame / video.fps:.3f}",
                "start_frame": str(e.start_frame),
                "end_time": f"{e.end_frame / video.fps:.3f}",
                "end_frame": str(e.end_frame),
                "class": e.gesture.name,
                "subject_id": video.subject.subject_id,
                "subject_gender": video.subject.gender,
                "subject_nationality": video.subject.nationality,
                "win_or_lose": "win" if video.label == 1 else "lose",
            }
        )
    return rows


def _csv_text(rows: list[dict[str, str]]) -> str:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _write_video_files(
    plan: CorpusPlan, out: Path, render: bool, index: int
) -> tuple[list[dict[str, str]], int, int]:
    """One video's skeleton folder, transcript and mp4 (those not there yet); returns its
    clip rows, label and frame count."""
    video = generate_video(plan, index)
    skeleton = out / SKELETON_DIR / video.video_id
    if not skeleton.is_dir():
        write_skeletons(video, skeleton)
    transcript = out / TRANSCRIPT_DIR / f"{video.video_id}.txt"
    if not transcript.is_file():
        atomic.write_text(transcript, video.transcript)
    mp4 = out / VIDEO_DIR / f"{video.video_id}.mp4"
    if render and not mp4.is_file():
        from preprocess.render import write_video

        write_video(video, mp4)
    return clip_rows(video), video.label, video.num_frames


def write_corpus(
    config: SynthConfig,
    out: Path,
    *,
    render: bool = True,
    jobs: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, int]:
    """Writes (or resumes writing) the corpus under ``out``; returns counts.

    Each video's skeleton folder, transcript and mp4 appear atomically, so a
    rerun skips what exists; the labels CSV and protocol are written last. A
    folder made with other settings is refused. ``jobs`` processes make the
    videos side by side (each video depends only on the plan, so the files are
    the same for any number).
    """
    if jobs < 1:
        raise ValueError(f"jobs={jobs} must be >= 1")
    out = Path(out)
    settings = json.dumps(config.to_json(), indent=2, sort_keys=True) + "\n"
    config_path = out / CONFIG_JSON
    if config_path.exists():
        if config_path.read_text(encoding="utf-8") != settings:
            raise FileExistsError(
                f"{config_path}: {out} holds a corpus made with other settings; "
                "choose another --out or delete it"
            )
    elif out.exists() and any(out.iterdir()):
        raise FileExistsError(
            f"{out} is not empty and holds no {CONFIG_JSON}; choose another --out"
        )
    atomic.write_text(config_path, settings)

    plan = plan_corpus(config)
    write_one = functools.partial(_write_video_files, plan, out, render)
    rows: list[dict[str, str]] = []
    counts = {"videos": config.videos, "win": 0, "lose": 0, "clips": 0, "frames": 0}

    def collect(results: Iterable[tuple[list[dict[str, str]], int, int]]) -> None:
        for done, (video_rows, label, frames) in enumerate(results, 1):  # in video order
            rows.extend(video_rows)
            counts["win" if label == 1 else "lose"] += 1
            counts["frames"] += frames
            if progress is not None:
                progress(done, config.videos)

    if jobs == 1:
        collect(map(write_one, range(config.videos)))
    else:
        # spawn: a fresh interpreter per worker, whatever threads the caller has started.
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context) as pool:
            collect(pool.map(write_one, range(config.videos)))
    counts["clips"] = len(rows)
    atomic.write_text(out / PROTOCOL_JSON, json.dumps(make_protocol(plan), indent=1) + "\n")
    atomic.write_text(out / LABELS_CSV, _csv_text(rows))
    return counts
