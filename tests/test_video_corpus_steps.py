"""Unlabelled video files as a corpus (preprocess.corpora.videos), and the steps that give
their records keypoints from a pose estimator and a transcript from speech, through
``preprocess run --corpus videos``. Offline: the pose model and the Whisper are made here."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from pose_models import simcc_model
from speech_models import CARPHONE, tiny_whisper, write_video_with_tone

from hemo_jax.contract.shards import open_shards
from preprocess import steps
from preprocess.__main__ import main
from preprocess.corpora.imigue import CorpusError
from preprocess.corpora.videos import video_rows
from preprocess.run import RunConfig, RunError
from preprocess.speech.whisper_asr import load_asr, transcribe
from preprocess.video.decode import read_video


def test_video_rows_from_a_folder_a_file_and_a_glob(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for name in ("a/talk.mp4", "a/x.MOV", "a/readme.txt", "b/talk.mkv"):
        (tmp_path / name).write_bytes(b"")
    rows = video_rows([tmp_path / "a"])
    assert [r.video_id for r in rows] == ["talk", "x"]  # the text file is no video
    assert all(r.label == -1 and r.split == "unlabeled" for r in rows)
    assert [r.subject_id for r in rows] == ["talk", "x"]  # each its own subject
    # Same names in two folders: ids from the path below their common folder.
    rows = video_rows([str(tmp_path / "*" / "talk.*")], subject_id="p1")
    assert [r.video_id for r in rows] == ["a/talk", "b/talk"]
    assert {r.subject_id for r in rows} == {"p1"}
    named = video_rows([tmp_path / "a" / "readme.txt"])  # a named file is taken as it is
    assert named[0].video_path == tmp_path / "a" / "readme.txt"
    with pytest.raises(CorpusError, match="nothing.mp4: no such file or folder"):
        video_rows([tmp_path / "nothing.mp4"])


def test_an_estimator_needs_boxes_from_a_detector_not_from_keypoints(tmp_path):
    with pytest.raises(RunError, match="--pose rtmw finds keypoints in the person boxes"):
        RunConfig(corpus="synthetic", root=tmp_path, out=tmp_path / "o", pose="rtmw")
    with pytest.raises(RunError, match="openpose-bin needs --openpose-bin"):
        RunConfig(corpus="videos", root=tmp_path, out=tmp_path / "o", pose="openpose-bin")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    base = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    return simcc_model(base / "rtmw.onnx", input_size=(288, 384)), tiny_whisper(base / "whisper")


def test_run_on_videos_gives_estimated_keypoints_and_transcripts_from_speech(models, tmp_path):
    pose, whisper = models
    videos = tmp_path / "videos"
    videos.mkdir()
    tone = write_video_with_tone(videos / "tone.mp4", 3.0)
    shutil.copy(CARPHONE, videos / "carphone.mp4")  # a video without an audio track
    out = tmp_path / "shards"
    argv = ["run", "--corpus=videos", f"--root={videos}", f"--out={out}", "--labeler=none"]
    argv += ["--detector=full-frame", "--pose=rtmw", f"--pose-weights={pose}"]
    assert main([*argv, f"--asr={whisper}", "--no-progress"]) == 0

    shards = open_shards(out)
    assert sorted(shards.video_ids) == ["carphone", "tone"]
    settings = steps.StepSettings(
        source="videos", fps=1.0, frame_size=(1, 1), detector="full-frame", pose="rtmw",
        pose_weights=pose,
    )  # fmt: skip
    estimator = steps.load_models(settings, labeler=False).pose
    for vid in ("carphone", "tone"):
        record = shards.read(shards.index_of(vid))
        assert record.source == "videos" and record.label == -1 and record.split == "unlabeled"
        assert record.keypoint_source == shards.infos[shards.index_of(vid)].keypoint_source
        assert record.keypoint_source == "rtmw"
        np.testing.assert_array_equal(record.keypoint_frames, record.crop_frames)
        # The estimator's own answer on the frames the crops were cut from.
        frames = read_video(videos / f"{vid}.mp4", image_fps=2.0).frames
        np.testing.assert_allclose(
            record.keypoints, estimator.estimate(frames, record.boxes), rtol=1e-5, atol=1e-3
        )
    torch.manual_seed(0)
    heard = transcribe(tone, load_asr(whisper)).text
    assert heard  # the random Whisper says something about the tone
    assert shards.read(shards.index_of("tone")).transcript == heard
    assert shards.read(shards.index_of("carphone")).transcript == ""
    status = (out / "preprocess_status.json").read_text()
    assert "no audio track: no transcript" in status
