"""preprocess.keypoints.wholebody: rtmlib's real loading and SimCC decoding on an ONNX model
made here with RTMW's input and output signature, and ultralytics' real loader on a
YOLO11n-pose built from its config with random weights. No download, no network."""

import socket

import numpy as np
import pytest
from pose_models import BODY_AT, INPUT_H, INPUT_W, LEFT_HAND_START, LEFT_WRIST, NOSE, simcc_model
from rtmlib import RTMPose

from hemo_jax.contract.keypoint_layout import BODY, FACE, NUM_KEYPOINTS
from preprocess.keypoints.wholebody import (
    POSE_ESTIMATORS,
    RtmposeEstimator,
    YoloPoseEstimator,
    make_pose_estimator,
    pick_subject,
)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def frames_and_boxes(n=5, seed=1):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (n, 240, 320, 3), dtype=np.uint8)
    # 3:4 boxes, as wide for their height as the model input, at different places.
    x1 = rng.uniform(0, 200, n)
    y1 = rng.uniform(0, 100, n)
    boxes = np.stack([x1, y1, x1 + 60, y1 + 80], axis=1).astype(np.float32)
    return frames, boxes


def test_rtmpose_matches_rtmlibs_own_per_box_call_in_one_batched_session_call(tmp_path, no_network):
    path = simcc_model(tmp_path / "rtmw.onnx")
    est = RtmposeEstimator("rtmw", weights=path, input_size=(INPUT_W, INPUT_H), batch_size=4)
    assert est.batch_size == 4  # the batch axis is dynamic
    frames, boxes = frames_and_boxes()
    out = est.estimate(frames, boxes)
    assert out.shape == (5, NUM_KEYPOINTS, 3) and out.dtype == np.float32

    library = RTMPose(path, model_input_size=(INPUT_W, INPUT_H), backend="onnxruntime")
    for t in range(len(frames)):
        xy, score = library(np.ascontiguousarray(frames[t][..., ::-1]), bboxes=[boxes[t]])
        nose = np.array([*xy[0, NOSE], score[0, NOSE]])
        np.testing.assert_allclose(out[t, BODY_AT["Nose"]], nose, rtol=1e-5)
        wrist = np.array([*xy[0, LEFT_WRIST], score[0, LEFT_WRIST]])
        np.testing.assert_allclose(out[t, BODY_AT["LWrist"]], wrist, rtol=1e-5)
    # Confidences follow each image (1e-3 × its mean): batch rows were not mixed up.
    assert len(set(out[:, BODY_AT["Nose"], 2].tolist())) == 5


def test_rtmpose_points_land_in_source_frame_pixels(tmp_path):
    path = simcc_model(tmp_path / "rtmw.onnx")
    est = RtmposeEstimator("dwpose", weights=path, input_size=(INPUT_W, INPUT_H))
    frames, boxes = frames_and_boxes()
    out = est.estimate(frames, boxes)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    np.testing.assert_allclose(out[:, BODY_AT["Nose"], :2], centre, atol=1e-3)
    # rtmlib pads the box by 1.25: the crop's top-left corner is 1.25× the box out from
    # its centre, so the wrist at the input's corner lands there in the frame.
    half = 1.25 * (boxes[:, 2:] - boxes[:, :2]) / 2
    np.testing.assert_allclose(out[:, BODY_AT["LWrist"], :2], centre - half, atol=1e-3)


def test_rtmpose_missing_boxes_and_unsure_points_give_zeros(tmp_path):
    peaks = np.full(133, 0.8, np.float32)
    peaks[LEFT_HAND_START : LEFT_HAND_START + 21] = -1.0  # the left hand not found
    path = simcc_model(tmp_path / "rtmw.onnx", batch=1, peaks=peaks)
    est = RtmposeEstimator("rtmw", weights=path, input_size=(INPUT_W, INPUT_H))
    assert est.batch_size == 1  # a fixed batch of 1: one box per session call
    frames, boxes = frames_and_boxes(3)
    boxes[1] = np.nan
    out = est.estimate(frames, boxes)
    np.testing.assert_array_equal(out[1], 0.0)
    assert (out[[0, 2], BODY, 2] > 0).all() and (out[[0, 2], FACE, 2] > 0).all()
    np.testing.assert_array_equal(out[[0, 2], 95:116], 0.0)
    assert (out[[0, 2], 116:137, 2] > 0).all()


def test_rtmpose_refuses_boxes_that_do_not_match_the_frames(tmp_path):
    est = RtmposeEstimator(
        "rtmw", weights=simcc_model(tmp_path / "m.onnx"), input_size=(INPUT_W, INPUT_H)
    )
    frames, boxes = frames_and_boxes(3)
    with pytest.raises(ValueError, match=r"\[3, 4\].*\(2, 4\)"):
        est.estimate(frames, boxes[:2])


def test_pick_subject_is_the_detection_overlapping_the_box_most():
    found = np.array([[0, 0, 10, 10], [50, 50, 90, 90], [40, 40, 60, 60]], np.float32)
    assert pick_subject(found, np.array([48, 48, 92, 92], np.float32)) == 1
    assert pick_subject(found, np.array([200, 200, 220, 220], np.float32)) is None
    assert pick_subject(np.zeros((0, 4), np.float32), np.array([0, 0, 1, 1])) is None


@pytest.fixture(scope="module")
def yolo_pose_weights(tmp_path_factory):
    from ultralytics import YOLO

    path = tmp_path_factory.mktemp("yolo") / "yolo11n-pose-random.pt"
    YOLO("yolo11n-pose.yaml").save(path)  # the real architecture, random weights
    return path


def test_yolo_pose_loads_offline_and_maps_into_the_source_frame(yolo_pose_weights, no_network):
    # A threshold of 0 keeps the random network's detections, so the path from its
    # keypoints to the record runs end to end.
    est = YoloPoseEstimator(yolo_pose_weights, confidence=0.0, image_size=96, batch_size=2)
    frames, boxes = frames_and_boxes(4)
    boxes[:, :2] += 100  # all regions start right of and below (100, 100) - margin
    boxes[:, 2:] += 100
    boxes[1] = np.nan
    boxes[3] = [600, 100, 700, 200]  # right of the 500-pixel-wide frame
    frames = np.zeros((4, 400, 500, 3), np.uint8) + frames[:, :1, :1]
    out = est.estimate(frames, boxes)
    assert out.shape == (4, NUM_KEYPOINTS, 3)
    np.testing.assert_array_equal(out[[1, 3]], 0.0)
    for t in (0, 2):
        found = out[t, BODY][out[t, BODY, 2] > 0]
        assert len(found) > 0
        # Points sit inside the grown region in frame pixels (crop offset added back).
        grow = 0.25 * (boxes[t, 2:] - boxes[t, :2])
        assert (found[:, :2] >= np.floor(boxes[t, :2] - grow) - 1e-3).all()
        assert (found[:, :2] <= np.ceil(boxes[t, 2:] + grow) + 1e-3).all()
    np.testing.assert_array_equal(out[:, FACE.start :], 0.0)  # body only


def test_selection_by_name(yolo_pose_weights, tmp_path):
    assert POSE_ESTIMATORS == ("rtmw", "dwpose", "yolo11-pose")
    assert make_pose_estimator("yolo11-pose", weights=yolo_pose_weights).name == "yolo11-pose"
    est = make_pose_estimator("dwpose", weights=simcc_model(tmp_path / "m.onnx"))
    assert isinstance(est, RtmposeEstimator) and est.name == "dwpose"
    with pytest.raises(ValueError, match="unknown pose estimator 'openpose'.*rtmw"):
        make_pose_estimator("openpose")
