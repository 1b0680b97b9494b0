"""Synthetic corpus: difficulty band, layout readable by the adapter and reader, determinism."""

from __future__ import annotations

import csv
import dataclasses
import json
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from preprocess.__main__ import main
from preprocess.corpora.imigue import (
    CorpusLayout,
    CorpusWarning,
    SplitSpec,
    build_manifest,
    build_records,
)
from preprocess.keypoints.openpose import read_openpose_dir
from preprocess.synthetic.corpus import CSV_COLUMNS, make_protocol, write_corpus
from preprocess.synthetic.motion import generate_corpus, generate_video
from preprocess.synthetic.plan import GESTURES, SynthConfig, plan_corpus

# Body joints above the table: nose, neck, shoulders, elbows, wrists, eyes, ears.
UPPER_BODY = [0, 1, 2, 3, 4, 5, 6, 7, 15, 16, 17, 18]


def keypoint_statistics(keypoints: np.ndarray) -> np.ndarray:
    """Per-video features: mean, std and mean |velocity| of neck-centred, shoulder-scaled
    upper-body joints and of the face and hand centroids (missing points ignored)."""
    kp = keypoints.astype(np.float64)
    seen = kp[..., 2] > 0
    ok = seen[:, 1] & seen[:, 2] & seen[:, 5]
    kp, seen = kp[ok], seen[ok]
    half_width = np.linalg.norm(kp[:, 2, :2] - kp[:, 5, :2], axis=-1) / 2
    xy = (kp[..., :2] - kp[:, 1:2, :2]) / half_width[:, None, None]
    xy[~seen] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-missing columns → NaN → 0
        parts = [xy[:, UPPER_BODY]]
        parts += [
            np.nanmean(xy[:, s], 1, keepdims=True)
            for s in (slice(25, 95), slice(95, 116), slice(116, 137))
        ]
        points = np.concatenate(parts, 1)
        speed = np.abs(np.diff(points, axis=0))
        stats = [np.nanmean(points, 0), np.nanstd(points, 0), np.nanmean(speed, 0)]
    return np.nan_to_num(np.concatenate([s.ravel() for s in stats]))


def grouped_cv_balanced_accuracy(model, x, labels, groups) -> float:
    folds = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=0)
    predicted = cross_val_predict(model, x, labels, groups=groups, cv=folds)
    return float(balanced_accuracy_score(labels, predicted))


def test_difficulty_band_for_keypoints_and_transcripts():
    """The documented difficulty: a simple classifier gets 0.65–0.85, neither chance nor 1.0."""
    videos = generate_corpus(SynthConfig(videos=240, seed=0))
    labels = np.array([v.label for v in videos])
    groups = np.array([v.subject.subject_id for v in videos])
    features = np.stack([keypoint_statistics(v.track()[0]) for v in videos])
    keypoint_model = make_pipeline(
        StandardScaler(), LogisticRegression(C=0.1, class_weight="balanced", max_iter=5000)
    )
    text_model = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), min_df=2),
        LogisticRegression(class_weight="balanced", max_iter=5000),
    )
    keypoint_score = grouped_cv_balanced_accuracy(keypoint_model, features, labels, groups)
    text_score = grouped_cv_balanced_accuracy(
        text_model, [v.transcript for v in videos], labels, groups
    )
    print(f"balanced accuracy: keypoints {keypoint_score:.3f}, transcripts {text_score:.3f}")
    assert 0.65 <= keypoint_score <= 0.85
    assert 0.65 <= text_score <= 0.85
    # No gesture gives the answer away: every stress gesture shows up in both classes.
    for gesture in GESTURES[:5]:
        seen_in = {v.label for v in videos for e in v.events if e.gesture == gesture}
        assert seen_in == {0, 1}, gesture.name


def test_plan_labels_subjects_and_per_video_streams():
    config = SynthConfig(videos=50, seed=7)
    plan = plan_corpus(config)
    assert sum(plan.labels) == round(0.72 * 50)
    counts = np.bincount(plan.video_subject)
    assert len(counts) == len(plan.subjects) >= 10 and counts.min() >= 1 and counts.max() >= 3
    a, b = generate_video(plan, 3), generate_video(plan_corpus(config), 3)
    np.testing.assert_array_equal(a.keypoints, b.keypoints)
    assert a.transcript == b.transcript and a.events == b.events
    # Everything else about video 3 comes from streams keyed by (seed, 3): other videos'
    # labels and lengths leave it as it is, its own label does not.
    others_changed = dataclasses.replace(
        plan,
        labels=tuple(y if i == 3 else 1 - y for i, y in enumerate(plan.labels)),
        num_frames=tuple(n if i == 3 else n + 7 for i, n in enumerate(plan.num_frames)),
    )
    c = generate_video(others_changed, 3)
    np.testing.assert_array_equal(a.keypoints, c.keypoints)
    assert (c.transcript, c.events, c.scene_seed) == (a.transcript, a.events, a.scene_seed)
    own_label_changed = dataclasses.replace(
        plan, labels=tuple(1 - y if i == 3 else y for i, y in enumerate(plan.labels))
    )
    assert not np.array_equal(generate_video(own_label_changed, 3).keypoints, a.keypoints)
    other = generate_video(plan_corpus(SynthConfig(videos=50, seed=8)), 3)
    assert not np.array_equal(a.keypoints[:2], other.keypoints[:2])


def test_protocol_is_balanced_and_subject_disjoint_like_imigue():
    plan = plan_corpus(SynthConfig(videos=120, seed=1))
    protocol = make_protocol(plan)
    emotion = protocol["emotion"]
    subjects = protocol["micro_gesture_cross_subject"]
    listed = set()
    for split in ("train", "test"):
        ids = emotion[f"{split}_video_ids"]
        labels = [plan.labels[i - 1] for i in ids]
        assert len(ids) >= 20 and sum(labels) * 2 == len(labels)  # balanced: majority is 0.50
        owners = {int(plan.subjects[plan.video_subject[i - 1]].subject_id) for i in ids}
        assert owners <= set(subjects[f"{split}_subject_ids"])
        listed |= set(ids)
    assert not set(subjects["train_subject_ids"]) & set(subjects["test_subject_ids"])
    losses = {i + 1 for i, label in enumerate(plan.labels) if label == 0}
    rest = set(range(1, 121)) - listed
    assert rest and not rest & losses  # the unlabeled pool is left-over wins, as in iMiGUE


SMALL = ["--videos", "6", "--seed", "3", "--fps", "10", "--min-seconds", "2", "--max-seconds", "3",
         "--width", "160", "--height", "120", "--videos-per-subject", "2"]  # fmt: skip


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "corpus"
    assert main(["synth", "--out", str(out), *SMALL, "--jobs", "1"]) == 0
    return out


def test_cli_corpus_is_readable_by_the_adapter_and_openpose_reader(small_corpus):
    out = small_corpus
    with open(out / "Label" / "labels_20200831.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        rows = list(reader)
    assert {r["video_id"] for r in rows} == {f"{i:04d}" for i in range(1, 7)}
    with warnings.catch_warnings():
        warnings.simplefilter("error", CorpusWarning)  # a complete corpus warns about nothing
        manifest = build_manifest(CorpusLayout(out), SplitSpec("all"))
    assert [r.video_id for r in manifest] == ["1", "2", "3", "4", "5", "6"]
    assert all(r.skeleton_dir and r.video_path and r.transcript_path for r in manifest)

    config = SynthConfig(
        videos=6,
        seed=3,
        fps=10,
        min_seconds=2,
        max_seconds=3,
        width=160,
        height=120,
        videos_per_subject=2,
    )
    plan = plan_corpus(config)
    records = list(build_records(manifest, source="synthetic"))
    for i, (row, record) in enumerate(zip(manifest, records, strict=True)):
        video = generate_video(plan, i)
        sequence = read_openpose_dir(row.skeleton_dir)
        keypoints, frames = video.track()
        np.testing.assert_array_equal(sequence.frames, frames)
        np.testing.assert_allclose(sequence.keypoints, keypoints, atol=1e-3)  # 3 decimals in JSON
        assert (record.label, record.fps, record.frame_size) == (video.label, 10.0, (120, 160))
        assert record.transcript == video.transcript
        capture = cv2.VideoCapture(str(row.video_path))
        count = 0
        while capture.read()[0]:
            count += 1
        capture.release()
        assert count == video.num_frames


def test_cli_output_is_deterministic_and_resumes(small_corpus, tmp_path):
    # Two processes write the same bytes as one.
    again = tmp_path / "again"
    assert main(["synth", "--out", str(again), *SMALL, "--jobs", "2"]) == 0
    files = sorted(p.relative_to(small_corpus) for p in small_corpus.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert any(f.suffix == ".mp4" for f in files) and any(f.suffix == ".json" for f in files)
    for f in files:  # byte-identical, mp4 included
        assert (small_corpus / f).read_bytes() == (again / f).read_bytes(), f

    # An interrupted run (a video folder and the CSV missing) resumes to the same bytes.
    skeleton = again / "Data" / "skeleton" / "raw" / "0004"
    first = sorted(skeleton.iterdir())[0]
    for p in skeleton.iterdir():
        p.unlink()
    skeleton.rmdir()
    (again / "Label" / "labels_20200831.csv").unlink()
    assert main(["synth", "--out", str(again), *SMALL, "--jobs", "2"]) == 0
    assert first.read_bytes() == (small_corpus / first.relative_to(again)).read_bytes()
    assert (again / "Label" / "labels_20200831.csv").read_bytes() == (
        small_corpus / "Label" / "labels_20200831.csv"
    ).read_bytes()
    with pytest.raises(FileExistsError, match="other settings"):
        write_corpus(SynthConfig(videos=6, seed=4), again)
    with pytest.raises(ValueError, match="jobs=0 must be >= 1"):
        write_corpus(SynthConfig(videos=6, seed=3), again, jobs=0)


def test_emotion_protocol_on_the_synthetic_corpus_is_balanced(tmp_path):
    out = tmp_path / "c"
    write_corpus(
        SynthConfig(videos=40, seed=2, min_seconds=1, max_seconds=1, fps=5), out, render=False
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CorpusWarning)  # no videos rendered: keypoint-only
        manifest = build_manifest(CorpusLayout(out))
    protocol = json.loads((out / "Label" / "protocol.json").read_text())
    for split in ("train", "test"):
        rows = [r for r in manifest if r.split == split]
        assert len(rows) == len(protocol["emotion"][f"{split}_video_ids"]) > 0
        assert sum(r.label for r in rows) * 2 == len(rows)
    assert {r.label for r in manifest if r.split == "unlabeled"} == {1}


def test_module_entry_point_runs(tmp_path):
    out = tmp_path / "c"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "preprocess",
            "synth",
            "--out",
            str(out),
            "--videos",
            "2",
            "--no-video",
            "--min-seconds",
            "1",
            "--max-seconds",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "wrote 2 videos" in done.stdout
    listing = subprocess.run(
        [
            sys.executable,
            "-m",
            "preprocess",
            "manifest",
            "--root",
            str(out),
            "--split-policy",
            "all",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listing.returncode == 0, listing.stderr
    assert "| train | 2 |" in listing.stdout


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="win_rate=1.5"):
        SynthConfig(win_rate=1.5)
    with pytest.raises(ValueError, match="frame 161x120"):
        SynthConfig(width=161, height=120)


def test_imigue_lengths_follow_its_mean_and_range_and_leave_the_rest_of_the_plan_alone():
    uniform = SynthConfig(videos=359, fps=25, min_seconds=30, max_seconds=1500)
    imigue = dataclasses.replace(uniform, lengths="imigue")
    frames = np.array(plan_corpus(imigue).num_frames)
    assert 19_000 < frames.mean() < 21_500  # iMiGUE: about 20,000 frames a video
    assert frames.min() >= 30 * 25 and frames.max() <= 1500 * 25
    assert 5_000 < frames.std() < 9_000  # 300 s at 25 fps, less what the clipping takes
    plain, drawn = plan_corpus(uniform), plan_corpus(imigue)
    assert (plain.labels, plain.video_subject) == (drawn.labels, drawn.video_subject)
    # The settings file of a uniform corpus is what it was before the option existed.
    assert "lengths" not in uniform.to_json() and imigue.to_json()["lengths"] == "imigue"
    with pytest.raises(ValueError, match="lengths='long'"):
        SynthConfig(lengths="long")
