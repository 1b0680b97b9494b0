"""The same corpus from the same seed, the same records from the same corpus.

A tiny synthetic corpus (fixed seed) is written and run through ``python -m preprocess run``
with the real labeler against the simulated VLM (its answers are deterministic per seed,
video and turn). The sha256 of every corpus file and of every encoded record must equal the
digests recorded here, taken before the preprocessing side was reorganised: a change to
either is a change of behaviour, not of layout. The mp4 bytes and the JPEG crops depend on
the OpenCV build (``tests/test_synth.py`` checks that rendering is deterministic); when that
build changes, regenerate the digests with this file's ``__main__`` and say why in the commit.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from hemo_jax.contract.shards import open_shards
from preprocess.__main__ import main
from preprocess.corpora.imigue import CorpusLayout, build_manifest
from preprocess.synthetic import vlm_oracle, vlm_sim
from preprocess.synthetic.corpus import write_corpus
from preprocess.synthetic.plan import SynthConfig

KEY = "AIzaSy-TEST-golden-secret-key-0123456789"
CORPUS = SynthConfig(
    videos=4,
    seed=11,
    fps=5,
    width=96,
    height=72,
    min_seconds=2,
    max_seconds=3,
    videos_per_subject=2,
)

CORPUS_SHA256 = "1d4eea433906d0ea845142560b4011ae177156154815737113cd9e3ab1155e2b"
# Records of schema version 2 (float32 keypoints); the layout move kept version 1 records
# byte for byte (5ab61d21...). With keypoint_source ("openpose") added: these records
# without that key are byte for byte the ones before it (364386ca...).
RECORDS_SHA256 = "5073ef1eb326c051080a77295c2f8470a2e6ee74fd26fc240d746651f5a23e91"


def corpus_digest(root: Path) -> str:
    """sha256 over every file of the corpus: its path relative to the root, then its bytes."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def records_digest(out: Path) -> str:
    """sha256 over the encoded records of the shard set, in video-id order."""
    shards = open_shards(out)
    try:
        encoded = {shards.read(i).video_id: shards[i] for i in range(len(shards))}
    finally:
        shards.close()
    digest = hashlib.sha256()
    for video_id in sorted(encoded):
        digest.update(video_id.encode() + b"\0")
        digest.update(hashlib.sha256(encoded[video_id]).digest())
    return digest.hexdigest()


def make_digests(tmp: Path) -> tuple[str, str]:
    root, out = tmp / "corpus", tmp / "shards"
    write_corpus(CORPUS, root, jobs=1)
    corpus = corpus_digest(root)  # before the run, which adds nothing to the corpus anyway
    manifest = build_manifest(CorpusLayout(root))
    truth = vlm_oracle.truth_for_videos([(r.video_path, r.label) for r in manifest])
    with vlm_sim.SimulatedVLM(truth, accuracy=0.75, seed=5, api_key=KEY) as sim:
        code = main(
            ["run", "--corpus", "synthetic", "--root", str(root), "--out", str(out)]
            + ["--no-progress", "--labeler", "gemini", "--base-url", sim.base_url]
            + ["--label-cache", str(tmp / "label_cache"), "--records-per-shard", "3"]
        )
    assert code == 0
    assert len(manifest) == CORPUS.videos
    return corpus, records_digest(out)


@pytest.fixture
def key(monkeypatch):
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)  # it would win over GEMINI_API_KEY
    monkeypatch.setenv("GEMINI_API_KEY", KEY)


def test_corpus_and_records_match_the_recorded_digests(tmp_path, key):
    corpus, records = make_digests(tmp_path)
    assert corpus == CORPUS_SHA256, "the synthetic corpus changed"
    assert records == RECORDS_SHA256, "the records made from the same corpus changed"


if __name__ == "__main__":  # prints the digests to record above
    import os
    import tempfile

    os.environ.pop("GOOGLE_API_KEY", None)
    os.environ["GEMINI_API_KEY"] = KEY
    with tempfile.TemporaryDirectory() as tmp:
        print(*make_digests(Path(tmp)), sep="\n")
