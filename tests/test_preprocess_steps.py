"""preprocess.steps called as a distributed engine's worker would: settings shipped by pickle,
models loaded once, one call per video; the records equal those `preprocess run` writes."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np
import pytest

from hemo_jax.contract.schema import encode_record
from hemo_jax.contract.shards import open_shards
from preprocess import steps
from preprocess.corpora.imigue import CorpusLayout, build_manifest
from preprocess.labeling.config import LabelerConfig
from preprocess.run import RunConfig, run_corpus
from preprocess.synthetic import vlm_oracle, vlm_sim
from preprocess.synthetic.corpus import write_corpus
from preprocess.synthetic.plan import SynthConfig

KEY = "AIzaSy-TEST-steps-secret-key-0123456789"
CORPUS = SynthConfig(videos=3, seed=2, fps=5, width=96, height=72, min_seconds=2, max_seconds=3)


@pytest.fixture
def key(monkeypatch):
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)  # it would win over GEMINI_API_KEY
    monkeypatch.setenv("GEMINI_API_KEY", KEY)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("steps") / "corpus"
    write_corpus(CORPUS, root)
    return root


def test_a_worker_calling_the_steps_builds_the_records_run_writes(corpus, tmp_path, key):
    rows = build_manifest(CorpusLayout(corpus))
    truth = vlm_oracle.truth_for_videos([(r.video_path, r.label) for r in rows])
    out = tmp_path / "shards"
    with vlm_sim.SimulatedVLM(truth, accuracy=0.7, api_key=KEY) as sim:
        config = RunConfig(
            corpus="synthetic",
            root=corpus,
            out=out,
            labeler_config=LabelerConfig(cache_dir=tmp_path / "run_cache", base_url=sim.base_url),
            progress=False,
        )
        assert not run_corpus(config).failed
        # The worker: its own label cache, so every label is asked for again.
        shipped = pickle.loads(pickle.dumps(config.step_settings()))
        assert shipped.labeler is not None
        settings = dataclasses.replace(
            shipped, labeler=dataclasses.replace(shipped.labeler, cache_dir=tmp_path / "worker")
        )
        before = sim.generate_counts()
        models = steps.load_models(settings)
        built = {}
        for row in rows:
            notes: list[str] = []
            record = steps.build_record(row, settings, models, notes, label=models.label)
            built[row.video_id] = encode_record(record)
            assert notes == []
        assert sum((sim.generate_counts() - before).values()) == 2 * len(rows)  # CoT, Reflection
    shards = open_shards(out)
    try:
        written = {shards.read(i).video_id: shards[i] for i in range(len(shards))}
    finally:
        shards.close()
    assert built == written


def test_each_step_on_its_own_and_a_failing_video(corpus, tmp_path):
    (row, *_) = build_manifest(CorpusLayout(corpus))
    settings = RunConfig(corpus="synthetic", root=corpus, out=tmp_path, labeler="none")
    settings = settings.step_settings()
    models = steps.load_models(settings)
    assert (models.detector, models.labeler, models.label) == (None, None, None)
    record = steps.read_record(row, settings)
    assert record.num_frames > 0 and record.num_images == 0
    crops = steps.make_crops(row.video_path, record, settings, models)
    notes: list[str] = []
    steps.add_crops(record, crops, notes)
    assert record.num_images == len(crops.crops) > 0 and notes == []
    steps.check_record(record)
    whole = steps.build_record(row, settings, models, [])
    assert whole.crops == record.crops
    np.testing.assert_array_equal(whole.boxes, record.boxes)

    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(steps.StepFailed) as failed:
        steps.build_record(dataclasses.replace(row, video_path=garbage), settings, models, [])
    assert failed.value.step == "corpus" and "garbage.mp4" in failed.value.reason

    record.pseudo_confidence = 2.0  # outside [0, 1]
    with pytest.raises(steps.StepFailed) as failed:
        steps.check_record(record)
    assert failed.value.step == "record"
