"""preprocess.video.track: choosing and following the subject over synthetic candidate boxes."""

from __future__ import annotations

import numpy as np
import pytest

from preprocess.video.track import TrackParams, box_iou, track_subject

FRAME = (480, 640)  # (H, W) for the synthetic tracker cases

SUBJECT = np.array([260, 120, 380, 460], np.float32)  # central, tall: the interviewee
DISTRACTOR = np.array([20, 300, 80, 420], np.float32)  # small, at the edge
# Larger than the subject and, on size and centrality alone, the better pick.
BIG_DISTRACTOR = np.array([300, 0, 640, 479], np.float32)


def _frames(*boxes_per_frame):
    return [np.asarray(b, np.float32).reshape(-1, 4) for b in boxes_per_frame]


def _close(a, b, tol=1.0):
    return np.all(np.abs(np.asarray(a) - np.asarray(b)) <= tol)


def test_larger_distractor_for_one_frame_does_not_steal_track():
    dets = _frames(*([[SUBJECT, DISTRACTOR]] * 8), [BIG_DISTRACTOR, SUBJECT], [SUBJECT, DISTRACTOR])
    track = track_subject(dets, FRAME)
    assert len(track.boxes) == 10
    for box in track.boxes:
        assert _close(box, SUBJECT)
    assert track.matched.all()


def test_larger_distractor_in_first_frame_does_not_win_the_choice():
    # Size alone would pick it in frame 0; persistence over the warm-up frames does not.
    dets = _frames([BIG_DISTRACTOR, SUBJECT], *([[SUBJECT, DISTRACTOR]] * 6))
    track = track_subject(dets, FRAME)
    assert all(_close(box, SUBJECT) for box in track.boxes)


def test_gaps_are_carried_over_and_leading_gap_takes_first_box():
    moved = SUBJECT + np.array([10, 0, 10, 0], np.float32)
    dets = _frames([], [], SUBJECT, SUBJECT, [], [], moved, moved, moved, [])
    track = track_subject(dets, FRAME, TrackParams(smoothing=1.0))
    np.testing.assert_array_equal(
        track.matched, [False, False, True, True, False, False, True, True, True, False]
    )
    for t in (0, 1, 2, 3, 4, 5):
        np.testing.assert_allclose(track.boxes[t], SUBJECT)
    for t in (6, 7, 8, 9):
        np.testing.assert_allclose(track.boxes[t], moved)


def test_lost_subject_is_chosen_again_after_max_misses():
    # A camera cut: the subject reappears elsewhere, not overlapping the old box.
    elsewhere = np.array([420, 100, 560, 470], np.float32)
    params = TrackParams(max_misses=2, warmup=2, smoothing=1.0)
    dets = _frames(*([SUBJECT] * 4), *([elsewhere] * 8))
    track = track_subject(dets, FRAME, params)
    assert len(track.boxes) == 12
    assert _close(track.boxes[3], SUBJECT)
    # Two misses carry the old box, then the new position is taken (and backfilled).
    assert _close(track.boxes[4], SUBJECT) and _close(track.boxes[5], SUBJECT)
    assert all(_close(b, elsewhere) for b in track.boxes[7:])


def test_nobody_found_gives_full_frame_boxes():
    track = track_subject(_frames([], [], []), FRAME)
    np.testing.assert_array_equal(track.boxes, [[0, 0, 640, 480]] * 3)
    assert not track.matched.any()


def test_smoothing_damps_jitter():
    rng = np.random.default_rng(0)
    noisy = [SUBJECT + rng.normal(0, 4, 4).astype(np.float32) for _ in range(60)]
    raw = track_subject(_frames(*noisy), FRAME, TrackParams(smoothing=1.0)).boxes
    smooth = track_subject(_frames(*noisy), FRAME, TrackParams(smoothing=0.3)).boxes
    np.testing.assert_allclose(raw, np.stack(noisy), atol=1e-5)
    assert smooth[10:].std(0).mean() < 0.6 * raw[10:].std(0).mean()


@pytest.mark.parametrize("seed", range(5))
def test_one_finite_box_per_frame_whatever_the_detections(seed):
    rng = np.random.default_rng(seed)
    dets = []
    for _ in range(int(rng.integers(1, 40))):
        n = int(rng.integers(0, 4))
        xy = rng.uniform(0, 500, (n, 2))
        wh = rng.uniform(5, 200, (n, 2))
        dets.append(np.concatenate([xy, xy + wh, rng.uniform(0, 1, (n, 1))], 1))
    track = track_subject(dets, FRAME, TrackParams(warmup=3, max_misses=2))
    assert track.boxes.shape == (len(dets), 4)
    assert track.boxes.dtype == np.float32
    assert np.isfinite(track.boxes).all()
    assert track.matched.sum() <= sum(len(d) > 0 for d in dets)


def test_box_iou():
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], np.float32)
    np.testing.assert_allclose(box_iou(boxes[0], boxes), [1.0, 50 / 150, 0.0])
