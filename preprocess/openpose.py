"""OpenPose JSON frames of one video -> float32 keypoints [T, 137, 3] (x px, y px, confidence).

A directory holds one file per frame, `<name>_<frame number>_keypoints.json`: iMiGUE writes 12
zero-based digits, plain OpenPose output any width. Rows follow the parsed frame number and gaps
stay gaps: `frames` holds the real source index of every row.

Two parsers give bit-identical results. `parse_openpose_frame` is the strict one (`json.loads`,
then shape and type checks) and the source of every error message. The batch parser reads many
files at once: it cuts out the innermost lists, checks what is left of each file (its skeleton)
with `json.loads`, and parses all numbers together with numpy (see `_parse_numbers`). A file it
cannot vouch for goes to the strict parser.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import os
import re
from typing import Literal

import numpy as np

from hemo_jax.data.schema import BODY, FACE, LEFT_HAND, NUM_KEYPOINTS, RIGHT_HAND

SECTIONS = (
    ("pose_keypoints_2d", BODY),
    ("face_keypoints_2d", FACE),
    ("hand_left_keypoints_2d", LEFT_HAND),
    ("hand_right_keypoints_2d", RIGHT_HAND),
)
_SECTION_INDEX = {key: i for i, (key, _) in enumerate(SECTIONS)}
_SECTION_START = np.array([rows.start * 3 for _, rows in SECTIONS])
_SECTION_SIZE = np.array([(rows.stop - rows.start) * 3 for _, rows in SECTIONS])
_FILE_RE = re.compile(r"(?:(.*)_)?(\d+)_keypoints\.json")
_NUMBER_RE = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")
_SPLIT_NUMBER_RE = re.compile(rb"[^ \t\n\r,][ \t\n\r]+[^ \t\n\r,]")  # "1 2" is no JSON
_POW10 = 10.0 ** np.arange(16)  # exact in float64
_BATCH = 64  # files per batch: amortises numpy calls, keeps the arrays in cache


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
    choose, skipped, empty, multi = _MainSubject(), [], 0, 0
    for start in range(0, len(paths), _BATCH):
        batch = paths[start : start + _BATCH]
        docs = [_read_bytes(p) for p in batch]
        parsed = _parse_batch(docs)
        for row, (p, doc, people) in enumerate(zip(batch, docs, parsed, strict=True), start):
            try:
                if isinstance(doc, OSError):
                    raise OpenPoseError(p, f"cannot read: {doc}")
                if people is None:
                    people = parse_openpose_frame(doc, source=p)
            except OpenPoseError:
                if on_error == "raise":
                    raise
                skipped.append(os.path.basename(p))
                continue
            empty += len(people) == 0
            multi += len(people) > 1
            if len(people):
                keypoints[row] = choose(people)
    gaps = int(frames[-1] - frames[0] + 1 - len(frames))
    summary = OpenPoseSummary(len(paths), empty, multi, tuple(skipped), gaps)
    return OpenPoseSequence(keypoints, frames, summary)


class _MainSubject:
    """Picks the main subject among the people of successive frames.

    Rule, on BODY_25 keypoints with confidence > 0 ("seen"): with a previous choice, the person
    whose seen keypoints lie closest (mean pixel distance over keypoints seen in both) to the
    previously chosen person; a person sharing no seen keypoint with it does not compete. With no
    previous choice, or nobody sharing a keypoint, the largest and surest person: highest
    sqrt(box area of the seen keypoints) * mean body confidence. Ties go to the first listed.
    Frames with nobody leave the previous choice in place.
    """

    def __init__(self):
        self.previous: np.ndarray | None = None

    def __call__(self, people: list[np.ndarray] | np.ndarray) -> np.ndarray:
        index = 0 if len(people) == 1 else self._pick(np.asarray(people)[:, BODY])
        self.previous = people[index]
        return self.previous

    def _pick(self, body: np.ndarray) -> int:
        seen = body[..., 2] > 0
        if self.previous is not None:
            previous = self.previous[BODY]
            shared = seen & (previous[:, 2] > 0)
            count = shared.sum(1)
            if count.any():
                gap = np.hypot(body[..., 0] - previous[:, 0], body[..., 1] - previous[:, 1])
                mean = (gap * shared).sum(1) / np.maximum(count, 1)
                return int(np.where(count > 0, mean, np.inf).argmin())
        x, y = body[..., 0], body[..., 1]
        width = np.where(seen, x, -np.inf).max(1) - np.where(seen, x, np.inf).min(1)
        height = np.where(seen, y, -np.inf).max(1) - np.where(seen, y, np.inf).min(1)
        size = np.sqrt(np.where(seen.any(1), width * height, 0))
        return int((size * body[..., 2].mean(1)).argmax())


def _list_frames(directory: str) -> tuple[list[str], np.ndarray]:
    if not os.path.isdir(directory):
        raise OpenPoseError(directory, "not a directory")
    found: dict[int, str] = {}  # frame number -> file name
    prefixes: dict[str, str] = {}  # video name -> a file name
    for name in os.listdir(directory):
        if not name.endswith("_keypoints.json"):
            continue
        match = _FILE_RE.fullmatch(name)
        if match is None:
            raise OpenPoseError(os.path.join(directory, name), "no frame number before _keypoints")
        frame = int(match[2])
        if frame in found:
            raise OpenPoseError(directory, f"frame {frame} twice: {found[frame]} and {name}")
        found[frame] = name
        prefixes.setdefault(match[1] or "", name)
    if not found:
        raise OpenPoseError(directory, "no *_keypoints.json files")
    if len(prefixes) > 1:
        raise OpenPoseError(directory, f"files of several videos: {sorted(prefixes.values())[:3]}")
    if max(found) > np.iinfo(np.int32).max:
        raise OpenPoseError(os.path.join(directory, found[max(found)]), "frame number too big")
    frames = sorted(found)
    return [os.path.join(directory, found[f]) for f in frames], np.array(frames, np.int32)


@functools.cache
def _keep_freed_memory() -> None:
    # glibc returns freed memory above its trim threshold to the OS, so every batch page-faults
    # its arrays in anew: ~25 faults per file, half the reader's time on a VM. Freeing one 16 MiB
    # block once raises glibc's dynamic mmap/trim thresholds (other allocators ignore it).
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
    texts = [d if isinstance(d, bytes) else b"" for d in docs]
    joined, offsets = b"".join(texts), [0, *itertools.accumulate(map(len, texts))]
    lo, hi, doc, bad = _innermost_lists(joined, offsets)
    span = np.searchsorted(doc, np.arange(len(docs) + 1)).tolist()  # file d: lists span[d]:..
    lo_list, hi_list, roles, n_people = lo.tolist(), hi.tolist(), [], np.zeros(len(docs), int)
    for d in range(len(docs)):  # each file's structure, from its skeleton
        a, b = span[d], span[d + 1]
        cuts = zip([offsets[d], *hi_list[a:b]], [*lo_list[a:b], offsets[d + 1]], strict=True)
        plan = None if bad[d] else _plan(b"".join([joined[s:e] for s, e in cuts]))
        if plan is None or len(plan[1]) != b - a:
            bad[d] = True
            roles.append(np.full(b - a, -1))
        else:
            n_people[d] = plan[0]
            roles.append(plan[1])
    role = np.concatenate([*roles, np.zeros(0, int)])
    contents = [joined[s:e] for s, e in zip(lo_list, hi_list, strict=True)]
    text = b",".join([c for c in contents if c])
    if any(w in text for w in (b" ", b"\t", b"\n", b"\r")):
        contents = [_strip_whitespace(c) for c in contents]
        text = b",".join([c for c in contents if c])
    # All numbers in one text: list i holds count[i] of them, from number first[i] on.
    size = np.fromiter(map(len, contents), int, len(contents))
    filled = size > 0
    values, ends, ok = _parse_numbers(text) if text else (np.zeros(0), np.zeros(0, int), None)
    first, count = np.zeros(len(contents), int), np.zeros(len(contents), int)
    first[filled] = np.searchsorted(ends, np.cumsum(size[filled] + 1) - size[filled] - 1)
    count[filled] = np.diff(np.append(first[filled], len(ends)))
    if ok is not None and not ok.all():
        broken = np.searchsorted(first[filled], np.flatnonzero(~ok), "right") - 1
        bad[doc[np.flatnonzero(filled)[broken]]] = True
    section = np.where(role >= 0, role % 4, 0)
    bad[doc[(role >= 0) & (count != 0) & (count != _SECTION_SIZE[section])]] = True
    bad[doc[(role == -2) & (count != 0)]] = True  # "people": [4] is no empty list
    n_people[bad] = 0
    base = np.cumsum(np.append(0, n_people))
    used = (role >= 0) & (count > 0) & ~bad[doc]  # keypoint lists of files the fast path takes
    n = count[used]
    step = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)  # 0, 1, .. within each list
    target = (base[doc[used]] + role[used] // 4) * NUM_KEYPOINTS * 3 + _SECTION_START[section[used]]
    out = np.zeros((base[-1], NUM_KEYPOINTS, 3), np.float32)
    out.reshape(-1)[np.repeat(target, n) + step] = values[np.repeat(first[used], n) + step]
    return [None if bad[d] else out[base[d] : base[d + 1]] for d in range(len(docs))]


def _innermost_lists(joined: bytes, offsets: list[int]) -> tuple[np.ndarray, ...]:
    """Lists with no list inside (OpenPose keeps its numbers there): joined[lo:hi], their file,
    and the files the fast path must not take (a list cut off by truncation)."""
    u = np.frombuffer(joined, np.uint8)
    brackets = np.flatnonzero((u == 91) | (u == 93))
    opening = u[brackets] == 91
    inner = np.flatnonzero(opening[:-1] & ~opening[1:])
    lo, hi = brackets[inner] + 1, brackets[inner + 1]
    doc = np.searchsorted(offsets, lo - 1, "right") - 1
    bad = np.zeros(len(offsets) - 1, bool)
    crossing = doc != np.searchsorted(offsets, hi, "right") - 1
    bad[doc[crossing]] = bad[np.searchsorted(offsets, hi[crossing], "right") - 1] = True
    return lo, hi, doc, bad


def _strip_whitespace(content: bytes) -> bytes:
    if not any(w in content for w in (b" ", b"\t", b"\n", b"\r")):
        return content
    return b"?" if _SPLIT_NUMBER_RE.search(content) else content.translate(None, b" \t\n\r")


@functools.lru_cache(maxsize=1024)
def _plan(skeleton: bytes) -> tuple[int, np.ndarray] | None:
    """What each list of a file holds, read from the file with its list contents cut out.

    Returns the number of people and, per list in file order, person * 4 + section (-1: a list
    the reader ignores, -2: an empty "people" list). None when the fast path cannot vouch for
    the file: not JSON, another structure, a string value (it could hide a bracket; one in a key
    leaves a list count that does not match) or a repeated key (lists go missing).
    """
    try:
        data = json.loads(skeleton)
    except (ValueError, UnicodeDecodeError):
        return None
    people = data.get("people") if isinstance(data, dict) else None
    if not isinstance(people, list) or not all(isinstance(p, dict) for p in people):
        return None
    persons, roles = {id(p): i for i, p in enumerate(people)}, []

    def walk(node: object, role: int) -> bool:
        if isinstance(node, str):
            return False
        if isinstance(node, list):
            roles.extend([role] if not node else [])
            return all(walk(v, -1) for v in node)
        if isinstance(node, dict):
            person = persons.get(id(node))
            for key, value in node.items():
                section = _SECTION_INDEX.get(key, -1) if person is not None else -1
                if section >= 0 and value != []:
                    return False
                role = person * 4 + section if section >= 0 else -2 if value is people else -1
                if not walk(value, role):
                    return False
        return True

    return (len(people), np.array(roles, int)) if walk(data, -1) else None


def _parse_numbers(text: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Comma-separated JSON numbers, no whitespace -> float32 values, end of each, parsed ok.

    The text splits at commas and dots into digit runs; a run of <= 8 digits becomes an integer
    by SWAR arithmetic on one 8-byte word. A number I.F is then (I * 10**len(F) + F) / 10**len(F):
    exact operands below 2**53, so one correctly rounded division, as float() gives it. Numbers
    outside that (exponents, longer runs) go through float(); not a JSON number: ok is False.
    """
    buf = text + b"," + bytes(8)  # the comma ends the last number; zeros pad its word
    u = np.frombuffer(buf, np.uint8)[: len(text) + 1]
    take = np.take  # plain gathers: faster than fancy indexing
    seps = np.flatnonzero((u | 2) == 46)  # ',' (44) and '.' (46): no other byte ORs to 46
    is_dot = take(u, seps) == 46
    follows_dot = np.concatenate([[False], is_dot])  # run i (between seps i-1 and i) follows a dot
    run_start = np.concatenate([[0], seps[:-1] + 1])
    negative = take(u, run_start) == 45
    run_start += negative
    length = seps - run_start
    word = take(np.ndarray((len(buf) - 7,), "S8", buf, strides=(1,)), run_start).view("<u8")
    # The run's digits moved to the top bytes (its last digit weighs 1), then digit pairs folded
    # into 2-, 4- and 8-digit numbers (no carries: every partial number stays below its lane).
    value = (word << (64 - 8 * length).astype(np.uint64)) & np.uint64(0x0F0F0F0F0F0F0F0F)
    value = ((value * np.uint64(10 << 8 | 1)) >> np.uint64(8)) & np.uint64(0x00FF00FF00FF00FF)
    value = ((value * np.uint64(100 << 16 | 1)) >> np.uint64(16)) & np.uint64(0x0000FFFF0000FFFF)
    value = ((value * np.uint64(10**4 << 32 | 1)) >> np.uint64(32)).astype(np.float64)
    last = np.flatnonzero(~is_dot)  # each comma ends a number, and its last run
    ends, dotted = take(seps, last), take(follows_dot, last)
    whole = last - dotted  # the run of the integer digits
    n_frac = take(length, last) * dotted
    power = take(_POW10, np.minimum(n_frac, 8))
    numbers = (take(value, whole) * power + take(value, last) * dotted) / power
    sign = take(negative, whole)  # json reads "-0" as the int 0
    np.negative(numbers, out=numbers, where=sign & (dotted | (numbers != 0)))
    # JSON grammar, run by run: 1 to 8 digits (else float() decides), one dot, sign and leading
    # zero only on the integer part; any other byte, or a sign elsewhere, is caught below.
    bad = ((length - 1).astype(np.uint64) > 7) | ((is_dot | negative) & follows_dot[:-1])
    bad |= ((word & np.uint64(0xFF)) == 48) & (length > 1) & ~follows_dot[:-1]  # 1st digit 0
    ok = take(length, whole) + n_frac <= 15  # I * 10**len(F) + F stays exact
    if bad.any():
        ok[np.searchsorted(ends, seps[bad])] = False
    minus = u == 45
    if ((u - 44) > 13).any() or (u == 47).any() or np.count_nonzero(minus) != negative.sum():
        # a byte that no JSON number has (only ,-.0-9 are), or a sign inside a number
        stray = ((u - 44) > 13) | (u == 47) | (minus & (np.append(44, u[:-1]) != 44))
        ok[np.searchsorted(ends, np.flatnonzero(stray))] = False
    starts = np.concatenate([[0], ends[:-1] + 1])
    with np.errstate(over="ignore"):  # beyond float32: not ok, the strict parser says why
        for i in np.flatnonzero(~ok).tolist():  # exponents, long numbers, or no number at all
            token = text[starts[i] : ends[i]]
            if _NUMBER_RE.fullmatch(token) and np.isfinite(np.float32(number := float(token))):
                numbers[i], ok[i] = number, True
    return numbers.astype(np.float32), ends, ok
