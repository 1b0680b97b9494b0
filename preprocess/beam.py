"""The preprocessing as an Apache Beam pipeline: ``python -m preprocess beam``.

The same records as ``python -m preprocess run`` (``preprocess.run``), built by the same
per-video steps (``preprocess.steps``), spread over the workers of any Beam runner:

    manifest rows still to build (driver: ``run.plan_run``, which skips stored videos)
      → Reshuffle → BuildRecords   setup: the detector and labeler, once per worker;
                                   process: ``steps.build_record`` for one video (the
                                   crops go through the detector in batches of
                                   ``CropParams.batch_size`` frames)
          ├─ records → keyed by manifest position // records_per_shard → GroupByKey
          │     → WriteShard: one ArrayRecord file per group, records in manifest order,
          │       written to the staging folder (any Beam file system: a local or shared
          │       folder, gs://, s3://, hdfs://)
          └─ failed: the dead-letter output, (video id, step, reason) per failed video
      → Outcome (one element; the two lists as side inputs): ``outcome.json`` in staging,
        naming every staged shard with its records' summaries and notes, and every failure.

Then the driver publishes (``publish``): each staged shard joins the shard set in ``out``
in key order through ``ShardWriter.add_shard`` (moved, or copied from a remote staging
folder; listed in the manifest with its per-record summaries, the manifest rewritten
atomically after each and marked complete last), failures and notes go to the status file,
and the staging folder is deleted. A killed run leaves the set as it was; its staging
folder is cleared by the next run.

A video that fails goes to the dead-letter output with the step and the reason; the rest go
on. A rerun skips the videos already in the shard set and retries the failed ones, as
``preprocess run`` does, and refuses settings that change what a record holds. Both engines
write the same status file, so either may resume the other's shard set.

Records are in manifest order within each shard and shards in manifest order, so the set
holds the same records, in the same order, as ``preprocess run``'s; shard boundaries differ
where a video failed (its slot stays empty in its group).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from hemo_jax.contract.schema import encode_record
from hemo_jax.contract.shards import RecordInfo, ShardWriter, write_shard_file
from preprocess import steps
from preprocess.corpora.imigue import ManifestRow
from preprocess.run import RunConfig, RunPlan, RunSummary, plan_run

log = logging.getLogger(__name__)

STAGING_SUBDIR = ".beam-staging"  # the default staging folder, under out
OUTCOME = "outcome.json"  # in staging: the staged shards and the failures
FAILED = "failed"  # the tag of the dead-letter output


@dataclasses.dataclass(frozen=True)
class Built:
    """One video's record, encoded, with what the manifest and the status file need."""

    position: int  # in the manifest's list of videos to build
    info: RecordInfo
    data: bytes
    notes: tuple[str, ...]


class BuildRecords(beam.DoFn):
    """``steps.build_record`` per video; models loaded once per worker in ``setup``."""

    def __init__(self, settings: steps.StepSettings, load_models: bool) -> None:
        self.settings = settings
        self.load_models = load_models  # False: only keypoint-only videos, no model needed
        self.models: steps.Models | None = None

    def setup(self) -> None:
        self.models = steps.load_models(
            self.settings, detector=self.load_models, labeler=self.load_models
        )

    def process(self, element: tuple[int, ManifestRow]) -> Iterator[Any]:
        position, row = element
        assert self.models is not None  # setup ran
        notes: list[str] = []
        try:
            record = steps.build_record(
                row, self.settings, self.models, notes, label=self.models.label
            )
        except steps.StepFailed as e:
            log.error("video %s failed (%s): %s", row.video_id, e.step, e.reason)
            yield beam.pvalue.TaggedOutput(FAILED, (row.video_id, e.step, e.reason))
            return
        yield Built(position, RecordInfo.of(record), encode_record(record), tuple(notes))


class WriteShard(beam.DoFn):
    """One group of records → one ArrayRecord file in staging, records in manifest order."""

    def __init__(self, staging: str) -> None:
        self.staging = staging

    def process(self, element: tuple[int, Iterable[Built]]) -> Iterator[dict[str, Any]]:
        key, group = element
        built = sorted(group, key=lambda b: b.position)
        # Named by key, so a retried bundle rewrites the same file.
        url = FileSystems.join(self.staging, f"shard-{key:05d}.array_record")
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "shard.array_record"
            write_shard_file(local, (b.data for b in built))
            with open(local, "rb") as src, FileSystems.create(url) as dst:
                while chunk := src.read(1 << 24):
                    dst.write(chunk)
        yield {
            "key": key,
            "file": url,
            "records": [dataclasses.asdict(b.info) for b in built],
            "notes": {b.info.video_id: list(b.notes) for b in built},
        }


def _shard_key(records_per_shard: int, built: Built) -> tuple[int, Built]:
    return built.position // records_per_shard, built


def _write_outcome(
    _: None, staging: str, staged: list[dict[str, Any]], failed: list[tuple[str, str, str]]
) -> None:
    outcome = {
        "shards": sorted(staged, key=lambda s: s["key"]),
        "failed": [list(f) for f in sorted(failed)],
    }
    with FileSystems.create(FileSystems.join(staging, OUTCOME)) as f:
        f.write(json.dumps(outcome, indent=1).encode("utf-8"))


def publish(plan: RunPlan, staging: str, *, records_per_shard: int, description: str) -> None:
    """The staged shards into the set in ``plan.out``, the outcome into the status file."""
    with FileSystems.open(FileSystems.join(staging, OUTCOME)) as f:
        outcome = json.loads(f.read().decode("utf-8"))
    with ShardWriter(
        plan.out, records_per_shard=records_per_shard, resume=True, description=description
    ) as writer:
        for shard in outcome["shards"]:
            records = tuple(RecordInfo(**r) for r in shard["records"])
            if FileSystems.get_scheme(shard["file"]) is None:  # local or shared: a rename
                writer.add_shard(shard["file"], records)
            else:  # a copy beside the set (a ShardWriter clears ".tmp-" leftovers), then a rename
                local = plan.out / f".tmp-staged-{shard['key']:05d}.array_record"
                try:
                    with FileSystems.open(shard["file"]) as src, open(local, "wb") as dst:
                        while chunk := src.read(1 << 24):
                            dst.write(chunk)
                    writer.add_shard(local, records)
                finally:
                    local.unlink(missing_ok=True)
            for video_id, notes in shard["notes"].items():
                plan.status.success(video_id, notes)
    for video_id, step, reason in outcome["failed"]:
        plan.status.failure(video_id, step, reason)
    _clear(staging)


def _clear(staging: str) -> None:
    """Deletes the staging folder and everything in it."""
    if FileSystems.get_scheme(staging) is None:  # a folder
        shutil.rmtree(staging, ignore_errors=True)
    else:  # the trailing "/" makes object stores delete everything under the prefix
        FileSystems.delete([staging.rstrip("/") + "/"])


def run_beam(
    config: RunConfig, pipeline_args: list[str], *, staging: str | None = None
) -> RunSummary:
    """Builds the raw shard set of ``config.corpus`` in ``config.out`` on the Beam runner
    that ``pipeline_args`` choose (Beam's own options: ``--runner``, ...); see the module doc.

    ``staging`` (default ``out/.beam-staging``): where workers write shards, any Beam file
    system the workers and this process can both reach.
    """
    plan = plan_run(config)
    staging = staging or str(plan.out / STAGING_SUBDIR)
    _clear(staging)  # left by a killed run; never part of the set
    description = " ".join(f"{k}={v}" for k, v in plan.status.settings.items())
    build = BuildRecords(config.step_settings(), plan.needs_models)
    with beam.Pipeline(options=PipelineOptions(pipeline_args)) as pipeline:
        built = (
            pipeline
            | "videos" >> beam.Create(list(enumerate(plan.todo)))
            | "spread" >> beam.Reshuffle()
            | "build" >> beam.ParDo(build).with_outputs(FAILED, main="records")
        )
        staged = (
            built.records
            | "key" >> beam.Map(functools.partial(_shard_key, config.records_per_shard))
            | "group" >> beam.GroupByKey()
            | "write" >> beam.ParDo(WriteShard(staging))
        )
        _ = (
            pipeline
            | "once" >> beam.Create([None])
            | "outcome"
            >> beam.Map(
                _write_outcome,
                staging,
                staged=beam.pvalue.AsList(staged),
                failed=beam.pvalue.AsList(built[FAILED]),
            )
        )
    publish(
        plan,
        staging,
        records_per_shard=config.records_per_shard,
        description=f"preprocess beam: {description}",
    )
    return plan.summary(labeler={}, finished=True)
