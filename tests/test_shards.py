"""Shard sets: round trip, atomicity under SIGKILL, resume, refusals, inspect."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from hemo_jax.contract.keypoint_layout import NUM_KEYPOINTS
from hemo_jax.contract.schema import (
    SCHEMA_VERSION,
    SchemaError,
    VideoRecord,
    decode_record,
    encode_record,
)
from hemo_jax.contract.shards import (
    MANIFEST,
    RecordInfo,
    ShardError,
    ShardWriter,
    open_shards,
    write_shard_file,
)
from hemo_jax.data import describe as describe_cli
from preprocess.shards import write_records, write_videos

REPO = Path(__file__).resolve().parents[1]


def make_record(i: int, *, t: int = 20, split: str = "train", label: int = 1, dim: int | None = 8):
    rng = np.random.default_rng(i)
    kp = rng.uniform(0, 500, (t, NUM_KEYPOINTS, 3)).astype(np.float32)
    t_img = t // 4
    return VideoRecord(
        video_id=f"vid{i:03d}",
        subject_id=f"s{i % 3}",
        source="synthetic",
        split=split,
        fps=25.0,
        frame_size=(720, 1280),
        keypoints=kp,
        keypoint_frames=np.arange(t, dtype=np.int32),
        label=label,
        pseudo_label=-1 if split != "unlabeled" else 1,
        pseudo_confidence=0.0 if split != "unlabeled" else 0.8,
        crop_frames=np.arange(0, t, 4, dtype=np.int32)[:t_img],
        boxes=np.ones((t_img, 4), np.float32),
        image_features=None if dim is None else np.ones((t_img, dim), np.float16),
        transcript=f"transcript {i}" if i % 2 else "",
    )


def final_shard_files(d: Path) -> list[Path]:
    return sorted(d.glob("shard-*.array_record"))


def test_round_trip_counts_random_access_and_manifest(tmp_path):
    records = [make_record(i, t=10 + i) for i in range(7)]
    shards = write_records(records, tmp_path, records_per_shard=3)
    assert len(shards) == 7 and shards.shard_counts == [3, 3, 1]
    assert shards.video_ids == [r.video_id for r in records]
    for i in (6, 0, 4):  # out of order: random access across shards
        back = shards.read(i)
        assert back.video_id == records[i].video_id
        np.testing.assert_array_equal(back.keypoints, records[i].keypoints)
    assert [decode_record(b).num_frames for b in shards] == [10 + i for i in range(7)]
    assert shards.index_of("vid005") == 5
    with pytest.raises(IndexError):
        shards[7]
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["complete"] and manifest["num_records"] == 7
    for entry in manifest["shards"]:
        data = (tmp_path / entry["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert len(data) == entry["num_bytes"]
    assert [r["video_id"] for r in manifest["shards"][1]["records"]] == [
        "vid003",
        "vid004",
        "vid005",
    ]
    assert not list(tmp_path.glob(".tmp-*"))


def test_writer_refusals(tmp_path):
    write_records([make_record(0)], tmp_path)
    with pytest.raises(ShardError, match="exists"):
        ShardWriter(tmp_path)
    with ShardWriter(tmp_path / "b") as w:
        w.add(make_record(1))
        with pytest.raises(ShardError, match="vid001"):
            w.add(make_record(1))
        with pytest.raises(ShardError, match="another writer"):
            ShardWriter(tmp_path / "b", resume=True)
        bad = dataclasses.replace(make_record(2), split="nope")
        with pytest.raises(SchemaError, match="vid002"):
            w.add(bad)
    assert open_shards(tmp_path / "b").video_ids == ["vid001"]
    write_records([make_record(5)], tmp_path, overwrite=True)
    assert open_shards(tmp_path).video_ids == ["vid005"]


def test_error_inside_writer_keeps_finished_shards_and_resumes(tmp_path):
    with pytest.raises(RuntimeError, match="boom"), ShardWriter(tmp_path, records_per_shard=2) as w:
        for i in range(5):
            w.add(make_record(i))
        raise RuntimeError("boom")
    with pytest.raises(ShardError, match="incomplete"):
        open_shards(tmp_path)
    partial = open_shards(tmp_path, allow_incomplete=True)
    assert partial.video_ids == ["vid000", "vid001", "vid002", "vid003"]
    assert not list(tmp_path.glob(".tmp-*"))
    with ShardWriter(tmp_path, records_per_shard=2, resume=True) as w:
        assert w.video_ids == {"vid000", "vid001", "vid002", "vid003"}
        w.add(make_record(4))
    assert open_shards(tmp_path).video_ids == [f"vid{i:03d}" for i in range(5)]


KILLED_WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from hemo_jax.contract.schema import VideoRecord
    from hemo_jax.contract.shards import ShardWriter

    out = sys.argv[1]
    with ShardWriter(out, records_per_shard=3) as w:
        for i in range(10_000):
            w.add(VideoRecord(
                video_id=f"vid{i:05d}", subject_id="s", source="synthetic", split="train",
                fps=25.0, frame_size=(720, 1280),
                keypoints=np.random.default_rng(i).uniform(0, 9, (800, 137, 3)).astype(np.float32),
                keypoint_frames=np.arange(800, dtype=np.int32)))
            print(i, flush=True)
    """
)


def test_sigkill_mid_write_leaves_no_readable_half_set(tmp_path):
    out = tmp_path / "set"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(out)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        for line in proc.stdout:
            if int(line) >= 7:  # two shards finished, the third being written
                break
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    with pytest.raises(ShardError, match="incomplete"):
        open_shards(out)
    partial = open_shards(out, allow_incomplete=True, verify=True)
    assert len(partial.shards) >= 2 and len(partial) == 3 * len(partial.shards)
    assert partial.video_ids == [f"vid{i:05d}" for i in range(len(partial))]
    for i in range(len(partial)):
        assert partial.read(i).num_frames == 800
    # Every file under a final name is whole: it opens and holds all its records.
    for f in final_shard_files(out):
        assert len(open_shards(f)) == 3
    # A resumed writer finishes the set; the videos of the lost shard are redone once.
    with ShardWriter(out, records_per_shard=3, resume=True) as w:
        for i in range(len(partial), len(partial) + 4):
            rec = make_record(i, t=8)
            w.add(dataclasses.replace(rec, video_id=f"vid{i:05d}"))
    done = open_shards(out, verify=True)
    assert done.video_ids == [f"vid{i:05d}" for i in range(len(partial) + 4)]
    assert not list(out.glob(".tmp-*"))


def test_truncated_and_foreign_files_fail_naming_the_file(tmp_path):
    write_records([make_record(i) for i in range(4)], tmp_path, records_per_shard=2)
    shard = tmp_path / "shard-00001.array_record"
    original = shard.read_bytes()
    shard.write_bytes(original[: len(original) // 2])
    with pytest.raises(ShardError, match="shard-00001.array_record.*truncated"):
        open_shards(tmp_path)
    with pytest.raises(ShardError, match="shard-00001.array_record.*not a readable ArrayRecord"):
        open_shards(shard)
    for foreign in (json.dumps({"video_id": "x"}).encode(), os.urandom(70_000)):
        shard.write_bytes(foreign)
        with pytest.raises(ShardError, match="shard-00001.array_record"):
            open_shards(shard)
        # Even when the manifest agrees on the size, the reader refuses the file.
        manifest = json.loads((tmp_path / MANIFEST).read_text())
        manifest["shards"][1]["num_bytes"] = len(foreign)
        (tmp_path / MANIFEST).write_text(json.dumps(manifest))
        with pytest.raises(ShardError, match="shard-00001.array_record.*ArrayRecord"):
            open_shards(tmp_path)


def test_checksum_verification_catches_same_size_changes(tmp_path):
    write_records([make_record(i) for i in range(2)], tmp_path)
    shard = tmp_path / "shard-00000.array_record"
    data = bytearray(shard.read_bytes())
    data[200] ^= 0xFF  # inside the first record: the file index still reads
    shard.write_bytes(bytes(data))
    open_shards(tmp_path)  # sizes and counts still agree
    with pytest.raises(ShardError, match="shard-00000.array_record.*sha256"):
        open_shards(tmp_path, verify=True)


def test_bad_manifests_and_paths_fail_clearly(tmp_path):
    with pytest.raises(ShardError, match="no such shard set"):
        open_shards(tmp_path / "missing")
    with pytest.raises(ShardError, match="no manifest.json"):
        open_shards(tmp_path)
    write_records([make_record(0)], tmp_path)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    (tmp_path / MANIFEST).write_text(json.dumps({**manifest, "schema_version": 99}))
    with pytest.raises(ShardError, match="manifest.json.*schema_version: version 99"):
        open_shards(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({**manifest, "schema_version": 1}))
    with pytest.raises(ShardError, match="float16.*rebuild the shard set"):
        open_shards(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(ShardError, match="manifest.json.*unreadable"):
        open_shards(tmp_path)


def test_write_videos_resumes_after_a_crash(tmp_path):
    calls: list[str] = []

    def build(video_id: str, crash_at: str | None = None) -> VideoRecord | None:
        calls.append(video_id)
        if video_id == crash_at:
            raise RuntimeError("decoder died")
        i = int(video_id[3:])
        return None if i == 2 else dataclasses.replace(make_record(i), video_id=video_id)

    ids = [f"vid{i:03d}" for i in range(7)]
    with pytest.raises(RuntimeError):
        write_videos(ids, lambda v: build(v, "vid005"), tmp_path, records_per_shard=3)
    assert calls == ids[:6]
    calls.clear()
    shards = write_videos(ids, build, tmp_path, records_per_shard=3)
    # vid000, vid001, vid003 filled a finished shard; vid004 was in the unfinished one and
    # is redone; vid002 (unusable, nothing stored) is asked again.
    assert calls == ["vid002", "vid004", "vid005", "vid006"]
    assert shards.video_ids == ["vid000", "vid001", "vid003", "vid004", "vid005", "vid006"]


def test_inspect_summary_and_cli(tmp_path, capsys):
    records = [make_record(0, t=10, label=1), make_record(1, t=30, label=0, dim=None)]
    records += [make_record(2, t=20, split="unlabeled", label=-1)]
    write_records(records, tmp_path, records_per_shard=2)
    s = describe_cli.summarize(open_shards(tmp_path))
    assert s["records"] == 3 and s["shards"] == 2 and s["schema_version"] == SCHEMA_VERSION
    assert s["splits"]["train"]["label"] == {"win": 1, "lose": 1, "unknown": 0}
    assert s["splits"]["unlabeled"]["pseudo_label"]["win"] == 1
    assert s["keypoint_frames"] == {"min": 10, "median": 20.0, "max": 30, "total": 60}
    assert s["fields"]["image_features"] == 2 and s["fields"]["image_feature_dims"] == {"8": 2}
    assert s["fields"]["transcript"] == 1 and s["fields"]["crops"] == 0
    assert describe_cli.main([str(tmp_path), "--json", "--verify"]) == 0
    assert json.loads(capsys.readouterr().out)["records"] == 3
    assert describe_cli.main([str(tmp_path)]) == 0
    assert "| train | 2 | 1 | 1 | 0 |" in capsys.readouterr().out
    # --verify catches a manifest that lies about a record.
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    manifest["shards"][0]["records"][0]["label"] = 0
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    assert describe_cli.main([str(tmp_path), "--verify"]) == 1
    assert "vid000" in capsys.readouterr().err
    assert describe_cli.main([str(tmp_path / "nope")]) == 1
    assert "nope" in capsys.readouterr().err


def test_add_shard_lists_a_file_written_apart_and_refuses_mismatches(tmp_path):
    records = [make_record(i) for i in range(5)]
    staged = tmp_path / "staged"
    staged.mkdir()
    first, second = staged / "a.array_record", staged / "b.array_record"
    assert write_shard_file(first, (encode_record(r) for r in records[:3])) == 3
    assert write_shard_file(second, (encode_record(r) for r in records[3:])) == 2
    out = tmp_path / "set"
    with ShardWriter(out) as writer:
        writer.add(records[0])
        with pytest.raises(ShardError, match="unfinished shard"):
            writer.add_shard(first, tuple(RecordInfo.of(r) for r in records[:3]))
    with ShardWriter(out, resume=True) as writer:
        with pytest.raises(ShardError, match=r"already in the set: \['vid000'\]"):
            writer.add_shard(first, tuple(RecordInfo.of(r) for r in records[:3]))
        with pytest.raises(ShardError, match="3 records but 2 summaries"):
            writer.add_shard(first, tuple(RecordInfo.of(r) for r in records[1:3]))
        writer.add_shard(second, tuple(RecordInfo.of(r) for r in records[3:]))
    assert not second.exists() and first.exists()  # moved in; the refused one left alone
    shards = open_shards(out, verify=True)
    assert shards.video_ids == ["vid000", "vid003", "vid004"]
    assert shards.shard_counts == [1, 2]
    assert [shards[i] for i in range(3)] == [encode_record(records[i]) for i in (0, 3, 4)]
    shards.close()
