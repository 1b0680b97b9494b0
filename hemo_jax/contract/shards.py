"""Shard sets: ArrayRecord files of encoded VideoRecords plus a JSON manifest.

A shard set is a directory::

    manifest.json               shard files, record counts, per-record summaries,
                                schema version, sha256 checksums, creation info
    shard-00000.array_record    one encoded VideoRecord per ArrayRecord record
    shard-00001.array_record

Every file appears under its final name only once it is complete: it is written
under a temporary name in the same directory, fsynced and renamed (os.replace).
The manifest is rewritten the same way after each finished shard, with
``"complete": false`` until the writer finishes, so a killed writer leaves a set
that refuses to open (unless asked for the finished shards) and that a new
writer resumes. Readers read only the files the manifest lists.

Shared by both halves of the project: imports numpy, array_record and the
schema only.
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime
import fcntl
import hashlib
import json
import os
import platform
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

from hemo_jax.contract import atomic
from hemo_jax.contract.schema import (
    SCHEMA_VERSION,
    SchemaError,
    VideoRecord,
    decode_record,
    encode_record,
    version_problem,
)

MANIFEST = "manifest.json"
FORMAT = "hemo_jax.shards"
FORMAT_VERSION = 1
SUFFIX = ".array_record"
_LOCK = ".writer.lock"
_TMP_PREFIX = ".tmp-"
# One record per chunk, so reading one record decompresses only that record.
# snappy: measured on 5.7 MB float16 records, zstd:3 saved 16% of the bytes but made
# reads 2-3x slower; snappy reads nearly as fast as uncompressed and still shrinks
# the runs of zeros that missing keypoints leave.
_WRITER_OPTIONS = "group_size:1,snappy"
# No read-ahead: the pipeline reads records in shuffled order.
_READER_OPTIONS = "readahead_buffer_size:0,max_parallelism:0"


class ShardError(RuntimeError):
    """A shard set or shard file that cannot be read or written; names the file."""

    def __init__(self, path: str | os.PathLike, message: str):
        super().__init__(f"{os.fspath(path)}: {message}")
        self.path = os.fspath(path)


@dataclasses.dataclass(frozen=True)
class RecordInfo:
    """What the manifest says about one record, so selection needs no decoding."""

    video_id: str
    subject_id: str
    split: str
    label: int
    pseudo_label: int
    pseudo_confidence: float
    num_frames: int
    num_images: int
    num_crops: int
    feature_dim: int | None
    transcript_chars: int
    reasoning_chars: int
    keypoint_source: str = ""  # VideoRecord.keypoint_source

    @classmethod
    def of(cls, record: VideoRecord) -> RecordInfo:
        feats = record.image_features
        return cls(
            video_id=record.video_id,
            subject_id=record.subject_id,
            split=record.split,
            label=record.label,
            pseudo_label=record.pseudo_label,
            pseudo_confidence=float(record.pseudo_confidence),
            num_frames=record.num_frames,
            num_images=record.num_images,
            num_crops=len(record.crops),
            feature_dim=None if feats is None else int(feats.shape[1]),
            transcript_chars=len(record.transcript),
            reasoning_chars=len(record.reasoning),
            keypoint_source=record.keypoint_source,
        )


@dataclasses.dataclass(frozen=True)
class ShardInfo:
    file: str
    num_records: int
    num_bytes: int
    sha256: str
    records: tuple[RecordInfo, ...]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _open_reader(path: Path) -> ArrayRecordReader:
    reader = ArrayRecordReader(os.fspath(path), _READER_OPTIONS)
    if not reader.ok():
        try:
            reader.close()  # raises the reader's own description of the problem
        except RuntimeError as e:
            raise ShardError(path, f"not a readable ArrayRecord file: {e}") from e
        raise ShardError(path, "not a readable ArrayRecord file")
    return reader


class ShardWriter:
    """Appends VideoRecords to a shard set; use as a context manager.

    ``resume=True`` keeps the finished shards of an earlier (possibly killed)
    writer and continues after them; ``video_ids`` tells which videos are
    already stored, so a per-video job skips them. ``overwrite=True`` replaces an
    existing set. A record appears in the set once its shard is finished:
    records in an unfinished shard are lost with a killed writer and redone.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        *,
        records_per_shard: int = 64,
        max_shard_bytes: int = 1 << 30,
        resume: bool = False,
        overwrite: bool = False,
        description: str = "",
    ):
        if records_per_shard < 1 or max_shard_bytes < 1:
            raise ValueError("records_per_shard and max_shard_bytes must be positive")
        if resume and overwrite:
            raise ValueError("give resume or overwrite, not both")
        self.out_dir = Path(out_dir)
        self.records_per_shard = records_per_shard
        self.max_shard_bytes = max_shard_bytes
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.out_dir / _LOCK, "a")  # noqa: SIM115 (held for our lifetime)
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            self._lock.close()
            raise ShardError(self.out_dir, "another writer is writing this shard set") from e
        try:
            self._start(resume=resume, overwrite=overwrite, description=description)
        except BaseException:
            self._lock.close()
            raise
        self._done_ids = {r.video_id for s in self._shards for r in s.records}
        self._pending: list[RecordInfo] = []
        self._pending_bytes = 0
        self._writer: ArrayRecordWriter | None = None
        self._tmp: Path | None = None
        self._closed = False

    def _start(self, *, resume: bool, overwrite: bool, description: str) -> None:
        for stale in self.out_dir.glob(_TMP_PREFIX + "*"):
            stale.unlink()  # left by a killed writer; never readable under a final name
        manifest_path = self.out_dir / MANIFEST
        self._shards: list[ShardInfo] = []
        self._created = {
            "time": _now(),
            "host": platform.node(),
            "python": platform.python_version(),
            "argv": sys.argv,
            "description": description,
        }
        if manifest_path.exists() and overwrite:
            manifest_path.unlink()  # first, so no reader sees a manifest over new files
            atomic.fsync_dir(self.out_dir)
            for f in self.out_dir.glob("shard-*" + SUFFIX):
                f.unlink()
        elif manifest_path.exists() and resume:
            manifest, shards = ShardSet._load_manifest(manifest_path)
            self._shards = list(shards)
            self._created = manifest["created"]
        elif manifest_path.exists():
            raise ShardError(self.out_dir, "a shard set exists; pass resume=True or overwrite=True")

    @property
    def video_ids(self) -> frozenset[str]:
        """Videos already in the set, including those in the unfinished shard."""
        return frozenset(self._done_ids | {r.video_id for r in self._pending})

    def add(self, record: VideoRecord) -> None:
        if self._closed:
            raise ShardError(self.out_dir, "writer is closed")
        if record.video_id in self.video_ids:
            raise ShardError(self.out_dir, f"video {record.video_id!r} is already in the set")
        data = encode_record(record)  # validates
        if self._writer is None:
            self._tmp = self.out_dir / f"{_TMP_PREFIX}{os.getpid()}-{len(self._shards):05d}{SUFFIX}"
            self._writer = ArrayRecordWriter(os.fspath(self._tmp), _WRITER_OPTIONS)
        self._writer.write(data)
        if not self._writer.ok():
            raise ShardError(self._tmp, "ArrayRecord writer failed")
        self._pending.append(RecordInfo.of(record))
        self._pending_bytes += len(data)
        full = len(self._pending) >= self.records_per_shard
        if full or self._pending_bytes >= self.max_shard_bytes:
            self._finish_shard()
            self._write_manifest(complete=False)

    def _finish_shard(self) -> None:
        if self._writer is None:
            return
        writer, self._writer = self._writer, None
        writer.close()
        assert self._tmp is not None
        self._list_shard(self._tmp, tuple(self._pending))
        self._tmp, self._pending, self._pending_bytes = None, [], 0

    def _list_shard(self, file: Path, records: tuple[RecordInfo, ...]) -> None:
        """Renames a finished shard file to the next shard name and lists it."""
        final = self.out_dir / f"shard-{len(self._shards):05d}{SUFFIX}"
        atomic.publish(file, final)
        self._shards.append(
            ShardInfo(
                file=final.name,
                num_records=len(records),
                num_bytes=final.stat().st_size,
                sha256=_sha256(final),
                records=records,
            )
        )
        self._done_ids.update(r.video_id for r in records)

    def add_shard(self, file: str | os.PathLike, records: tuple[RecordInfo, ...]) -> None:
        """Adopts a finished shard written elsewhere (``write_shard_file``, e.g. by a worker
        of a distributed pipeline): moves it into the set under the next shard name.

        ``file`` must be on the set's file system (the move is a rename) and hold exactly
        ``records``, in order; call between records, not with a shard under way.
        """
        file = Path(file)
        if self._closed:
            raise ShardError(self.out_dir, "writer is closed")
        if self._writer is not None:
            raise ShardError(self.out_dir, "add_shard with records of an unfinished shard")
        ids = [r.video_id for r in records]
        clash = sorted(set(ids) & self._done_ids) or sorted({v for v in ids if ids.count(v) > 1})
        if clash:
            raise ShardError(file, f"videos already in the set: {clash}")
        reader = _open_reader(file)
        try:
            count = reader.num_records()
        finally:
            reader.close()
        if count != len(records):
            raise ShardError(file, f"{count} records but {len(records)} summaries given")
        self._list_shard(file, tuple(records))
        self._write_manifest(complete=False)

    def _write_manifest(self, *, complete: bool) -> None:
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "schema_version": SCHEMA_VERSION,
            "complete": complete,
            "num_records": sum(s.num_records for s in self._shards),
            "created": self._created,
            "updated": _now(),
            "shards": [dataclasses.asdict(s) for s in self._shards],
        }
        tmp = self.out_dir / f"{_TMP_PREFIX}{os.getpid()}-{MANIFEST}"
        tmp.write_text(json.dumps(manifest, indent=1))
        atomic.publish(tmp, self.out_dir / MANIFEST)

    def close(self) -> None:
        """Finishes the last shard and marks the set complete."""
        if self._closed:
            return
        self._finish_shard()
        self._write_manifest(complete=True)
        self._release()

    def abort(self) -> None:
        """Drops the unfinished shard; the finished ones stay for a resume."""
        if self._closed:
            return
        if self._writer is not None:
            self._writer.close()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
        self._release()

    def _release(self) -> None:
        self._closed = True
        self._lock.close()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_shard_file(path: str | os.PathLike, records: Iterable[bytes]) -> int:
    """Writes encoded records to one ArrayRecord file with the shard set's options, under a
    temporary name beside ``path`` then renamed to it; returns the number of records.

    For writers that build shards apart from a ``ShardWriter`` (a distributed pipeline's
    workers), which then lists them with ``ShardWriter.add_shard``.
    """
    path = Path(path)
    with atomic.replacing(path) as tmp:
        writer = ArrayRecordWriter(os.fspath(tmp), _WRITER_OPTIONS)
        count = 0
        try:
            for data in records:
                writer.write(data)
                count += 1
            if not writer.ok():
                raise ShardError(path, "ArrayRecord writer failed")
        finally:
            writer.close()
    return count


class ShardSet:
    """Random access to the records of a shard set, by global index.

    ``set[i]`` returns the encoded bytes (the grain RandomAccessDataSource
    protocol); ``read(i)`` and ``records()`` decode. Picklable: readers are
    reopened lazily in each process.
    """

    def __init__(self, root: Path, manifest: dict[str, Any], shards: tuple[ShardInfo, ...]):
        self.root = root
        self.manifest = manifest
        self.shards = shards
        self.infos: tuple[RecordInfo, ...] = tuple(r for s in shards for r in s.records)
        self._starts = [0]
        for s in shards:
            self._starts.append(self._starts[-1] + s.num_records)
        self._readers: list[ArrayRecordReader | None] = [None] * len(shards)

    @staticmethod
    def _load_manifest(path: Path) -> tuple[dict[str, Any], tuple[ShardInfo, ...]]:
        try:
            manifest = json.loads(path.read_text())
            expected = {"format": FORMAT, "format_version": FORMAT_VERSION}
            for key, want in expected.items():
                if manifest.get(key) != want:
                    raise ShardError(path, f"{key} {manifest.get(key)!r}; this code reads {want!r}")
            # Records of another version are refused, with what to do about them.
            if problem := version_problem(manifest.get("schema_version")):
                raise ShardError(path, f"schema_version: {problem}")
            shards = tuple(
                ShardInfo(**{**s, "records": tuple(RecordInfo(**r) for r in s["records"])})
                for s in manifest["shards"]
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ShardError(path, f"unreadable manifest: {e!r}") from e
        for s in shards:
            if s.num_records != len(s.records):
                raise ShardError(path, f"{s.file}: count {s.num_records} != {len(s.records)}")
        return manifest, shards

    def __len__(self) -> int:
        return self._starts[-1]

    @property
    def video_ids(self) -> list[str]:
        return [r.video_id for r in self.infos]

    @property
    def shard_counts(self) -> list[int]:
        return [s.num_records for s in self.shards]

    def index_of(self, video_id: str) -> int:
        for i, r in enumerate(self.infos):
            if r.video_id == video_id:
                return i
        raise KeyError(f"{self.root}: no video {video_id!r}")

    def _locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"{self.root}: record {index} out of range [0, {len(self)})")
        shard = bisect.bisect_right(self._starts, index) - 1
        return shard, index - self._starts[shard]

    def _reader(self, shard: int) -> ArrayRecordReader:
        reader = self._readers[shard]
        if reader is None:
            reader = self._readers[shard] = _open_reader(self.root / self.shards[shard].file)
        return reader

    def __getitem__(self, index: int) -> bytes:
        shard, pos = self._locate(int(index))
        try:
            return self._reader(shard).read([pos])[0]
        except RuntimeError as e:
            raise ShardError(self.root / self.shards[shard].file, f"record {pos}: {e}") from e

    def read(self, index: int, *, skip: tuple[str, ...] = ()) -> VideoRecord:
        shard, pos = self._locate(int(index))
        try:
            return decode_record(self[index], skip=skip)
        except SchemaError as e:
            raise ShardError(self.root / self.shards[shard].file, f"record {pos}: {e}") from e

    def records(self, *, skip: tuple[str, ...] = ()) -> Iterator[VideoRecord]:
        for i in range(len(self)):
            yield self.read(i, skip=skip)

    def verify(self) -> None:
        """Checks every shard's sha256 against the manifest (reads every byte)."""
        for s in self.shards:
            path = self.root / s.file
            if _sha256(path) != s.sha256:
                raise ShardError(path, "sha256 differs from the manifest: the file changed")

    def close(self) -> None:
        for r in self._readers:
            if r is not None:
                r.close()
        self._readers = [None] * len(self.shards)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_readers": [None] * len(self.shards)}

    def __repr__(self) -> str:
        return f"ShardSet({os.fspath(self.root)!r}, shards={len(self.shards)}, records={len(self)})"


def open_shards(
    path: str | os.PathLike, *, verify: bool = False, allow_incomplete: bool = False
) -> ShardSet:
    """Opens a shard set directory (or its manifest.json), checking every file.

    Each listed shard must exist with the size the manifest records and open
    as an ArrayRecord file holding the recorded number of records; ``verify``
    also compares sha256 checksums. An unfinished set is refused unless
    ``allow_incomplete``, which then shows only the finished shards.
    """
    path = Path(path)
    if path.is_file() and path.name != MANIFEST:
        return _open_single_file(path)
    root = path.parent if path.name == MANIFEST else path
    manifest_path = root / MANIFEST
    if not root.is_dir():
        raise ShardError(path, "no such shard set directory")
    if not manifest_path.exists():
        found = sorted(p.name for p in root.glob("*" + SUFFIX))
        hint = f" (it holds {len(found)} {SUFFIX} files without one)" if found else ""
        raise ShardError(root, f"not a shard set: no {MANIFEST}{hint}")
    manifest, shards = ShardSet._load_manifest(manifest_path)
    if not manifest.get("complete") and not allow_incomplete:
        raise ShardError(
            root,
            f"incomplete shard set: its writer stopped after {len(shards)} finished shards "
            f"({manifest.get('num_records')} records); resume it with "
            "ShardWriter(..., resume=True) or open with allow_incomplete=True",
        )
    shard_set = ShardSet(root, manifest, shards)
    for k, s in enumerate(shards):
        file = root / s.file
        if not file.is_file():
            raise ShardError(file, "listed in the manifest but missing")
        size = file.stat().st_size
        if size != s.num_bytes:
            raise ShardError(file, f"{size} bytes but the manifest says {s.num_bytes}: truncated?")
        count = shard_set._reader(k).num_records()
        if count != s.num_records:
            raise ShardError(file, f"{count} records but the manifest says {s.num_records}")
    if verify:
        shard_set.verify()
    return shard_set


def _open_single_file(path: Path) -> ShardSet:
    """One ArrayRecord file without a manifest: summaries come from decoding it."""
    reader = _open_reader(path)
    try:
        data = reader.read_all()
    except RuntimeError as e:
        raise ShardError(path, f"unreadable ArrayRecord file: {e}") from e
    finally:
        reader.close()
    infos = []
    for pos, item in enumerate(data):
        try:
            infos.append(RecordInfo.of(decode_record(item)))
        except SchemaError as e:
            raise ShardError(path, f"record {pos}: {e}") from e
    shard = ShardInfo(path.name, len(infos), path.stat().st_size, _sha256(path), tuple(infos))
    manifest = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "complete": True}
    return ShardSet(path.parent, {**manifest, "single_file": True}, (shard,))
