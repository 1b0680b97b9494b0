"""COCO-WholeBody's 133 points (and COCO's 17, its first block) in the OpenPose 137 layout.

Every record stores OpenPose's layout (``hemo_jax.contract.keypoint_layout``), so the
estimators that speak COCO-WholeBody (RTMW, DWPose) or COCO body (YOLO11-pose) go through
this one table. Source order, COCO-WholeBody (Jin et al. 2020, as mmpose and rtmlib emit it):

====== ===================================================================================
index  COCO-WholeBody point
====== ===================================================================================
0-16   body, COCO order: 0 nose, 1 left eye, 2 right eye, 3 left ear, 4 right ear,
       5 left shoulder, 6 right shoulder, 7 left elbow, 8 right elbow, 9 left wrist,
       10 right wrist, 11 left hip, 12 right hip, 13 left knee, 14 right knee,
       15 left ankle, 16 right ankle
17-22  feet: 17 left big toe, 18 left small toe, 19 left heel, 20 right big toe,
       21 right small toe, 22 right heel
23-90  face: the 68 iBUG 300-W landmarks in their order (23+36..23+41 the subject's right
       eye, 23+42..23+47 the left eye)
91-111 left hand: wrist, then thumb, index, middle, ring, pinky, 4 points each
112-132 right hand, same order
====== ===================================================================================

"Left" and "right" are the subject's own in both conventions, so no side is swapped.
The table, target ← source (``SOURCES`` below holds it as data):

=========================== ===============================================================
OpenPose target             COCO-WholeBody source
=========================== ===============================================================
body 0 Nose                 0 nose
body 1 Neck                 derived: mean of 5 left shoulder, 6 right shoulder
body 2-4 RShoulder..RWrist  6, 8, 10
body 5-7 LShoulder..LWrist  5, 7, 9
body 8 MidHip               derived: mean of 11 left hip, 12 right hip
body 9-11 RHip..RAnkle      12, 14, 16
body 12-14 LHip..LAnkle     11, 13, 15
body 15-18 REye LEye REar LEar  2, 1, 4, 3
body 19-21 LBigToe LSmallToe LHeel  17, 18, 19
body 22-24 RBigToe RSmallToe RHeel  20, 21, 22
face 0-67                   23-90, one to one (both iBUG 300-W order)
face 68 right pupil         derived: mean of the right eye's 6 landmarks, 59-64
face 69 left pupil          derived: mean of the left eye's 6 landmarks, 65-70
left hand 0-20              91-111, one to one
right hand 0-20             112-132, one to one
=========================== ===============================================================

Confidence: a one-to-one point keeps its source's. A derived point is the mean of its
sources' positions with the *minimum* of their confidences: it is only as sure as its
weakest source. A point whose confidence is 0 (missing source, or a derived point with one
source missing) is written (0, 0, 0), OpenPose's and the record's "not found". A COCO-17
input (YOLO11-pose) has no feet, face or hands: those targets come out (0, 0, 0).
"""

from __future__ import annotations

import numpy as np

from hemo_jax.contract.keypoint_layout import NUM_KEYPOINTS

COCO_BODY_POINTS = 17
COCO_WHOLEBODY_POINTS = 133
_FACE_START = 23
_LEFT_HAND_START = 91
_RIGHT_HAND_START = 112

# The target's sources, in OpenPose order: one index maps one to one, several are averaged.
_BODY_25_SOURCES: tuple[tuple[int, ...], ...] = (
    (0,), (5, 6), (6,), (8,), (10,), (5,), (7,), (9,), (11, 12), (12,), (14,), (16,),
    (11,), (13,), (15,), (2,), (1,), (4,), (3,), (17,), (18,), (19,), (20,), (21,), (22,),
)  # fmt: skip
_FACE_SOURCES = tuple((_FACE_START + i,) for i in range(68)) + (
    tuple(_FACE_START + i for i in range(36, 42)),  # right pupil: the right eye's ring
    tuple(_FACE_START + i for i in range(42, 48)),  # left pupil: the left eye's ring
)
_HAND_SOURCES = tuple((_LEFT_HAND_START + i,) for i in range(21)) + tuple(
    (_RIGHT_HAND_START + i,) for i in range(21)
)
SOURCES: tuple[tuple[int, ...], ...] = _BODY_25_SOURCES + _FACE_SOURCES + _HAND_SOURCES
assert len(SOURCES) == NUM_KEYPOINTS

# The table as two dense arrays, for one vectorised gather over [..., 133, 3].
_WIDTH = max(len(s) for s in SOURCES)
_INDEX = np.array([s + (s[0],) * (_WIDTH - len(s)) for s in SOURCES], np.int64)
_USED = np.array([[i < len(s) for i in range(_WIDTH)] for s in SOURCES])


def coco_wholebody_to_openpose(points: np.ndarray) -> np.ndarray:
    """``[..., 133, 3]`` or ``[..., 17, 3]`` (x, y, confidence) → float32 ``[..., 137, 3]``."""
    points = np.asarray(points, np.float32)
    if points.ndim < 2 or points.shape[-1] != 3:
        raise ValueError(f"keypoints must be [..., K, 3] (x, y, confidence); got {points.shape}")
    k = points.shape[-2]
    if k == COCO_BODY_POINTS:
        pad = np.zeros((*points.shape[:-2], COCO_WHOLEBODY_POINTS - k, 3), np.float32)
        points = np.concatenate([points, pad], axis=-2)
    elif k != COCO_WHOLEBODY_POINTS:
        raise ValueError(
            f"expected {COCO_WHOLEBODY_POINTS} COCO-WholeBody or {COCO_BODY_POINTS} COCO body "
            f"points; got {k}"
        )
    gathered = points[..., _INDEX, :]  # [..., 137, W, 3]
    used = _USED[..., None]
    xy = (gathered[..., :2] * used).sum(-2) / _USED.sum(-1)[:, None]
    conf = np.where(_USED, gathered[..., 2], np.inf).min(-1)
    out = np.concatenate([xy, conf[..., None]], axis=-1).astype(np.float32)
    out[conf <= 0] = 0.0
    return out
