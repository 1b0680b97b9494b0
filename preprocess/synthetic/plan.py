"""Who is in which synthetic video, with which label and length; the gestures they make.

Determinism: the same config gives byte-identical CSV, JSON, transcripts and
protocol. Who is in which video, its label and length come from a corpus plan
drawn up front; everything else about video ``i`` (motion, observation noise,
transcript, scene) from streams keyed by ``(seed, i)``. The mp4 files are identical too with the
OpenCV build tested here (``tests/test_synth.py`` checks).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from preprocess.synthetic.transcripts import TranscriptStyle

NATIONALITIES = (
    "ESP", "SUI", "SRB", "GBR", "USA", "ARG", "FRA", "GER", "AUS", "JPN", "RUS", "CAN",
    "ITA", "CRO", "BEL", "POL", "CZE", "CHN", "BRA", "RSA",
)  # fmt: skip


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
GESTURE_BY_NAME = {g.name: g for g in GESTURES}
TABLE_BELOW_NECK = 1.5  # table top under the resting neck, in shoulder half-widths


# How video lengths are drawn. "uniform": between min_seconds and max_seconds. "imigue":
# iMiGUE's 359 videos run 0.5-25 min with about 20,000 frames at 25 fps on average (about 7
# million frames in all); their individual lengths are not published with the labels, so
# "imigue" draws seconds from a normal with that mean (800 s) and a 300 s spread, clipped to
# min_seconds..max_seconds (``--fps 25 --min-seconds 30 --max-seconds 1500`` for iMiGUE's).
LENGTHS = ("uniform", "imigue")
IMIGUE_MEAN_SECONDS, IMIGUE_SD_SECONDS = 800.0, 300.0


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
    lengths: str = "uniform"  # one of LENGTHS

    def __post_init__(self) -> None:
        problems = []
        if self.lengths not in LENGTHS:
            problems.append(f"lengths={self.lengths!r} must be one of {LENGTHS}")
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
        settings = dataclasses.asdict(self)
        if self.lengths == "uniform":  # the settings files written before the option existed
            del settings["lengths"]
        return settings


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


def stream(seed: int, *key: int) -> np.random.Generator:
    """An independent stream per (seed, purpose, index), stable when other parts change."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


# The purposes of the streams: one each, so adding draws to one leaves the others as they are.
(PLAN_STREAM, SUBJECT_STREAM, MOTION_STREAM, OBSERVE_STREAM, TEXT_STREAM, SCENE_STREAM,
 EXTRAS_STREAM) = range(7)  # fmt: skip
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


def make_subject(seed: int, index: int) -> Subject:
    rng = stream(seed, SUBJECT_STREAM, index)
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
    rng = stream(config.seed, PLAN_STREAM)
    n = config.videos
    n_subjects = max(1, min(n, round(n / config.videos_per_subject)))
    # Every subject gets a video, the rest are spread at random; then shuffled.
    assignment = np.concatenate(
        [np.arange(n_subjects), rng.integers(0, n_subjects, n - n_subjects)]
    )
    assignment = rng.permutation(assignment)
    wins = round(config.win_rate * n)
    labels = rng.permutation(np.r_[np.ones(wins, int), np.zeros(n - wins, int)])
    if config.lengths == "imigue":
        seconds = np.clip(
            rng.normal(IMIGUE_MEAN_SECONDS, IMIGUE_SD_SECONDS, n),
            config.min_seconds,
            config.max_seconds,
        )
    else:
        seconds = rng.uniform(config.min_seconds, config.max_seconds, n)
    frames = np.maximum(2, np.round(seconds * config.fps)).astype(int)
    return CorpusPlan(
        config=config,
        subjects=tuple(make_subject(config.seed, i) for i in range(n_subjects)),
        video_subject=tuple(int(s) for s in assignment),
        labels=tuple(int(v) for v in labels),
        num_frames=tuple(int(v) for v in frames),
    )
