"""Atomic writes: a reader sees the old file (or folder) or the new one, never half of either.

Everything is written under a temporary name in the destination's folder, made durable
(fsync), and renamed into place with `os.replace` (atomic within one file system); a
failed write leaves no temporary file behind. Both halves of the project write through
this one module.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def fsync_dir(path: Path) -> None:
    """Makes a rename inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(tmp: Path, final: Path) -> None:
    """Makes a fully written temporary file durable, then gives it its final name."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    fsync_dir(final.parent)


@contextlib.contextmanager
def replacing(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yields a temporary file path beside `path`; when the block ends without an error the
    file is fsynced and renamed to `path`, otherwise it is removed.

    For writers that want a path rather than a file object (video writers, archive
    libraries). The folder of `path` is created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkstemp: its files are 0600, and the result should get the
    # permissions any other new file gets (0666 less the umask).
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp{path.suffix}"
    try:
        yield tmp
        publish(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Writes `data` to `path` atomically."""
    with replacing(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Writes `text` as UTF-8 to `path` atomically, newlines as given."""
    write_bytes(path, text.encode("utf-8"))


def write_json(
    path: str | os.PathLike[str], payload: Any, *, default: Callable[[Any], Any] | None = None
) -> None:
    """Writes `payload` as indented, key-sorted JSON to `path` atomically; `default`
    converts what json cannot (as in `json.dump`)."""
    write_text(path, json.dumps(payload, indent=1, sort_keys=True, default=default))


@contextlib.contextmanager
def replacing_dir(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Yields a new temporary folder beside `folder`; when the block ends without an error
    it is renamed to `folder` (which must not exist or be empty), otherwise removed."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        yield tmp
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(folder.parent)
