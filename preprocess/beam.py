"""The preprocessing as an Apache Beam pipeline: ``python -m preprocess beam``.

The same records as ``python -m preprocess run`` (``preprocess.run``), built by the same
per-video steps (``preprocess.steps``), spread over the workers of any Beam runner:

    manifest rows still to build (driver: ``run.plan_run``, which skips stored videos)
      → Reshuffle → BuildRecords   setup: the detector and labeler, once per worker;
                                   process: ``steps.build_record`` for one video (the
                                   crops go through the detector in batches of
                                   ``CropParams.batch_size`` frames)
          ├─ records → keyed by manifest position // records_per_shard → GroupByKey
          │     → WriteShard: one ArrayRecord file per group, in manifest order, staged in
          │       ``out/.beam-staging/`` (``contract.shards.write_shard_file``)
          └─ failed (the dead-letter output): (video id, step, reason)
      → Publish (one element, the lists above as side inputs): the staged shards join the
        shard set in key order through ``ShardWriter.add_shard`` (renamed, listed in the
        manifest with their per-record summaries, the manifest rewritten atomically after
        each and marked complete last); failures and notes go to the status file.

A video that fails goes to the dead-letter output with the step and the reason; the rest
go on. A rerun skips the videos already in the shard set and retries the failed ones, the
same way ``preprocess run`` does, and refuses settings that change what a record holds.
Both engines write the same status file, so either may resume the other's shard set.

Records are in manifest order within each shard and shards in manifest order, so the set
holds the same records as ``preprocess run``'s; shard boundaries differ where a video
failed (its slot stays empty in its group).

The output folder must be one file system every worker and the publishing step see under
the same path (a local disk on the DirectRunner; NFS, Filestore or a gcsfuse mount on a
cluster): shards are written by workers and moved into place with a rename.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from hemo_jax.contract.schema import encode_record
from hemo_jax.contract.shards import RecordInfo, ShardWriter, write_shard_file
from preprocess import steps
from preprocess.corpora.imigue import ManifestRow
from preprocess.run import RunConfig, RunSummary, plan_run, read_summary

log = logging.getLogger(__name__)

STAGING_SUBDIR = ".beam-staging"  # staged shard files, under out
FAILED = "failed"  # the tag of the dead-letter output


@dataclasses.dataclass(frozen=True)
class Built:
    """One video's record, encoded, with what the manifest and the status file need."""

    position: int  # in the manifest's list of videos to build
    info: RecordInfo
    data: bytes
    notes: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Staged:
    """One shard file a worker wrote, waiting to join the set."""

    key: int
    file: str
    records: tuple[RecordInfo, ...]
    notes: tuple[tuple[str, tuple[str, ...]], ...]  # (video id, notes) of its records


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
    """One group of records → one staged ArrayRecord file, records in manifest order."""

    def __init__(self, staging: Path) -> None:
        self.staging = staging

    def process(self, element: tuple[int, Iterable[Built]]) -> Iterator[Staged]:
        key, group = element
        built = sorted(group, key=lambda b: b.position)
        # Named by key: a retried bundle rewrites the same file.
        file = self.staging / f"shard-{key:05d}.array_record"
        write_shard_file(file, (b.data for b in built))
        yield Staged(
            key,
            str(file),
            tuple(b.info for b in built),
            tuple((b.info.video_id, b.notes) for b in built),
        )


def _shard_key(records_per_shard: int, built: Built) -> tuple[int, Built]:
    return built.position // records_per_shard, built


@dataclasses.dataclass(frozen=True)
class Publish:
    """The last step: the staged shards into the set, the outcome into the status file."""

    config: RunConfig
    description: str

    def __call__(self, _: None, staged: list[Staged], failed: list[tuple[str, str, str]]) -> None:
        plan = plan_run(self.config)  # the status and stored videos as the driver left them
        with ShardWriter(
            plan.out,
            records_per_shard=self.config.records_per_shard,
            resume=True,
            description=self.description,
        ) as writer:
            for shard in sorted(staged, key=lambda s: s.key):
                writer.add_shard(shard.file, shard.records)
                for video_id, notes in shard.notes:
                    plan.status.success(video_id, list(notes))
        for video_id, step, reason in sorted(failed):
            plan.status.failure(video_id, step, reason)
        shutil.rmtree(plan.out / STAGING_SUBDIR, ignore_errors=True)
        plan.summary(labeler={}, finished=True)


def run_beam(config: RunConfig, pipeline_args: list[str]) -> RunSummary:
    """Builds the raw shard set of ``config.corpus`` in ``config.out`` on the Beam runner
    that ``pipeline_args`` choose (Beam's own options: ``--runner``, ...); see the module doc.
    """
    plan = plan_run(config)
    staging = plan.out / STAGING_SUBDIR
    shutil.rmtree(staging, ignore_errors=True)  # left by a killed run; never in the set
    staging.mkdir()
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
            | "publish"
            >> beam.Map(
                Publish(config, f"preprocess beam: {description}"),
                staged=beam.pvalue.AsList(staged),
                failed=beam.pvalue.AsList(built[FAILED]),
            )
        )
    return read_summary(plan.out)
