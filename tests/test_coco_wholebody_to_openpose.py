"""The COCO-WholeBody → OpenPose 137 table, point by point, against names written out here."""

import numpy as np
import pytest
from rtmlib.tools.pose_estimation.post_processings import convert_coco_to_openpose

from hemo_jax.contract.keypoint_layout import (
    BODY,
    BODY_25_NAMES,
    FACE,
    LEFT_HAND,
    NUM_KEYPOINTS,
    RIGHT_HAND,
)
from preprocess.keypoints.coco_wholebody_to_openpose import coco_wholebody_to_openpose

# COCO-WholeBody's order as its annotation files list it (body, then feet).
COCO_BODY = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip",
    "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
    "left_big_toe", "left_small_toe", "left_heel", "right_big_toe", "right_small_toe",
    "right_heel",
)  # fmt: skip
COCO = {name: i for i, name in enumerate(COCO_BODY)}
FACE0, LHAND0, RHAND0 = 23, 91, 112

ONE_TO_ONE = {
    "Nose": "nose", "RShoulder": "right_shoulder", "RElbow": "right_elbow",
    "RWrist": "right_wrist", "LShoulder": "left_shoulder", "LElbow": "left_elbow",
    "LWrist": "left_wrist", "RHip": "right_hip", "RKnee": "right_knee",
    "RAnkle": "right_ankle", "LHip": "left_hip", "LKnee": "left_knee", "LAnkle": "left_ankle",
    "REye": "right_eye", "LEye": "left_eye", "REar": "right_ear", "LEar": "left_ear",
    "LBigToe": "left_big_toe", "LSmallToe": "left_small_toe", "LHeel": "left_heel",
    "RBigToe": "right_big_toe", "RSmallToe": "right_small_toe", "RHeel": "right_heel",
}  # fmt: skip
BODY_AT = {name: BODY.start + i for i, name in enumerate(BODY_25_NAMES)}


def distinct_points(n: int = 133) -> np.ndarray:
    """Point i at (10 i + 1, 10 i + 2) with confidence in (0, 1), all different."""
    i = np.arange(n, dtype=np.float32)
    return np.stack([10 * i + 1, 10 * i + 2, 0.2 + 0.7 * i / n], axis=-1)


def test_one_to_one_body_and_feet_by_name():
    src = distinct_points()
    out = coco_wholebody_to_openpose(src)
    assert out.shape == (NUM_KEYPOINTS, 3) and out.dtype == np.float32
    for openpose, coco in ONE_TO_ONE.items():
        np.testing.assert_array_equal(out[BODY_AT[openpose]], src[COCO[coco]], err_msg=openpose)


def test_derived_neck_midhip_take_the_mean_and_the_weakest_confidence():
    src = distinct_points()
    out = coco_wholebody_to_openpose(src)
    for target, (a, b) in {
        "Neck": ("left_shoulder", "right_shoulder"),
        "MidHip": ("left_hip", "right_hip"),
    }.items():
        pa, pb = src[COCO[a]], src[COCO[b]]
        np.testing.assert_allclose(out[BODY_AT[target], :2], (pa[:2] + pb[:2]) / 2)
        assert out[BODY_AT[target], 2] == min(pa[2], pb[2])


def test_face_landmarks_one_to_one_and_pupils_from_each_eye_ring():
    src = distinct_points()
    out = coco_wholebody_to_openpose(src)
    face = out[FACE]
    np.testing.assert_array_equal(face[:68], src[FACE0 : FACE0 + 68])
    # iBUG 300-W: 36-41 ring the subject's right eye, 42-47 the left; OpenPose's face
    # point 68 is the right pupil, 69 the left.
    right_eye = src[FACE0 + 36 : FACE0 + 42]
    left_eye = src[FACE0 + 42 : FACE0 + 48]
    np.testing.assert_allclose(face[68, :2], right_eye[:, :2].mean(0), rtol=1e-6)
    np.testing.assert_allclose(face[69, :2], left_eye[:, :2].mean(0), rtol=1e-6)
    assert face[68, 2] == right_eye[:, 2].min() and face[69, 2] == left_eye[:, 2].min()


def test_hands_keep_their_side_and_order():
    src = distinct_points()
    out = coco_wholebody_to_openpose(src)
    np.testing.assert_array_equal(out[LEFT_HAND], src[LHAND0 : LHAND0 + 21])
    np.testing.assert_array_equal(out[RIGHT_HAND], src[RHAND0 : RHAND0 + 21])


def test_every_target_is_filled_from_a_distinct_place():
    out = coco_wholebody_to_openpose(distinct_points())
    assert (out[:, 2] > 0).all()
    assert len({tuple(p) for p in out[:, :2].tolist()}) == NUM_KEYPOINTS


def test_agrees_with_rtmlibs_own_openpose_18_conversion_on_the_shared_body_points():
    # rtmlib's OpenPose-18 order: BODY_25 without MidHip and the feet.
    openpose_18 = (
        "Nose", "Neck", "RShoulder", "RElbow", "RWrist", "LShoulder", "LElbow", "LWrist",
        "RHip", "RKnee", "RAnkle", "LHip", "LKnee", "LAnkle", "REye", "LEye", "REar", "LEar",
    )  # fmt: skip
    src = distinct_points()
    theirs_xy, theirs_conf = convert_coco_to_openpose(src[None, :, :2], src[None, :, 2])
    ours = coco_wholebody_to_openpose(src)
    for j, name in enumerate(openpose_18):
        np.testing.assert_allclose(ours[BODY_AT[name], :2], theirs_xy[0, j], err_msg=name)
        assert ours[BODY_AT[name], 2] == pytest.approx(theirs_conf[0, j]), name


def test_missing_sources_give_zero_points():
    src = distinct_points()
    src[COCO["right_hip"], 2] = 0.0  # MidHip loses a source
    src[FACE0 + 40, 2] = 0.0  # one landmark of the right eye ring
    out = coco_wholebody_to_openpose(src)
    for name in ("RHip", "MidHip"):
        np.testing.assert_array_equal(out[BODY_AT[name]], 0.0, err_msg=name)
    np.testing.assert_array_equal(out[FACE][68], 0.0)
    assert out[FACE][69, 2] > 0 and out[BODY_AT["LHip"], 2] > 0


def test_coco_17_body_fills_the_body_and_leaves_feet_face_hands_zero():
    src = distinct_points(17)
    out = coco_wholebody_to_openpose(src[None])[0]
    for openpose, coco in ONE_TO_ONE.items():
        if COCO[coco] < 17:
            np.testing.assert_array_equal(out[BODY_AT[openpose]], src[COCO[coco]])
    for name in ("LBigToe", "LSmallToe", "LHeel", "RBigToe", "RSmallToe", "RHeel"):
        np.testing.assert_array_equal(out[BODY_AT[name]], 0.0)
    np.testing.assert_array_equal(out[FACE.start :], 0.0)


def test_batched_input_and_wrong_counts():
    src = np.stack([distinct_points(), distinct_points()[::-1]])
    out = coco_wholebody_to_openpose(src[None])
    assert out.shape == (1, 2, NUM_KEYPOINTS, 3)
    np.testing.assert_array_equal(out[0, 1], coco_wholebody_to_openpose(src[1]))
    with pytest.raises(ValueError, match="got 25"):
        coco_wholebody_to_openpose(np.zeros((25, 3)))
    with pytest.raises(ValueError, match=r"\(133, 2\)"):
        coco_wholebody_to_openpose(np.zeros((133, 2)))
