"""iMiGUE adapter on miniature hand-written corpora."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from hemo_jax.contract.schema import decode_record, encode_record
from preprocess.corpora.imigue import (
    CorpusError,
    CorpusLayout,
    CorpusWarning,
    SplitSpec,
    build_manifest,
    build_records,
    canonical_id,
    load_protocol,
)

COLUMNS = (
    "video_id", "label_id", "start_time", "start_frame", "end_time", "end_frame", "class",
    "subject_id", "subject_gender", "subject_nationality", "win_or_lose",
)  # fmt: skip


def write_csv(root: Path, rows: list[tuple[str, str, str]], clips: int = 2) -> Path:
    """rows: (video_id, subject_id, win_or_lose); each video gets ``clips`` clip rows."""
    path = root / "Label" / "labels_20200831.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for vid, subject, result in rows:
            for c in range(clips):
                w.writerow(
                    [
                        vid,
                        3,
                        c,
                        c * 25,
                        c + 1,
                        c * 25 + 24,
                        "folding arms",
                        subject,
                        "M",
                        "ESP",
                        result,
                    ]
                )
    return path


def person(offset: float) -> dict:
    pose = np.zeros((25, 3))
    pose[:8] = [[100 + offset + i, 50 + i, 0.9] for i in range(8)]
    return {
        "person_id": [-1],
        "pose_keypoints_2d": pose.ravel().tolist(),
        "face_keypoints_2d": [0.0] * 210,
        "hand_left_keypoints_2d": [0.0] * 63,
        "hand_right_keypoints_2d": [0.0] * 63,
    }


def write_skeleton(root: Path, folder: str, frames: tuple[int, ...] = (0,)) -> Path:
    d = root / "Data" / "skeleton" / "raw" / folder
    d.mkdir(parents=True, exist_ok=True)
    for i in frames:
        doc = {"version": 1.3, "people": [person(float(i))]}
        (d / f"{folder}_{i:012d}_keypoints.json").write_text(json.dumps(doc))
    return d


def write_video(path: Path, frames: int = 5, fps: float = 12.0, size=(48, 64)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (size[1], size[0]))
    for i in range(frames):
        writer.write(np.full((*size, 3), 20 * i, np.uint8))
    writer.release()


def quiet_manifest(layout: CorpusLayout, spec: SplitSpec | None = None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CorpusWarning)
        return build_manifest(layout, spec)


def test_packaged_protocol_holds_the_official_lists():
    p = load_protocol()
    assert (len(p.emotion_train), len(p.emotion_test)) == (102, 100)
    assert (len(p.subjects_train), len(p.subjects_test)) == (37, 35)
    assert not p.emotion_train & p.emotion_test
    assert p.subjects_train | p.subjects_test == {str(i) for i in range(1, 73)}


@pytest.mark.parametrize(
    ("raw", "want"),
    [("0007", "7"), ("7", "7"), (7, "7"), ("7.0", "7"), (" 12 ", "12"), ("a1", "a1")],
)
def test_canonical_id(raw, want):
    assert canonical_id(raw) == want


def test_emotion_protocol_split_counts_match_the_protocol(tmp_path):
    """Every protocol id plus three extras: the counts are the protocol's, extras are unlabeled."""
    protocol = load_protocol()
    ids = sorted(int(v) for v in protocol.emotion_train | protocol.emotion_test)
    extras = [
        v for v in range(1, 500) if str(v) not in protocol.emotion_train | protocol.emotion_test
    ][:3]
    rows = []
    for n, vid in enumerate(ids + extras):
        # Mixed naming: zero-padded folders for even ids, plain for odd; CSV ids plain or padded.
        write_skeleton(tmp_path, f"{vid:04d}" if vid % 2 == 0 else str(vid))
        rows.append(
            (f"{vid:03d}" if n % 3 == 0 else str(vid), str(n % 72 + 1), "win" if n % 2 else "lose")
        )
    write_csv(tmp_path, rows)
    manifest = quiet_manifest(CorpusLayout(tmp_path))
    by_split = {
        s: {r.video_id for r in manifest if r.split == s} for s in ("train", "test", "unlabeled")
    }
    assert by_split["train"] == protocol.emotion_train
    assert by_split["test"] == protocol.emotion_test
    assert by_split["unlabeled"] == {str(v) for v in extras}
    assert (len(by_split["train"]), len(by_split["test"])) == (102, 100)
    assert all(r.skeleton_dir is not None and r.skeleton_dir.is_dir() for r in manifest)
    assert [int(r.video_id) for r in manifest] == sorted(ids + extras)


@pytest.mark.filterwarnings("ignore:.*keypoint-only")
def test_row_without_skeleton_or_video_is_skipped_with_a_warning(tmp_path):
    write_csv(tmp_path, [("1", "1", "win"), ("7", "1", "lose"), ("999", "2", "win")])
    write_skeleton(tmp_path, "0001")
    write_skeleton(tmp_path, "0007")
    with pytest.warns(CorpusWarning, match=r"no skeleton folder .* skipped: 999"):
        manifest = build_manifest(CorpusLayout(tmp_path))
    assert [r.video_id for r in manifest] == ["1", "7"]
    assert [r.label for r in manifest] == [1, 0]


def test_no_usable_video_at_all_is_an_error(tmp_path):
    write_csv(tmp_path, [("1", "1", "win")])
    with pytest.warns(CorpusWarning), pytest.raises(CorpusError, match="none of the 1 labelled"):
        build_manifest(CorpusLayout(tmp_path))


def test_inconsistent_win_or_lose_names_the_video_and_lines(tmp_path):
    path = tmp_path / "labels.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        w.writerow(["12", 1, 0, 0, 1, 24, "x", "4", "M", "ESP", "win"])
        w.writerow(["13", 1, 0, 0, 1, 24, "x", "5", "M", "ESP", "lose"])
        w.writerow(["0012", 1, 0, 0, 1, 24, "x", "4", "M", "ESP", "lose"])
    with pytest.raises(
        CorpusError, match=r"video 12 has win_or_lose 'win' on lines 2 and 'lose' on lines 4"
    ):
        build_manifest(CorpusLayout(tmp_path, labels_csv=Path("labels.csv")))


def test_win_or_lose_accepts_words_in_any_case_and_digits(tmp_path):
    write_csv(tmp_path, [("1", "1", "WIN"), ("2", "1", "Lose"), ("3", "2", "1"), ("4", "2", "0")])
    for v in ("1", "2", "3", "4"):
        write_skeleton(tmp_path, v)
    manifest = quiet_manifest(CorpusLayout(tmp_path), SplitSpec("all"))
    assert [r.label for r in manifest] == [1, 0, 1, 0]
    assert {r.split for r in manifest} == {"train"}


def test_unknown_label_value_and_missing_column_are_named(tmp_path):
    write_csv(tmp_path, [("1", "1", "draw")])
    with pytest.raises(CorpusError, match=r"labels_20200831.csv:2: win_or_lose 'draw' for video 1"):
        build_manifest(CorpusLayout(tmp_path))
    bad = tmp_path / "bad.csv"
    bad.write_text("video_id,subject_id\n1,1\n")
    with pytest.raises(CorpusError, match=r"bad.csv: missing column\(s\) \['win_or_lose'\]"):
        build_manifest(CorpusLayout(tmp_path, labels_csv=Path("bad.csv")))


def test_subject_must_be_constant_within_a_video(tmp_path):
    write_csv(tmp_path, [("1", "1", "win"), ("1", "2", "win")], clips=1)
    with pytest.raises(CorpusError, match="video 1 has several subject_id values"):
        build_manifest(CorpusLayout(tmp_path))


def test_two_folders_for_one_video_are_refused(tmp_path):
    write_csv(tmp_path, [("7", "1", "win")])
    write_skeleton(tmp_path, "7")
    write_skeleton(tmp_path, "007")
    with pytest.raises(CorpusError, match="'007' and '7' are both video 7"):
        build_manifest(CorpusLayout(tmp_path))


@pytest.mark.filterwarnings("ignore:.*keypoint-only")
def test_cross_subject_uses_the_protocol_subject_lists(tmp_path):
    protocol = load_protocol()
    train_subject, test_subject = (
        sorted(protocol.subjects_train)[0],
        sorted(protocol.subjects_test)[0],
    )
    write_csv(
        tmp_path, [("1", train_subject, "win"), ("2", test_subject, "lose"), ("3", "500", "win")]
    )
    for v in ("1", "2", "3"):
        write_skeleton(tmp_path, v)
    with pytest.warns(CorpusWarning, match="neither cross-subject list .* 'unlabeled': 500"):
        manifest = build_manifest(CorpusLayout(tmp_path), SplitSpec("cross-subject"))
    assert [r.split for r in manifest] == ["train", "test", "unlabeled"]


def test_kfold_keeps_subjects_apart_and_is_deterministic(tmp_path):
    rows = [(str(v), str(v % 9 + 1), "win" if v % 3 else "lose") for v in range(1, 41)]
    write_csv(tmp_path, rows, clips=1)
    for vid, _, _ in rows:
        write_skeleton(tmp_path, vid)
    layout = CorpusLayout(tmp_path)
    k = 4
    tested: list[str] = []
    for fold in range(k):
        manifest = quiet_manifest(layout, SplitSpec("kfold", k=k, fold=fold, seed=3))
        assert manifest == quiet_manifest(layout, SplitSpec("kfold", k=k, fold=fold, seed=3))
        test = {r.subject_id for r in manifest if r.split == "test"}
        train = {r.subject_id for r in manifest if r.split == "train"}
        assert test and train and not test & train
        tested += [r.video_id for r in manifest if r.split == "test"]
    assert sorted(tested, key=int) == [str(v) for v in range(1, 41)]  # each video tested once
    other = [r.split for r in quiet_manifest(layout, SplitSpec("kfold", k=k, fold=0, seed=4))]
    first = [r.split for r in quiet_manifest(layout, SplitSpec("kfold", k=k, fold=0, seed=3))]
    assert other != first  # the seed shuffles the folds
    with pytest.raises(CorpusError, match="fold < k"):
        SplitSpec("kfold", k=4, fold=4)
    with pytest.raises(CorpusError, match="needs at least 12 subjects, have 9"):
        quiet_manifest(layout, SplitSpec("kfold", k=12))


def test_corpus_protocol_file_is_preferred_and_can_be_overridden(tmp_path):
    write_csv(tmp_path, [("1", "1", "win"), ("2", "2", "lose")])
    write_skeleton(tmp_path, "1")
    write_skeleton(tmp_path, "2")
    own = {
        "emotion": {"train_video_ids": [2], "test_video_ids": [1]},
        "micro_gesture_cross_subject": {"train_subject_ids": [1], "test_subject_ids": [2]},
    }
    (tmp_path / "Label" / "protocol.json").write_text(json.dumps(own))
    manifest = quiet_manifest(CorpusLayout(tmp_path))
    assert [r.split for r in manifest] == ["test", "train"]
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**own, "emotion": {"train_video_ids": [1], "test_video_ids": []}}))
    manifest = quiet_manifest(CorpusLayout(tmp_path, protocol=other))
    assert [r.split for r in manifest] == ["train", "unlabeled"]
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"emotion": {"train_video_ids": [1]}}))
    with pytest.raises(CorpusError, match=r"broken.json: missing emotion.test_video_ids"):
        quiet_manifest(CorpusLayout(tmp_path, protocol=broken))


def test_skeletons_without_videos_give_keypoint_only_records(tmp_path):
    write_csv(tmp_path, [("1", "1", "win"), ("2", "2", "lose"), ("3", "2", "win")])
    write_skeleton(tmp_path, "0001", frames=(0, 1, 3))
    write_skeleton(tmp_path, "0002", frames=(0,))
    write_video(tmp_path / "videos" / "0002.mp4")
    write_video(tmp_path / "videos" / "3.avi", frames=4, fps=10.0)
    (tmp_path / "Data" / "transcripts").mkdir(parents=True)
    (tmp_path / "Data" / "transcripts" / "0001.txt").write_text("Q: How was it?\nA: Fine.\n")
    with pytest.warns(CorpusWarning, match=r"skeletons but no video file .* keypoint-only: 1$"):
        manifest = build_manifest(CorpusLayout(tmp_path), SplitSpec("all"))
    one, two, three = manifest
    assert one.video_path is None and one.transcript_path is not None
    assert two.video_path.name == "0002.mp4" and three.skeleton_dir is None

    records = list(build_records(manifest, source="synthetic"))
    for record in records:  # every record satisfies the contract
        assert decode_record(encode_record(record)).video_id == record.video_id
    r1, r2, r3 = records
    assert (r1.fps, r1.frame_size) == (25.0, (720, 1280))  # iMiGUE's, no video to say otherwise
    assert r1.keypoint_frames.tolist() == [0, 1, 3]
    assert r1.keypoints.shape == (3, 137, 3) and r1.keypoints.dtype == np.float32
    np.testing.assert_allclose(r1.keypoints[2, 0], [103, 50, 0.9], rtol=1e-3)
    assert r1.transcript.startswith("Q: How was it?")
    assert (r1.label, r1.split, r1.source, r1.subject_id) == (1, "train", "synthetic", "1")
    assert (r2.fps, r2.frame_size) == (12.0, (48, 64))  # read from the mp4
    assert r3.num_frames == 0 and (r3.fps, r3.frame_size) == (10.0, (48, 64))


def test_unreadable_video_is_named(tmp_path):
    write_csv(tmp_path, [("1", "1", "win")])
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "1.mp4").write_bytes(b"not a video")
    manifest = quiet_manifest(CorpusLayout(tmp_path), SplitSpec("all"))
    with pytest.raises(CorpusError, match=r"1\.mp4: cannot open: not a video OpenCV can decode"):
        list(build_records(manifest))
