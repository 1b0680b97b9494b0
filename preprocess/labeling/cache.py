"""The label cache: one JSON file per (video bytes, model, prompt version, endpoint).

A key is the sha256 of those four fields, so a renamed copy of a video finds its answer and a
new model, prompt or endpoint asks again. Besides the final answer (`part` ""), the first
turn's answer is kept under the part `.turn1` until the second turn is done, so a run killed
between the turns pays only for the second turn on the rerun. Files are written atomically;
an unreadable one is ignored (and rewritten by the next answer).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hemo_jax.contract import atomic

logger = logging.getLogger(__name__)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_key(video_sha256: str, model: str, prompt_version: str, endpoint: str) -> str:
    fields = (video_sha256, model, prompt_version, endpoint)
    return hashlib.sha256("\n".join(fields).encode()).hexdigest()


class LabelCache:
    """One JSON file per (video hash, model, prompt version); a `.turn1` file for the first turn."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str, part: str) -> Path:
        return self.root / f"{key}{part}.json"

    def load(self, key: str, part: str = "") -> dict[str, Any] | None:
        path = self._path(key, part)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError) as exc:
            logger.warning("ignoring unreadable cache file %s: %s", path, exc)
            return None

    def store(self, key: str, payload: Mapping[str, Any], part: str = "") -> None:
        atomic.write_json(self._path(key, part), dict(payload))

    def discard(self, key: str, part: str) -> None:
        self._path(key, part).unlink(missing_ok=True)
