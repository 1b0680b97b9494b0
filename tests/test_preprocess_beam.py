"""`python -m preprocess beam` on the DirectRunner with 2 worker processes: the same records as
`python -m preprocess run`, a failed video in the dead-letter output while the others go on,
and a rerun that builds only what is missing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from hemo_jax.contract.shards import open_shards
from preprocess.__main__ import main
from preprocess.beam import STAGING_SUBDIR
from preprocess.corpora.imigue import CorpusLayout, build_manifest
from preprocess.run import STATUS_FILE
from preprocess.synthetic.corpus import write_corpus
from preprocess.synthetic.plan import SynthConfig

# 5 tiny videos, 3 records per shard: two shards, the second one short.
CORPUS = SynthConfig(videos=5, seed=3, fps=5, width=96, height=72, min_seconds=2, max_seconds=3)
COMMON = ["--corpus", "synthetic", "--labeler", "none", "--records-per-shard", "3"]
DIRECT = ["--runner", "DirectRunner", "--direct_running_mode", "multi_processing"]
DIRECT += ["--direct_num_workers", "2"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("beam") / "corpus"
    write_corpus(CORPUS, root)
    return root


def records(out: Path) -> dict[str, bytes]:
    """The encoded records of a shard set by video id (bytes: every field, exactly)."""
    shards = open_shards(out, verify=True)
    try:
        return {info.video_id: shards[i] for i, info in enumerate(shards.infos)}
    finally:
        shards.close()


def status(out: Path) -> dict:
    return json.loads((out / STATUS_FILE).read_text())


def test_beam_builds_the_records_run_writes_and_resumes_after_a_failure(corpus, tmp_path):
    local = tmp_path / "run"
    assert main(["run", *COMMON, "--root", str(corpus), "--out", str(local), "--no-progress"]) == 0
    expected = records(local)
    ids = [r.video_id for r in build_manifest(CorpusLayout(corpus))]
    assert sorted(expected) == sorted(ids) and len(ids) == 5

    # Video 2's mp4 is garbage: it fails in the corpus step, the others go on.
    damaged = Path(shutil.copytree(corpus, tmp_path / "corpus"))
    video = damaged / "videos" / "0002.mp4"
    original = video.read_bytes()
    video.write_bytes(np.random.default_rng(0).bytes(len(original)))
    beam_out = tmp_path / "beam"
    args = ["beam", *COMMON, "--root", str(damaged), "--out", str(beam_out), *DIRECT]
    assert main(args) == 1
    first = status(beam_out)
    assert first["failed"] == {"2": {"step": "corpus", "reason": first["failed"]["2"]["reason"]}}
    assert "0002.mp4" in first["failed"]["2"]["reason"]
    assert first["summary"]["done"] == 4 and first["summary"]["finished"]
    partial = records(beam_out)
    assert partial == {k: v for k, v in expected.items() if k != "2"}
    shards = open_shards(beam_out)
    # Manifest order within and across shards; video 2's slot leaves its group short.
    assert shards.video_ids == [v for v in ids if v != "2"]
    assert shards.shard_counts == [2, 2]
    shards.close()
    assert not (beam_out / STAGING_SUBDIR).exists()

    # Repaired: the rerun builds video 2 alone, as a shard of its own.
    video.write_bytes(original)
    assert main(args) == 0
    second = status(beam_out)
    assert second["failed"] == {}
    assert second["summary"]["done_ids"] == ["2"] and second["summary"]["skipped"] == 4
    assert records(beam_out) == expected
    assert open_shards(beam_out).shard_counts == [2, 2, 1]


def test_beam_refuses_settings_that_change_the_records(corpus, tmp_path, capsys):
    out = tmp_path / "beam"
    args = ["beam", *COMMON, "--root", str(corpus), "--out", str(out), *DIRECT]
    assert main(args) == 0
    # A rerun with another image rate would mix records made two ways in one set.
    assert main([*args, "--image-fps", "1"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_unknown_options_are_refused_outside_beam(corpus, tmp_path):
    with pytest.raises(SystemExit):
        main(["run", *COMMON, "--root", str(corpus), "--out", str(tmp_path), "--runner", "x"])
