"""Atomic JSON writes: a reader sees the old file or the new one, never half of either.

The text goes to a temporary file in the destination's folder, is fsynced, and replaces the
destination with `os.replace` (atomic within one file system); a failed write leaves no
temporary file behind.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_json_atomic(
    path: Path, payload: Any, *, default: Callable[[Any], Any] | None = None
) -> None:
    """Writes `payload` as indented, key-sorted JSON to `path`, creating its folder;
    `default` converts what json cannot (as in `json.dump`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkstemp: its files are 0600, and the result should get the
    # permissions any other new file gets (0666 less the umask).
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=1, sort_keys=True, default=default)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
