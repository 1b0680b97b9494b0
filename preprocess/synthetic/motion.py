"""The synthetic world in motion: 137 OpenPose keypoints per frame for each planned video.

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
``preprocess.synthetic.transcripts``, with their own latent mood, independent of the
stress, so fusing the two modalities can beat either.

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
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from hemo_jax.contract.keypoint_layout import NUM_KEYPOINTS
from preprocess.synthetic.plan import (
    EXTRAS_STREAM,
    GESTURE_BY_NAME,
    GESTURES,
    MOTION_STREAM,
    OBSERVE_STREAM,
    SCENE_STREAM,
    TABLE_BELOW_NECK,
    TEXT_STREAM,
    CorpusPlan,
    Event,
    Subject,
    SynthConfig,
    SyntheticVideo,
    make_subject,
    plan_corpus,
    stream,
)
from preprocess.synthetic.transcripts import make_transcript

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
        nodding = GESTURE_BY_NAME["nodding"]
        events.append(Event(nodding, first, min(n - 1, first + int(1.5 * fps)), 0))
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
    rng = stream(cfg.seed, MOTION_STREAM, index)
    stress = rng.normal(0.0 if label == 1 else cfg.stress_shift, 1.0)
    activity = rng.lognormal(0.0, 0.3)
    camera = (float(rng.uniform(0.92, 1.08)), float(rng.uniform(-0.03, 0.03)))
    events = _schedule(rng, subject, stress, activity, n, cfg.fps)
    motion = _animate(rng, subject, events, n, cfg.fps, size, camera)

    extras = stream(cfg.seed, EXTRAS_STREAM, index)
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

    observe = stream(cfg.seed, OBSERVE_STREAM, index)
    keypoints = _observe(observe, motion, present, size)
    if second_present.any():
        moderator = _moderator(np.random.default_rng(moderator_seed), subject, n, fps, size)
        second_pose = moderator.pose
        second_keypoints = _observe(observe, moderator, second_present, size)
    else:
        second_pose = np.zeros_like(motion.pose)
        second_keypoints = np.zeros_like(keypoints)
    transcript = make_transcript(
        stream(cfg.seed, TEXT_STREAM, index),
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
        scene_seed=int(stream(cfg.seed, SCENE_STREAM, index).integers(2**31)),
    )


def _moderator(rng: np.random.Generator, player: Subject, n: int, fps: float, size) -> _Motion:
    """A second, smaller person sitting at one edge of the frame, half out of it."""
    edge = -1 if rng.random() < 0.5 else 1
    style = dataclasses.replace(
        make_subject(int(rng.integers(2**31)), 0),
        scale=player.scale * 0.7,
        x_offset=edge * 0.45,
        y_offset=0.04,
    )
    return _animate(rng, style, [], n, fps, size, (1.0, 0.0))


def generate_corpus(config: SynthConfig) -> list[SyntheticVideo]:
    """All videos in memory: for tests and difficulty measurements (no files)."""
    plan = plan_corpus(config)
    return [generate_video(plan, i) for i in range(config.videos)]
