"""Unlabelled video files as a corpus: ``preprocess run --corpus videos --root DIR``.

Each input is a folder (every file in it, and below it, whose suffix is a video
container's), a file (taken as it is: a file that is no video fails at its own step
with a message that names it), or a glob pattern. No labels file, no skeleton folders,
no transcripts: every row is ``unlabeled`` with label −1, and its subject is the given
one or, when none is given, the video itself.

A video's id is its file name without the suffix; two inputs with the same name get the
path below their common folder instead, so ids stay unique and readable.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

from preprocess.corpora.imigue import CorpusError, ManifestRow

# Containers FFmpeg (through OpenCV) reads; a folder's other files are not videos.
VIDEO_SUFFIXES = frozenset(
    {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts"}
)


def _expand(item: str | Path) -> list[Path]:
    path = Path(item)
    if path.is_dir():
        return sorted(
            p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES
        )
    if path.exists():
        return [path]
    matches = sorted(Path(p) for p in glob.glob(str(item), recursive=True))
    files = [p for p in matches if p.is_file()]
    if not files:
        raise CorpusError(f"{item}: no such file or folder, and no file matches it as a glob")
    return files


def _video_ids(paths: list[Path]) -> list[str]:
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    common = Path(os.path.commonpath([p.resolve().parent for p in paths]))
    return [p.resolve().relative_to(common).with_suffix("").as_posix() for p in paths]


def video_rows(inputs: Sequence[str | Path], *, subject_id: str = "") -> list[ManifestRow]:
    """One unlabelled manifest row per video file of ``inputs``, in input order."""
    paths: list[Path] = []
    for item in inputs:
        for path in _expand(item):
            if path.resolve() not in {p.resolve() for p in paths}:
                paths.append(path)
    if not paths:
        raise CorpusError(f"no video files in {', '.join(map(str, inputs))}")
    return [
        ManifestRow(
            video_id=vid,
            subject_id=subject_id or vid,
            label=-1,
            split="unlabeled",
            skeleton_dir=None,
            video_path=path,
        )
        for vid, path in zip(_video_ids(paths), paths, strict=True)
    ]
