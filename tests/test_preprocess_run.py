"""`python -m preprocess run` on a small synthetic corpus: shards, failures, reruns, labels.

The labeler is the real one (google-genai client) talking to the SIMULATED VLM server
(`preprocess.synthetic.vlm_sim`) with the corpus's ground truth and accuracy 1.0, so every pseudo
label must equal the true label of its own video.
"""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from hemo_jax.contract.shards import open_shards
from preprocess.__main__ import main
from preprocess.corpora.imigue import CorpusLayout, build_manifest
from preprocess.labeling.cache import file_sha256
from preprocess.run import STATUS_FILE
from preprocess.synthetic import vlm_oracle, vlm_sim
from preprocess.synthetic.corpus import write_corpus
from preprocess.synthetic.plan import SynthConfig

KEY = "AIzaSy-TEST-run-secret-key-0123456789"
# 8 short, small videos: 2-3 s at 10 fps, 160x120.
CORPUS = SynthConfig(videos=8, fps=10, width=160, height=120, min_seconds=2, max_seconds=3)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    write_corpus(CORPUS, root)
    return root


@pytest.fixture
def corpus(pristine: Path, tmp_path: Path) -> Path:
    """A private copy, free to damage."""
    return Path(shutil.copytree(pristine, tmp_path / "corpus"))


@pytest.fixture
def key(monkeypatch):
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)  # it would win over GEMINI_API_KEY
    monkeypatch.setenv("GEMINI_API_KEY", KEY)


def manifest(root: Path):
    return {r.video_id: r for r in build_manifest(CorpusLayout(root))}


def run(root: Path, out: Path, *extra: str) -> int:
    return main(
        ["run", "--corpus", "synthetic", "--root", str(root), "--out", str(out), "--no-progress"]
        + list(extra)
    )


def gemini_args(sim: vlm_sim.SimulatedVLM, out: Path) -> list[str]:
    cache = out.parent / "label_cache"  # outside the shard set, through --label-cache
    return ["--labeler", "gemini", "--base-url", sim.base_url, "--label-cache", str(cache)]


def status(out: Path) -> dict:
    return json.loads((out / STATUS_FILE).read_text())


def inspect(out: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "hemo_jax.data.describe", str(out), "--json", "--verify"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def split_counts(rows) -> dict[str, int]:
    return dict(Counter(r.split for r in rows))


def generate_shas(sim: vlm_sim.SimulatedVLM) -> Counter:
    return sim.generate_counts()


def truncated_avi(mp4: Path) -> Path:
    """The video re-encoded as MJPG AVI and cut in half: it opens, then ends early."""
    capture = cv2.VideoCapture(str(mp4))
    avi = mp4.with_suffix(".avi")
    size = (CORPUS.width, CORPUS.height)
    writer = cv2.VideoWriter(str(avi), cv2.VideoWriter_fourcc(*"MJPG"), CORPUS.fps, size)
    while (frame := capture.read())[0]:
        writer.write(frame[1])
    capture.release()
    writer.release()
    avi.write_bytes(avi.read_bytes()[: avi.stat().st_size // 2])
    return avi


def test_run_labels_crops_and_lists_corrupt_videos(corpus, tmp_path, key):
    rows = manifest(corpus)
    truth = vlm_oracle.truth_for_videos([(r.video_path, r.label) for r in rows.values()])
    garbage, mp4 = rows["3"].video_path, rows["5"].video_path
    originals = {p: p.read_bytes() for p in (garbage, mp4)}
    garbage.write_bytes(np.random.default_rng(0).bytes(len(originals[garbage])))
    truncated = truncated_avi(mp4)
    mp4.unlink()
    out = tmp_path / "shards"

    with vlm_sim.SimulatedVLM(truth, accuracy=1.0, api_key=KEY) as sim:
        assert run(corpus, out, *gemini_args(sim, out)) == 1  # a video failed

        state = status(out)
        assert set(state["failed"]) == {"3", "5"}
        assert state["failed"]["3"]["step"] == "corpus"  # does not even open
        assert garbage.name in state["failed"]["3"]["reason"]
        assert state["failed"]["5"]["step"] == "crops"  # opens, then ends early
        assert truncated.name in state["failed"]["5"]["reason"]
        assert "stream ends after" in state["failed"]["5"]["reason"]
        summary = state["summary"]
        assert summary["finished"] and summary["done"] == 6 and summary["skipped"] == 0
        assert set(summary["done_ids"]) | set(state["failed"]) == set(rows)

        stored = [r for vid, r in rows.items() if vid not in ("3", "5")]
        shown = inspect(out)
        assert shown["complete"] and shown["records"] == 6
        assert {k: v["records"] for k, v in shown["splits"].items()} == split_counts(stored)
        for split in shown["splits"].values():
            assert split["pseudo_label"]["unknown"] == 0
            assert split["pseudo_label"]["win"] == split["label"]["win"]
        assert shown["fields"]["crops"] == 6 and shown["fields"]["reasoning"] == 6

        shards = open_shards(out)
        for record in shards.records():
            row = rows[record.video_id]
            assert record.source == "synthetic" and record.split == row.split
            assert record.pseudo_label == record.label == row.label  # oracle accuracy 1.0
            assert record.reasoning and 0.5 <= record.pseudo_confidence <= 1.0
            assert record.transcript == row.transcript_path.read_text(encoding="utf-8")
            assert record.num_frames > 0 and record.num_images == len(record.crops) > 0
            for jpeg in record.crops:
                assert jpeg[:2] == b"\xff\xd8"
                image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
                assert image.shape == (224, 224, 3)
        shards.close()

        # The files are mended; the rerun builds only them and asks only about them.
        truncated.unlink()
        for path, data in originals.items():
            path.write_bytes(data)
        before = generate_shas(sim)
        assert run(corpus, out, *gemini_args(sim, out)) == 0
        asked = generate_shas(sim) - before
        assert set(asked) == {file_sha256(garbage), file_sha256(mp4)}
        assert all(n == 2 for n in asked.values())  # Chain-of-Thought, then Reflection
        state = status(out)
        assert state["failed"] == {}
        assert state["summary"]["skipped"] == 6 and sorted(state["summary"]["done_ids"]) == [
            "3",
            "5",
        ]
        shown = inspect(out)
        assert shown["records"] == 8 and shown["splits"]["train"]["pseudo_label"]["unknown"] == 0

        # Nothing left to do: no record built, no request sent.
        before = generate_shas(sim)
        assert run(corpus, out, *gemini_args(sim, out)) == 0
        assert generate_shas(sim) == before
        assert status(out)["summary"]["skipped"] == 8


def test_a_failed_label_fails_its_video_until_a_rerun_gets_it(corpus, tmp_path, key):
    rows = manifest(corpus)
    truth = vlm_oracle.truth_for_videos([(r.video_path, r.label) for r in rows.values()])
    unlucky = file_sha256(rows["4"].video_path)
    faults = vlm_oracle.FaultPlan(by_video={unlucky: ["500"]})
    out = tmp_path / "shards"
    with vlm_sim.SimulatedVLM(truth, accuracy=1.0, api_key=KEY, faults=faults) as sim:
        args = [*gemini_args(sim, out), "--max-attempts", "1"]
        assert run(corpus, out, *args) == 1
        state = status(out)
        assert list(state["failed"]) == ["4"]
        assert state["failed"]["4"]["step"] == "label"
        assert state["failed"]["4"]["reason"].startswith("server_error")
        assert KEY not in (out / STATUS_FILE).read_text()
        assert state["summary"]["labeler"]["failed"] == 1
        assert inspect(out)["records"] == 7

        before = generate_shas(sim)
        assert run(corpus, out, *args) == 0
        assert set(generate_shas(sim) - before) == {unlucky}
        assert status(out)["failed"] == {}
        assert inspect(out)["records"] == 8


def test_keep_unlabelled_writes_the_video_without_a_pseudo_label(corpus, tmp_path, key):
    rows = manifest(corpus)
    blocked = file_sha256(rows["4"].video_path)
    faults = vlm_oracle.FaultPlan(by_video={blocked: ["safety"] * 4})
    out = tmp_path / "shards"
    with vlm_sim.SimulatedVLM(api_key=KEY, faults=faults) as sim:
        assert run(corpus, out, *gemini_args(sim, out), "--keep-unlabelled") == 0
    shards = open_shards(out)
    record = shards.read(shards.index_of("4"))
    others = [r.pseudo_label for r in shards.records() if r.video_id != "4"]
    shards.close()
    assert record.pseudo_label == -1 and record.num_images > 0 and len(shards) == 8
    assert -1 not in others
    assert any("blocked" in n for n in status(out)["warnings"]["4"])


def test_interrupted_run_keeps_finished_shards_and_resumes(corpus, tmp_path, monkeypatch):
    import preprocess.steps

    real_crop_video = preprocess.steps.crop_video
    calls = []

    def crop_then_interrupt(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_crop_video(path, *args, **kwargs)

    monkeypatch.setattr(preprocess.steps, "crop_video", crop_then_interrupt)
    out = tmp_path / "shards"
    args = ["--labeler", "none", "--records-per-shard", "2"]
    assert run(corpus, out, *args) == 130
    summary = status(out)["summary"]
    # One shard (videos 1, 2) was finished; video 3's record was in the unfinished one, lost.
    assert not summary["finished"] and summary["done_ids"] == ["1", "2"]
    partial = open_shards(out, allow_incomplete=True)
    assert partial.video_ids == ["1", "2"]
    partial.close()

    monkeypatch.setattr(preprocess.steps, "crop_video", real_crop_video)
    assert run(corpus, out, *args) == 0
    summary = status(out)["summary"]
    assert summary["finished"] and summary["skipped_ids"] == ["1", "2"] and summary["done"] == 6
    assert inspect(out)["records"] == 8


def test_labeler_none_full_frame_and_a_video_without_its_file(corpus, tmp_path, monkeypatch):
    for name in ("GOOGLE_API_KEY", "GEMINI_API_KEY"):
        monkeypatch.delenv(name, raising=False)  # labeler none needs no key
    rows = manifest(corpus)
    rows["2"].video_path.unlink()
    out = tmp_path / "shards"
    assert run(corpus, out, "--labeler", "none", "--detector", "full-frame") == 0

    shown = inspect(out)
    assert shown["records"] == 8
    assert sum(s["pseudo_label"]["unknown"] for s in shown["splits"].values()) == 8
    assert shown["fields"]["crops"] == 7 and shown["fields"]["reasoning"] == 0
    shards = open_shards(out)
    for record in shards.records():
        assert record.pseudo_label == -1 and record.pseudo_confidence == 0.0
        if record.video_id == "2":  # keypoint-only, with the synthetic corpus's fps and size
            assert record.num_images == 0 and record.num_frames > 0
            assert record.fps == CORPUS.fps and record.frame_size == (CORPUS.height, CORPUS.width)
        else:
            assert np.all(record.boxes == [0, 0, CORPUS.width, CORPUS.height])
    shards.close()
    notes = status(out)["warnings"]
    assert any("keypoint-only" in n for n in notes["2"])
    assert any("no video" in n for n in notes[""])  # the adapter's warning, kept

    # Other settings would mix two kinds of record in one shard set: refused.
    assert run(corpus, out, "--labeler", "none", "--detector", "keypoints") == 2
    assert inspect(out)["records"] == 8


def test_missing_key_stops_before_any_work(corpus, tmp_path, monkeypatch, capsys):
    for name in ("GOOGLE_API_KEY", "GEMINI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "shards"
    assert run(corpus, out, "--labeler", "gemini") == 2
    assert "GEMINI_API_KEY" in capsys.readouterr().err
    assert not (out / "manifest.json").exists()


OPENPOSE_DOUBLE = """#!{python}
# TEST DOUBLE of the OpenPose binary: copies the frame files kept in OPENPOSE_DOUBLE_SOURCE.
import argparse, os, shutil
p = argparse.ArgumentParser()
p.add_argument("--video"); p.add_argument("--write_json"); p.add_argument("--display")
p.add_argument("--render_pose"); p.add_argument("--model_folder")
p.add_argument("--face", action="store_true"); p.add_argument("--hand", action="store_true")
args = p.parse_args()
source = os.environ["OPENPOSE_DOUBLE_SOURCE"]
for name in os.listdir(source):
    shutil.copy(os.path.join(source, name), args.write_json)
"""


def test_openpose_binary_fills_in_a_missing_skeleton_folder(corpus, tmp_path, monkeypatch):
    rows = manifest(corpus)
    stash = tmp_path / "stash"
    shutil.move(rows["6"].skeleton_dir, stash)
    binary = tmp_path / "openpose.bin"
    binary.write_text(OPENPOSE_DOUBLE.format(python=sys.executable))
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("OPENPOSE_DOUBLE_SOURCE", str(stash))
    reference = tmp_path / "reference"
    shutil.copytree(stash, reference)

    out = tmp_path / "shards"
    assert run(corpus, out, "--labeler", "none", "--openpose-bin", str(binary)) == 0
    assert (out / "openpose" / "6").is_dir()
    from preprocess.keypoints.openpose import read_openpose_dir

    expected = read_openpose_dir(reference)
    shards = open_shards(out)
    record = shards.read(shards.index_of("6"))
    shards.close()
    np.testing.assert_array_equal(record.keypoint_frames, expected.frames)
    np.testing.assert_array_equal(record.keypoints, expected.keypoints)  # lossless


def test_cli_help():
    proc = subprocess.run(
        [sys.executable, "-m", "preprocess", "run", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    for option in ("--corpus", "--detector", "--labeler", "--split", "--base-url"):
        assert option in proc.stdout


def test_label_command_takes_the_labeler_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["label", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--videos" in text and "--dry-run" in text


def test_manifest_of_a_missing_corpus_is_an_error_naming_the_file(tmp_path, capsys):
    assert main(["manifest", "--root", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nothing/Label/labels_20200831.csv" in err
