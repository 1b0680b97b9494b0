"""iMiGUE corpus adapter: labels CSV + skeleton folders + videos → per-video manifest.

Layout (every location is a ``CorpusLayout`` option; these are the defaults,
relative to the corpus root)::

    Label/labels_20200831.csv                 one row per micro-gesture clip
    Data/skeleton/raw/<vid>/<vid>_<12 digits>_keypoints.json
    videos/<vid>.mp4 | .avi | .mkv            where the videos lie is not documented
    Data/transcripts/<vid>.txt                optional interview text (the synthetic
                                              corpus writes these; iMiGUE has none)
    Label/protocol.json                       optional: a corpus's own split lists,
                                              used instead of the packaged official ones

Video ids. The protocol lists integers; iMiGUE's folders and files may be named
zero-padded (``0007``) or plain (``7``). Every id is canonicalised: an id made of
digits loses its leading zeros, so the CSV, folder names, file names and protocol
integers meet in one key, and the manifest carries the canonical form (``"7"``).
Two folders (or two videos) that canonicalise to the same id are an error.

Labels. ``win_or_lose`` is read as 1 (win / positive) or 0 (lose / negative);
``win``/``lose`` in any case and ``1``/``0`` are accepted. It must be constant
within a video, as must ``subject_id``; otherwise the error names the video and
the CSV lines.

Split policies (``SplitSpec.policy``):

- ``emotion-protocol``: the official balanced lists (102 train videos 51/51,
  100 test videos 50/50). Labelled videos in neither list become ``unlabeled``:
  the published method used them as its pseudo-label pool. Their true label is
  kept in the manifest and the records so the labeler's accuracy on the pool
  can be measured; a trainer must read ``pseudo_label`` for that split.
- ``cross-subject``: the protocol's subject lists (train / test subjects);
  videos of subjects in neither list are ``unlabeled``, with a warning.
- ``all``: every labelled video is ``train`` — the unbalanced whole, for a final
  model or for scoring the labeler; evaluate with ``kfold`` or the protocol.
- ``kfold``: by subject, stratified by label (scikit-learn's
  ``StratifiedGroupKFold``, shuffled with ``seed``): fold ``fold`` of ``k`` is
  ``test``, the rest ``train``. No subject is in two folds; the same
  (k, seed) gives the same folds.

The protocol file is ``Label/protocol.json`` inside the corpus when present
(the synthetic corpus writes one built like iMiGUE's), else the packaged
``preprocess/corpora/data/imigue_protocol.json`` (copied from the iMiGUE supplementary
material); ``CorpusLayout.protocol`` overrides both.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.resources
import json
import logging
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from hemo_jax.contract.keypoint_layout import NUM_KEYPOINTS
from hemo_jax.contract.schema import VideoRecord

log = logging.getLogger(__name__)

SPLIT_POLICIES = ("emotion-protocol", "cross-subject", "all", "kfold")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv")
REQUIRED_COLUMNS = ("video_id", "subject_id", "win_or_lose")
# iMiGUE's recordings; used for keypoint-only records, where no video says otherwise.
IMIGUE_FPS = 25.0
IMIGUE_FRAME_SIZE = (720, 1280)  # (H, W)
PROTOCOL_FILE = "imigue_protocol.json"  # the official split lists, shipped in corpora/data


class CorpusError(ValueError):
    """A corpus that cannot be read: names the file, line, field or video."""


class CorpusWarning(UserWarning):
    """Something skipped or degraded while reading a corpus (ids in the message)."""


@dataclasses.dataclass(frozen=True)
class CorpusLayout:
    """Where a corpus keeps each part; relative paths are under ``root``."""

    root: Path
    labels_csv: Path = Path("Label/labels_20200831.csv")
    skeleton_dir: Path = Path("Data/skeleton/raw")
    video_dir: Path = Path("videos")
    transcript_dir: Path = Path("Data/transcripts")
    protocol: Path | None = None  # None: Label/protocol.json if present, else packaged

    def path(self, part: Path) -> Path:
        return Path(self.root) / part


@dataclasses.dataclass(frozen=True)
class SplitSpec:
    policy: str = "emotion-protocol"
    k: int = 5  # kfold only
    fold: int = 0  # kfold only
    seed: int = 0  # kfold only

    def __post_init__(self) -> None:
        if self.policy not in SPLIT_POLICIES:
            raise CorpusError(f"split policy {self.policy!r} not one of {SPLIT_POLICIES}")
        if self.policy == "kfold" and not (self.k >= 2 and 0 <= self.fold < self.k):
            raise CorpusError(
                f"kfold needs k >= 2 and 0 <= fold < k, got k={self.k} fold={self.fold}"
            )


@dataclasses.dataclass(frozen=True)
class ManifestRow:
    """One video of the corpus, as the rest of preprocessing sees it."""

    video_id: str  # canonical (see module docstring)
    subject_id: str  # canonical
    label: int  # 1 win, 0 lose
    split: str  # train | val | test | unlabeled
    skeleton_dir: Path | None
    video_path: Path | None
    transcript_path: Path | None = None
    num_clips: int = 0  # micro-gesture rows in the CSV


@dataclasses.dataclass(frozen=True)
class Protocol:
    """Split lists in the format of ``imigue_protocol.json`` (canonical ids)."""

    emotion_train: frozenset[str]
    emotion_test: frozenset[str]
    subjects_train: frozenset[str]
    subjects_test: frozenset[str]
    path: str


@dataclasses.dataclass(frozen=True)
class _LabelledVideo:
    video_id: str
    subject_id: str
    label: int
    num_clips: int


def canonical_id(raw: str | int) -> str:
    """``"0007"``, ``"7"``, ``7`` and ``"7.0"`` → ``"7"``; other ids are only stripped."""
    text = str(raw).strip()
    if re.fullmatch(r"\d+(\.0*)?", text):
        return str(int(text.split(".")[0]))
    return text


def parse_win_or_lose(value: str) -> int | None:
    """1 for win, 0 for lose, None when the value is neither."""
    text = value.strip().lower()
    return {"win": 1, "lose": 0, "1": 1, "0": 0, "1.0": 1, "0.0": 0}.get(text)


def _lines(lines: list[int]) -> str:
    return ", ".join(str(n) for n in lines[:10]) + (" …" if len(lines) > 10 else "")


def read_labels(path: Path) -> dict[str, _LabelledVideo]:
    """Reads the clip-level labels CSV into one entry per video (checked)."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: labels CSV not found")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise CorpusError(f"{path}: empty file, expected a header") from None
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise CorpusError(f"{path}: missing column(s) {missing}; header is {header}")
        col = {name: header.index(name) for name in REQUIRED_COLUMNS}
        # video → value → CSV line numbers, to name the rows of any conflict
        labels: dict[str, dict[int, list[int]]] = {}
        subjects: dict[str, dict[str, list[int]]] = {}
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) < len(header):
                raise CorpusError(f"{path}:{line}: {len(row)} fields, header has {len(header)}")
            vid = canonical_id(row[col["video_id"]])
            if not vid:
                raise CorpusError(f"{path}:{line}: empty video_id")
            label = parse_win_or_lose(row[col["win_or_lose"]])
            if label is None:
                raise CorpusError(
                    f"{path}:{line}: win_or_lose {row[col['win_or_lose']]!r} for video {vid} "
                    "is not win/lose/1/0"
                )
            subject = canonical_id(row[col["subject_id"]])
            if not subject:
                raise CorpusError(f"{path}:{line}: empty subject_id for video {vid}")
            labels.setdefault(vid, {}).setdefault(label, []).append(line)
            subjects.setdefault(vid, {}).setdefault(subject, []).append(line)
    out: dict[str, _LabelledVideo] = {}
    for vid, by_label in labels.items():
        if len(by_label) > 1:
            raise CorpusError(
                f"{path}: video {vid} has win_or_lose 'win' on lines {_lines(by_label[1])} "
                f"and 'lose' on lines {_lines(by_label[0])}; it must be constant within a video"
            )
        if len(subjects[vid]) > 1:
            parts = "; ".join(f"{s!r} on lines {_lines(n)}" for s, n in subjects[vid].items())
            raise CorpusError(f"{path}: video {vid} has several subject_id values: {parts}")
        ((label, lines),) = by_label.items()
        (subject,) = subjects[vid]
        out[vid] = _LabelledVideo(vid, subject, label, len(lines))
    if not out:
        raise CorpusError(f"{path}: no label rows")
    return out


def _index(folder: Path, *, dirs: bool, suffixes: tuple[str, ...] = ()) -> dict[str, Path]:
    """Canonical id → entry of ``folder`` (sub-folders, or files with one of ``suffixes``)."""
    if not folder.is_dir():
        return {}
    found: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):  # hidden, e.g. a half-written temporary
            continue
        if dirs != entry.is_dir() or (suffixes and entry.suffix.lower() not in suffixes):
            continue
        key = canonical_id(entry.name if dirs else entry.stem)
        if key in found:
            raise CorpusError(
                f"{folder}: {found[key].name!r} and {entry.name!r} are both video {key}"
            )
        found[key] = entry
    return found


def _int_list(path: str, obj: dict, section: str, key: str) -> frozenset[str]:
    try:
        values = obj[section][key]
    except (KeyError, TypeError):
        raise CorpusError(f"{path}: missing {section}.{key}") from None
    if not isinstance(values, list) or not all(isinstance(v, int | str) for v in values):
        raise CorpusError(f"{path}: {section}.{key} must be a list of ids")
    return frozenset(canonical_id(v) for v in values)


def load_protocol(path: Path | None = None) -> Protocol:
    """Reads split lists; ``None`` reads the packaged official iMiGUE protocol."""
    if path is None:
        resource = importlib.resources.files("preprocess.corpora") / "data" / PROTOCOL_FILE
        text, name = resource.read_text(encoding="utf-8"), str(resource)
    else:
        try:
            text, name = Path(path).read_text(encoding="utf-8"), str(path)
        except OSError as e:
            raise CorpusError(f"{path}: cannot read protocol: {e}") from e
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise CorpusError(f"{name}: not JSON: {e}") from e
    protocol = Protocol(
        emotion_train=_int_list(name, obj, "emotion", "train_video_ids"),
        emotion_test=_int_list(name, obj, "emotion", "test_video_ids"),
        subjects_train=_int_list(name, obj, "micro_gesture_cross_subject", "train_subject_ids"),
        subjects_test=_int_list(name, obj, "micro_gesture_cross_subject", "test_subject_ids"),
        path=name,
    )
    for kind, a, b in (
        ("video", protocol.emotion_train, protocol.emotion_test),
        ("subject", protocol.subjects_train, protocol.subjects_test),
    ):
        if a & b:
            raise CorpusError(f"{name}: {kind} ids in both train and test: {sorted(a & b)[:10]}")
    return protocol


def _sort_key(vid: str) -> tuple[int, int, str]:
    return (0, int(vid), "") if vid.isdigit() else (1, 0, vid)


def _ids(ids: list[str] | set[str]) -> str:
    ids = sorted(ids, key=_sort_key)
    return ", ".join(ids[:20]) + (f" … ({len(ids)} in all)" if len(ids) > 20 else "")


def assign_splits(
    videos: list[_LabelledVideo], spec: SplitSpec, protocol: Protocol | None
) -> dict[str, str]:
    """video_id → split under ``spec`` (see the module docstring)."""
    if spec.policy == "all":
        return {v.video_id: "train" for v in videos}
    if spec.policy == "emotion-protocol":
        assert protocol is not None
        return {
            v.video_id: "train"
            if v.video_id in protocol.emotion_train
            else "test"
            if v.video_id in protocol.emotion_test
            else "unlabeled"
            for v in videos
        }
    if spec.policy == "cross-subject":
        assert protocol is not None
        unlisted = {v.subject_id for v in videos} - protocol.subjects_train - protocol.subjects_test
        if unlisted:
            warnings.warn(
                f"subjects in neither cross-subject list of {protocol.path} become "
                f"'unlabeled': {_ids(unlisted)}",
                CorpusWarning,
                stacklevel=3,
            )
        return {
            v.video_id: "train"
            if v.subject_id in protocol.subjects_train
            else "test"
            if v.subject_id in protocol.subjects_test
            else "unlabeled"
            for v in videos
        }
    # kfold by subject, stratified by label.
    from sklearn.model_selection import StratifiedGroupKFold

    subjects = {v.subject_id for v in videos}
    if len(subjects) < spec.k:
        raise CorpusError(
            f"kfold k={spec.k} needs at least {spec.k} subjects, have {len(subjects)}"
        )
    ordered = sorted(videos, key=lambda v: _sort_key(v.video_id))
    splitter = StratifiedGroupKFold(n_splits=spec.k, shuffle=True, random_state=spec.seed)
    labels = np.array([v.label for v in ordered])
    groups = np.array([v.subject_id for v in ordered])
    folds = list(splitter.split(np.zeros(len(ordered)), labels, groups))
    test = {ordered[i].video_id for i in folds[spec.fold][1]}
    return {v.video_id: "test" if v.video_id in test else "train" for v in ordered}


def build_manifest(layout: CorpusLayout, split: SplitSpec | None = None) -> list[ManifestRow]:
    """Per-video manifest of the corpus at ``layout``, ordered by video id.

    A labelled video with neither skeleton nor video is skipped with a
    ``CorpusWarning`` naming it; one with skeletons but no video is kept
    (keypoint-only records) with a warning.
    """
    split = split or SplitSpec()
    labelled = read_labels(layout.path(layout.labels_csv))
    skeletons = _index(layout.path(layout.skeleton_dir), dirs=True)
    videos = _index(layout.path(layout.video_dir), dirs=False, suffixes=VIDEO_SUFFIXES)
    transcripts = _index(layout.path(layout.transcript_dir), dirs=False, suffixes=(".txt",))

    missing = [v for v in labelled if v not in skeletons and v not in videos]
    if missing:
        warnings.warn(
            f"{len(missing)} labelled video(s) have no skeleton folder under "
            f"{layout.path(layout.skeleton_dir)} and no video under "
            f"{layout.path(layout.video_dir)}; skipped: {_ids(missing)}",
            CorpusWarning,
            stacklevel=2,
        )
    kept = [v for vid, v in labelled.items() if vid in skeletons or vid in videos]
    if not kept:
        raise CorpusError(
            f"{layout.root}: none of the {len(labelled)} labelled videos has a skeleton "
            "folder or a video file"
        )
    no_video = [v.video_id for v in kept if v.video_id not in videos]
    if no_video:
        warnings.warn(
            f"{len(no_video)} video(s) have skeletons but no video file under "
            f"{layout.path(layout.video_dir)}; their records will be keypoint-only: "
            f"{_ids(no_video)}",
            CorpusWarning,
            stacklevel=2,
        )
    unlabelled = set(skeletons) - set(labelled)
    if unlabelled:
        warnings.warn(
            f"skeleton folders without label rows are ignored: {_ids(unlabelled)}",
            CorpusWarning,
            stacklevel=2,
        )

    protocol = None
    if split.policy in ("emotion-protocol", "cross-subject"):
        path = layout.protocol
        if path is None and layout.path(Path("Label/protocol.json")).is_file():
            path = layout.path(Path("Label/protocol.json"))
        protocol = load_protocol(path)
        log.info("split lists from %s", protocol.path)
    splits = assign_splits(kept, split, protocol)
    return [
        ManifestRow(
            video_id=v.video_id,
            subject_id=v.subject_id,
            label=v.label,
            split=splits[v.video_id],
            skeleton_dir=skeletons.get(v.video_id),
            video_path=videos.get(v.video_id),
            transcript_path=transcripts.get(v.video_id),
            num_clips=v.num_clips,
        )
        for v in sorted(kept, key=lambda v: _sort_key(v.video_id))
    ]


def video_properties(path: Path) -> tuple[float, tuple[int, int]]:
    """(fps, (H, W)) of a video file, from its container (``preprocess.video.decode``)."""
    from preprocess.video.decode import VideoError, VideoReader

    try:
        with VideoReader(path) as reader:
            return reader.info.fps, reader.info.frame_size
    except VideoError as error:
        raise CorpusError(f"{path}: {error.reason}") from error


def build_records(
    rows: list[ManifestRow],
    *,
    source: str = "imigue",
    on_error: str = "raise",
    fps: float = IMIGUE_FPS,
    frame_size: tuple[int, int] = IMIGUE_FRAME_SIZE,
) -> Iterator[VideoRecord]:
    """Keypoint (and transcript) records, one per manifest row, in order.

    ``fps`` and ``frame_size`` apply to rows without a video; a row's video
    file, when present, gives its own. ``on_error`` goes to the OpenPose reader
    (``"skip"`` turns malformed frame files into zero rows). A row without a
    skeleton folder gets zero keypoint rows; crops are added later from the video.
    """
    from preprocess.keypoints.openpose import read_openpose_dir

    for row in rows:
        if row.skeleton_dir is not None:
            sequence = read_openpose_dir(row.skeleton_dir, on_error=on_error)
            keypoints = np.asarray(sequence.keypoints, np.float32)
            frames = np.asarray(sequence.frames, np.int32)
        else:
            keypoints = np.zeros((0, NUM_KEYPOINTS, 3), np.float32)
            frames = np.zeros((0,), np.int32)
        row_fps, row_size = (fps, frame_size)
        if row.video_path is not None:
            row_fps, row_size = video_properties(row.video_path)
        transcript = ""
        if row.transcript_path is not None:
            transcript = row.transcript_path.read_text(encoding="utf-8")
        yield VideoRecord(
            video_id=row.video_id,
            subject_id=row.subject_id,
            source=source,
            split=row.split,
            label=row.label,
            fps=float(row_fps),
            frame_size=(int(row_size[0]), int(row_size[1])),
            keypoints=keypoints.astype(np.float32, copy=False),
            keypoint_frames=frames,
            transcript=transcript,
        )


def summarise(rows: list[ManifestRow]) -> dict[str, dict[str, int]]:
    """Counts per split: videos, wins, losses, with skeleton, with video, subjects."""
    out: dict[str, dict[str, int]] = {}
    for name in sorted({r.split for r in rows}):
        part = [r for r in rows if r.split == name]
        out[name] = {
            "videos": len(part),
            "win": sum(r.label == 1 for r in part),
            "lose": sum(r.label == 0 for r in part),
            "subjects": len({r.subject_id for r in part}),
            "with_skeleton": sum(r.skeleton_dir is not None for r in part),
            "with_video": sum(r.video_path is not None for r in part),
            "with_transcript": sum(r.transcript_path is not None for r in part),
        }
    return out
