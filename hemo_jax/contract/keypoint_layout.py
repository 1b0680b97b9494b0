"""The keypoint layout every record uses: OpenPose's 137 points in its JSON field order.

BODY_25 (25) + face (68 landmarks + 2 pupils) + left hand (21) + right hand (21). Readers,
writers, estimators and models index keypoints through these names, never by number.
"""

from __future__ import annotations

NUM_KEYPOINTS = 137
BODY = slice(0, 25)
FACE = slice(25, 95)
LEFT_HAND = slice(95, 116)
RIGHT_HAND = slice(116, 137)
HANDS = slice(LEFT_HAND.start, RIGHT_HAND.stop)

# The OpenPose JSON field that carries each part, in record order.
JSON_FIELDS: tuple[tuple[str, slice], ...] = (
    ("pose_keypoints_2d", BODY),
    ("face_keypoints_2d", FACE),
    ("hand_left_keypoints_2d", LEFT_HAND),
    ("hand_right_keypoints_2d", RIGHT_HAND),
)

BODY_25_NAMES: tuple[str, ...] = (
    "Nose", "Neck", "RShoulder", "RElbow", "RWrist", "LShoulder", "LElbow", "LWrist",
    "MidHip", "RHip", "RKnee", "RAnkle", "LHip", "LKnee", "LAnkle", "REye", "LEye", "REar",
    "LEar", "LBigToe", "LSmallToe", "LHeel", "RBigToe", "RSmallToe", "RHeel",
)  # fmt: skip

# Face: 68 landmarks in iBUG 300-W order, then the right (68) and left (69) pupil.
FACE_POINTS = 70
# Hand: wrist 0, then thumb 1-4, index 5-8, middle 9-12, ring 13-16, pinky 17-20.
HAND_POINTS = 21

assert len(BODY_25_NAMES) == BODY.stop - BODY.start
assert FACE.stop - FACE.start == FACE_POINTS
assert LEFT_HAND.stop - LEFT_HAND.start == RIGHT_HAND.stop - RIGHT_HAND.start == HAND_POINTS
assert RIGHT_HAND.stop == NUM_KEYPOINTS
