"""OpenPose JSON frames of one video -> float32 keypoints [T, 137, 3] (x px, y px, confidence).

A directory holds one file per frame, `<name>_<frame number>_keypoints.json`: iMiGUE writes 12
zero-based digits, plain OpenPose output any width. Rows follow the parsed frame number and gaps
stay gaps: `frames` holds the real source index of every row.

Two parsers give bit-identical results. `parse_openpose_frame` is the strict one (`json.loads`,
then shape and type checks) and the source of every error message. The batch parser reads many
files at once: msgspec checks each file against the frame layout (the JSON grammar and the
last-key-wins rule of `json.loads`) and hands back each person's keypoint lists as raw text;
pysimdjson reads the lists of all the files as one document and turns their numbers into
float64 (both round correctly, as `float()` does). A file it cannot vouch for goes to the strict
parser.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import operator
import os
from typing import Literal

import msgspec
import numpy as np
import simdjson

from hemo_jax.contract.keypoint_layout import BODY, FACE, LEFT_HAND, NUM_KEYPOINTS, RIGHT_HAND

SECTIONS = (
    ("pose_keypoints_2d", BODY),
    ("face_keypoints_2d", FACE),
    ("hand_left_keypoints_2d", LEFT_HAND),
    ("hand_right_keypoints_2d", RIGHT_HAND),
)
_SECTION_SIZES = [(rows.stop - rows.start) * 3 for _, rows in SECTIONS]
_NOBODY = np.zeros((0, NUM_KEYPOINTS, 3), np.float32)
_BATCH = 256  # files per batch: amortises the numpy and simdjson calls

# The batch parser's view of a frame: the 2-D keypoint lists of each person as raw JSON text (an
# absent list reads as empty, an empty one as its zeros); msgspec checks the whole file, and
# skips every other field.
_EMPTY_LIST = msgspec.Raw(b"[]")
_ZERO_LISTS = [b"[" + b",".join([b"0"] * size) + b"]" for size in _SECTION_SIZES]
_Person = msgspec.defstruct("_Person", [(key, msgspec.Raw, _EMPTY_LIST) for key, _ in SECTIONS])
_Frame = msgspec.defstruct("_Frame", [("people", list[_Person])])
_decode_frame = msgspec.json.Decoder(_Frame).decode
_person_lists = operator.attrgetter(*(key for key, _ in SECTIONS))


class OpenPoseError(ValueError):
    """A file that is not OpenPose JSON as expected; names the file and the problem."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path


@dataclasses.dataclass(frozen=True)
class OpenPoseSummary:
    files: int  # frame files read, skipped ones included
    empty_frames: int  # frames with no person
    multi_person_frames: int  # frames with several people (one was kept)
    skipped_files: tuple[str, ...]  # malformed files left as zero rows (on_error="skip")
    gaps: int  # frame numbers missing between the first and the last file

    @property
    def skipped(self) -> int:
        return len(self.skipped_files)


@dataclasses.dataclass(frozen=True)
class OpenPoseSequence:
    keypoints: np.ndarray  # float32 [T, 137, 3]; zeros where nobody was seen
    frames: np.ndarray  # int32 [T]: source frame index of each row
    summary: OpenPoseSummary


def parse_openpose_frame(data: bytes | str | dict, *, source: str = "<frame>") -> list[np.ndarray]:
    """One OpenPose frame -> one float32 [137, 3] array per person (the strict parser).

    A missing or empty section (e.g. face detection was off) gives zeros for its rows.
    """
    if not isinstance(data, dict):
        try:
            data = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
            raise OpenPoseError(source, f"bad JSON: {e}") from None
    people = data.get("people") if isinstance(data, dict) else None
    if not isinstance(people, list):
        raise OpenPoseError(source, "no 'people' list at the top level")
    result = []
    for i, person in enumerate(people):
        if not isinstance(person, dict):
            raise OpenPoseError(source, f"people[{i}] is a {type(person).__name__}, not an object")
        keypoints = np.zeros((NUM_KEYPOINTS, 3), np.float32)
        for key, rows in SECTIONS:
            values, where = person.get(key, []), f"people[{i}].{key}"
            size = (rows.stop - rows.start) * 3
            if not isinstance(values, list):
                raise OpenPoseError(source, f"{where} is a {type(values).__name__}, not a list")
            if values and len(values) != size:
                raise OpenPoseError(source, f"{where} has {len(values)} values, expected {size}")
            odd = [v for v in values if type(v) not in (int, float)]  # a bool is no number
            if odd:
                raise OpenPoseError(source, f"{where} holds a non-numeric value {odd[0]!r}")
            try:
                with np.errstate(over="ignore"):  # beyond float32 becomes inf, refused below
                    array = np.asarray(values, np.float64).astype(np.float32).reshape(-1, 3)
            except OverflowError:  # an int beyond float64
                array = np.array([np.inf])
            if not np.isfinite(array).all():
                raise OpenPoseError(source, f"{where} holds a value that is no finite float32")
            keypoints[rows] = array if values else 0
        result.append(keypoints)
    return result


def read_openpose_dir(
    path: str | os.PathLike, *, on_error: Literal["raise", "skip"] = "raise"
) -> OpenPoseSequence:
    """Read every `*_<digits>_keypoints.json` of one directory, in frame order.

    A frame without a person gives a zero row; among several people the main subject is kept
    (see `_MainSubject`). A malformed file raises `OpenPoseError`; under on_error="skip" it gives
    a zero row and is listed in the summary.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    paths, frames = _list_frames(os.fspath(path))
    if len(paths) > 4 * _BATCH:
        _keep_freed_memory()
    keypoints = np.zeros((len(paths), NUM_KEYPOINTS, 3), np.float32)
    choose, skipped, nobody, multi = _MainSubject(), [], 0, 0
    for start in range(0, len(paths), _BATCH):
        batch = paths[start : start + _BATCH]
        docs = [_read_bytes(p) for p in batch]
        people = _parse_batch(docs)
        for i in [i for i, found in enumerate(people) if found is None]:
            try:
                people[i] = _read_strictly(batch[i], docs[i])
            except OpenPoseError:
                if on_error == "raise":
                    raise
                skipped.append(os.path.basename(batch[i]))
                people[i] = _NOBODY  # a zero row, and the previous choice stays
        counts = [len(found) for found in people]
        nobody += counts.count(0)
        multi += len(counts) - counts.count(0) - counts.count(1)
        keypoints[start : start + len(batch)] = choose(people)
    gaps = int(frames[-1] - frames[0] + 1 - len(frames))
    empty = nobody - len(skipped)  # a skipped file is no frame with nobody
    summary = OpenPoseSummary(len(paths), empty, multi, tuple(skipped), gaps)
    return OpenPoseSequence(keypoints, frames, summary)


def _read_strictly(path: str, doc: bytes | OSError) -> np.ndarray:
    if isinstance(doc, OSError):
        raise OpenPoseError(path, f"cannot read: {doc}")
    people = parse_openpose_frame(doc, source=path)
    return np.array(people, np.float32).reshape(-1, NUM_KEYPOINTS, 3)


class _MainSubject:
    """Picks the main subject among the people of successive frames.

    Rule, on BODY_25 keypoints with confidence > 0 ("seen"): with a previous choice, the person
    whose seen keypoints lie closest (mean pixel distance over keypoints seen in both) to the
    previously chosen person; a person sharing no seen keypoint with it does not compete. With no
    previous choice, or nobody sharing a keypoint, the largest and surest person: highest
    sqrt(box area of the seen keypoints) * mean body confidence. Ties go to the first listed.
    Frames with nobody leave the previous choice in place.

    The rule runs in two steps, so that numpy sees many frames at once: first, for every frame
    with several people, the choice it would make after each person of the frame before (a
    table), then one pass through the frames that follows the table.
    """

    def __init__(self):
        # The last choice; at first an unseen person, who shares a keypoint with nobody.
        self.previous = np.zeros((NUM_KEYPOINTS, 3), np.float32)

    def __call__(self, frames: list[np.ndarray]) -> np.ndarray:
        """People [n, 137, 3] of successive frames -> the main subject of each, zeros if nobody."""
        counts = np.array([len(people) for people in frames])
        # Every person in turn, then an unseen stand-in that pads ragged frames, then the last
        # choice before these frames.
        unseen = np.zeros((1, NUM_KEYPOINTS, 3), np.float32)
        everyone = np.concatenate([*frames, unseen, self.previous[None]], dtype=np.float32)
        pad, last = len(everyone) - 2, len(everyone) - 1
        first = np.cumsum(counts) - counts  # of each frame's people in `everyone`
        shown = np.flatnonzero(counts)
        # Frames with several people, and the candidates for the previous choice: the people of
        # the prior frame with people (the last choice, for the first such frame).
        several = np.flatnonzero(counts > 1)
        k = np.searchsorted(shown, several)  # place among the frames with people
        after_first, prior = k > 0, shown[np.maximum(k - 1, 0)]
        start = np.where(after_first, first[prior], last)
        body = everyone[:, BODY]
        person = _padded(first[several], counts[several], pad)  # [m, P]
        candidate = _padded(start, np.where(after_first, counts[prior], 1), pad)  # [m, S]
        closest, anyone = self._closest(body[person][:, :, None], body[candidate][:, None])
        choice = np.where(anyone, closest, self._largest(body[person])[:, None]).tolist()
        # choice[m][j]: whom the m-th such frame picks after candidate j; now follow the frames.
        row_of = {f: m for m, f in enumerate(several.tolist())}
        first, start, rows, chosen = first.tolist(), start.tolist(), [pad] * len(frames), last
        for f in shown.tolist():
            m = row_of.get(f)
            chosen = first[f] if m is None else first[f] + choice[m][chosen - start[m]]
            rows[f] = chosen
        self.previous = everyone[chosen]
        return everyone[rows]

    @staticmethod
    def _closest(body: np.ndarray, previous: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[..., 25, 3] people against previous choices -> closest person, and whether anyone
        shares a seen keypoint with it, along axis 1."""
        shared = (body[..., 2] > 0) & (previous[..., 2] > 0)
        count = shared.sum(-1)
        gap = np.hypot(body[..., 0] - previous[..., 0], body[..., 1] - previous[..., 1])
        mean = (gap * shared).sum(-1) / np.maximum(count, 1)
        return np.where(count > 0, mean, np.inf).argmin(1), (count > 0).any(1)

    @staticmethod
    def _largest(body: np.ndarray) -> np.ndarray:
        """[m, P, 25, 3] -> the largest and surest person of each row."""
        seen = body[..., 2] > 0
        x, y = body[..., 0], body[..., 1]
        width = np.where(seen, x, -np.inf).max(-1) - np.where(seen, x, np.inf).min(-1)
        height = np.where(seen, y, -np.inf).max(-1) - np.where(seen, y, np.inf).min(-1)
        size = np.sqrt(np.where(seen.any(-1), width * height, 0))
        return (size * body[..., 2].mean(-1)).argmax(-1)


def _padded(start: np.ndarray, count: np.ndarray, pad: int) -> np.ndarray:
    """Rows of consecutive indices start[i], start[i] + 1, .. (count[i] of them), then `pad`."""
    step = np.arange(max(count.max(initial=0), 1))
    return np.where(step < count[:, None], start[:, None] + step, pad)


def _list_frames(directory: str) -> tuple[list[str], np.ndarray]:
    if not os.path.isdir(directory):
        raise OpenPoseError(directory, "not a directory")
    found: dict[int, str] = {}  # frame number -> file name
    prefixes: dict[str, str] = {}  # video name -> a file name
    for name in os.listdir(directory):
        if not name.endswith("_keypoints.json"):
            continue
        video, _, number = name[: -len("_keypoints.json")].rpartition("_")
        if not number.isdecimal():
            raise OpenPoseError(os.path.join(directory, name), "no frame number before _keypoints")
        frame = int(number)
        if frame in found:
            raise OpenPoseError(directory, f"frame {frame} twice: {found[frame]} and {name}")
        found[frame] = name
        prefixes.setdefault(video, name)
    if not found:
        raise OpenPoseError(directory, "no *_keypoints.json files")
    if len(prefixes) > 1:
        raise OpenPoseError(directory, f"files of several videos: {sorted(prefixes.values())[:3]}")
    if max(found) > np.iinfo(np.int32).max:
        raise OpenPoseError(os.path.join(directory, found[max(found)]), "frame number too big")
    frames, folder = sorted(found), os.path.join(directory, "")
    return [folder + found[f] for f in frames], np.array(frames, np.int32)


@functools.cache
def _keep_freed_memory() -> None:
    # glibc returns freed memory above its trim threshold to the OS, so every batch page-faults
    # its arrays in anew: ~4 faults per file, a sixth of the reader's time on a VM. Freeing one
    # 16 MiB block once raises glibc's dynamic mmap/trim thresholds (other allocators ignore it).
    np.empty(16 << 20, np.uint8)  # allocated and freed at once, never touched


def _read_bytes(path: str) -> bytes | OSError:
    try:  # os.open + os.read: half the cost of open().read() on files of a few kB
        fd = os.open(path, os.O_RDONLY)
        try:
            chunks = [os.read(fd, 1 << 16)]
            while len(chunks[-1]) == 1 << 16:  # a file beyond one read
                chunks.append(os.read(fd, 1 << 16))
        finally:
            os.close(fd)
    except OSError as e:
        return e
    return b"".join(chunks)


def _parse_batch(docs: list[bytes | OSError]) -> list[np.ndarray | None]:
    """Many files at once -> float32 [people, 137, 3] per file, or None: use the strict parser."""
    found = [_keypoint_lists(doc) for doc in docs]
    lists = [raw for f in found if f for raw in f]
    try:
        values = _numbers(b"[" + b",".join(lists) + b"]", len(lists))
    except (TypeError, ValueError, RuntimeError):  # rare: find the file at fault, and let the
        # strict parser decide on it
        return [_parse_batch([doc])[0] for doc in docs] if len(docs) > 1 else [None]
    people = values.reshape(-1, NUM_KEYPOINTS, 3)  # the lists of a person fill its rows in turn
    base = np.cumsum([0] + [len(f) // 4 if f else 0 for f in found]).tolist()
    return [f if f is None else people[base[d] : base[d + 1]] for d, f in enumerate(found)]


def _keypoint_lists(doc: bytes | OSError) -> list[msgspec.Raw | bytes] | None:
    """One file's 2-D keypoint lists as raw JSON text (any JSON value so far), 4 per person in
    SECTIONS order, an empty list as its zeros; None when msgspec finds no OpenPose frame."""
    if not isinstance(doc, bytes) or not doc.isascii():  # json.loads also checks UTF-8 in strings
        return None
    try:
        people = _decode_frame(doc).people
    except msgspec.DecodeError:
        return None
    lists = [raw for person in people for raw in _person_lists(person)]
    if _EMPTY_LIST in lists:  # read as its zeros (`[ ]` is left to the strict parser)
        lists = [_ZERO_LISTS[i % 4] if raw == _EMPTY_LIST else raw for i, raw in enumerate(lists)]
    return lists


def _numbers(text: bytes, n: int) -> np.ndarray:
    """`[list,list,..]` of n keypoint lists (4 per person, SECTIONS order) -> their numbers as
    float32. ValueError, TypeError or RuntimeError unless each is a flat list of numbers of the
    right length, finite in float32 (pysimdjson raises for a number beyond float64 or int64)."""
    document = simdjson.Parser().parse(text)  # fresh: an error leaves the document alive
    # len() refuses a number, true, false or null; as_buffer() refuses a string or an object,
    # in a list or for one, but flattens a list in a list: a count of "[" finds those.
    if list(map(len, document)) != _SECTION_SIZES * (n // 4):
        raise ValueError("a list of another length")
    values = np.frombuffer(document.as_buffer(of_type="d"), np.float64)
    if np.count_nonzero(np.frombuffer(text, np.uint8) == ord("[")) != n + 1:
        raise TypeError("a list in a list")
    with np.errstate(over="ignore"):
        values = values.astype(np.float32)
    if not np.isfinite(values).all():
        raise ValueError("a number beyond float32")
    return values
