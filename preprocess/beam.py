"""The preprocessing as an Apache Beam pipeline: ``python -m preprocess beam``.

The same records as ``python -m preprocess run`` (``preprocess.run``), built by the same
per-video steps (``preprocess.steps``), spread over the workers of any Beam runner:

    manifest rows still to build (driver: ``run.plan_run``, which skips stored videos), in
    groups of ``records_per_shard`` in manifest order
      → Reshuffle → BuildShard   setup: the detector and labeler, once per worker;
                                 process: ``steps.build_record`` for each video of the
                                 group (the crops go through the detector in batches of
                                 ``CropParams.batch_size`` frames), each record written to
                                 the group's ArrayRecord file as soon as it is built, the
                                 file then copied to the staging folder (any Beam file
                                 system: a local or shared folder, gs://, s3://, hdfs://)
          ├─ shards: the staged file, its records' summaries and notes
          └─ failed: the dead-letter output, (video id, step, reason) per failed video
      → Outcome (one element; the two lists as side inputs): ``outcome.json`` in staging,
        naming every staged shard with its records' summaries and notes, and every failure.

No record passes through a shuffle, so a worker holds one record at a time whatever the
corpus size; the unit of parallelism is the group (lower ``--records-per-shard`` for more
groups than workers).

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
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
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


class BuildShard(beam.DoFn):
    """One group of videos → their records in one staged ArrayRecord file, in manifest
    order, each record written as soon as it is built; failed videos to the dead-letter
    output. The models are loaded once per worker, in ``setup``."""

    def __init__(self, settings: steps.StepSettings, load_models: bool, staging: str) -> None:
        self.settings = settings
        self.load_models = load_models  # False: only keypoint-only videos, no model needed
        self.staging = staging
        self.models: steps.Models | None = None

    def setup(self) -> None:
        self.models = steps.load_models(
            self.settings, detector=self.load_models, labeler=self.load_models
        )

    def process(self, element: tuple[int, list[ManifestRow]]) -> Iterator[Any]:
        key, rows = element
        infos: list[RecordInfo] = []
        notes: dict[str, list[str]] = {}
        failed: list[tuple[str, str, str]] = []
        # Named by key, so a retried bundle rewrites the same file.
        url = FileSystems.join(self.staging, f"shard-{key:05d}.array_record")
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "shard.array_record"
            write_shard_file(local, self._records(rows, infos, notes, failed))
            if infos:
                with open(local, "rb") as src, FileSystems.create(url) as dst:
                    while chunk := src.read(1 << 24):
                        dst.write(chunk)
        for failure in failed:
            yield beam.pvalue.TaggedOutput(FAILED, failure)
        if infos:
            yield {
                "key": key,
                "file": url,
                "records": [dataclasses.asdict(info) for info in infos],
                "notes": notes,
            }

    def _records(
        self,
        rows: list[ManifestRow],
        infos: list[RecordInfo],
        notes: dict[str, list[str]],
        failed: list[tuple[str, str, str]],
    ) -> Iterator[bytes]:
        assert self.models is not None  # setup ran
        for row in rows:
            video_notes: list[str] = []
            try:
                record = steps.build_record(
                    row, self.settings, self.models, video_notes, label=self.models.label
                )
            except steps.StepFailed as e:
                log.error("video %s failed (%s): %s", row.video_id, e.step, e.reason)
                failed.append((row.video_id, e.step, e.reason))
                continue
            infos.append(RecordInfo.of(record))
            notes[row.video_id] = video_notes
            yield encode_record(record)


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
    build = BuildShard(config.step_settings(), plan.needs_models, staging)
    per_shard = config.records_per_shard
    groups = [
        (key, plan.todo[start : start + per_shard])
        for key, start in enumerate(range(0, len(plan.todo), per_shard))
    ]
    with beam.Pipeline(options=PipelineOptions(pipeline_args)) as pipeline:
        built = (
            pipeline
            | "groups" >> beam.Create(groups)
            | "spread" >> beam.Reshuffle()
            | "build" >> beam.ParDo(build).with_outputs(FAILED, main="shards")
        )
        _ = (
            pipeline
            | "once" >> beam.Create([None])
            | "outcome"
            >> beam.Map(
                _write_outcome,
                staging,
                staged=beam.pvalue.AsList(built.shards),
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
