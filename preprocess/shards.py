"""Writes corpus records to a shard set (the storage itself is hemo_jax.contract.shards).

Two entry points: ``write_records`` for records already built, and
``write_videos`` for the per-video, resumable preprocessing run, which builds a
record only for videos the shard set does not hold yet.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable

from hemo_jax.contract.schema import VideoRecord
from hemo_jax.contract.shards import ShardSet, ShardWriter, open_shards

log = logging.getLogger(__name__)


def write_records(
    records: Iterable[VideoRecord],
    out_dir: str | os.PathLike,
    *,
    records_per_shard: int = 64,
    overwrite: bool = False,
    description: str = "",
) -> ShardSet:
    """Writes all records into a new shard set and opens it."""
    with ShardWriter(
        out_dir,
        records_per_shard=records_per_shard,
        overwrite=overwrite,
        description=description,
    ) as writer:
        for record in records:
            writer.add(record)
    return open_shards(out_dir)


def write_videos(
    video_ids: Iterable[str],
    build: Callable[[str], VideoRecord | None],
    out_dir: str | os.PathLike,
    *,
    records_per_shard: int = 16,
    description: str = "",
) -> ShardSet:
    """Builds and stores one record per video, resuming an interrupted run.

    Videos already in the shard set are skipped without calling ``build``;
    ``build`` may return None for a video it cannot use (it should say why).
    A run killed part-way keeps its finished shards; calling this again with
    the same arguments finishes the set.
    """
    with ShardWriter(
        out_dir, records_per_shard=records_per_shard, resume=True, description=description
    ) as writer:
        done = writer.video_ids
        todo = [v for v in video_ids if v not in done]
        log.info("%s: %d videos stored, %d to build", out_dir, len(done), len(todo))
        for video_id in todo:
            record = build(video_id)
            if record is None:
                continue
            if record.video_id != video_id:
                raise ValueError(f"build({video_id!r}) returned video {record.video_id!r}")
            writer.add(record)
    return open_shards(out_dir)
