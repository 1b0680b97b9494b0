"""The record contract: one VideoRecord per video, encoded without pickle.

A record is a msgpack map. Arrays travel as ``{"dtype", "shape", "data"}`` with
raw little-endian bytes, so decoding needs no code execution and every dtype
and shape is checked against the table below, on write and on read. This
module is the only one shared by the JAX side (``hemo_jax``) and the PyTorch
side (``preprocess``); it imports numpy and msgpack only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import msgpack
import numpy as np

from hemo_jax.contract.keypoint_layout import NUM_KEYPOINTS

# 2: keypoints float32. Version 1 stored them as float16, which moved real OpenPose points
# (1280x720) by up to 0.5 px: the size of the micro-movements the offsets measure.
SCHEMA_VERSION = 2

SPLITS = ("train", "val", "test", "unlabeled")
LABELS = (-1, 0, 1)  # unknown, lose/negative, win/positive

# Array fields: dtype and shape, where None is a free dimension. Names of
# dimensions tie fields together: every "T" is the same length, and so on.
ARRAY_FIELDS: dict[str, tuple[np.dtype, tuple[str | int, ...]]] = {
    "keypoints": (np.dtype(np.float32), ("T", NUM_KEYPOINTS, 3)),
    "keypoint_frames": (np.dtype(np.int32), ("T",)),
    "crop_frames": (np.dtype(np.int32), ("T_img",)),
    "boxes": (np.dtype(np.float32), ("T_img", 4)),
    "image_features": (np.dtype(np.float16), ("T_img", "D")),
}
OPTIONAL_ARRAYS = ("image_features",)


class SchemaError(ValueError):
    """A record that does not satisfy the contract; names the field and video."""

    def __init__(self, field: str, video_id: str, message: str):
        super().__init__(f"record {video_id!r}: field {field!r}: {message}")
        self.field = field
        self.video_id = video_id


@dataclasses.dataclass
class VideoRecord:
    """One video, the unit that is classified. See DESIGN.md for the table."""

    video_id: str
    subject_id: str
    source: str
    split: str
    fps: float
    frame_size: tuple[int, int]  # (H, W) of the source video
    keypoints: np.ndarray  # float32 [T, 137, 3]: x px, y px, confidence
    keypoint_frames: np.ndarray  # int32 [T]
    label: int = -1
    pseudo_label: int = -1
    pseudo_confidence: float = 0.0
    crops: list[bytes] = dataclasses.field(default_factory=list)  # JPEG bytes [T_img]
    crop_frames: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0,), np.int32))
    boxes: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 4), np.float32))
    image_features: np.ndarray | None = None  # float16 [T_img, D]
    transcript: str = ""
    reasoning: str = ""
    # What made the keypoints: "openpose" (its JSON or binary), a pose estimator's name
    # (preprocess.keypoints.wholebody), or "" (unknown, or no keypoint rows). A model learns
    # one source's points, so predicting on another's is refused.
    keypoint_source: str = ""
    schema_version: int = SCHEMA_VERSION

    @property
    def num_frames(self) -> int:
        return int(self.keypoints.shape[0])

    @property
    def num_images(self) -> int:
        return int(self.crop_frames.shape[0])


_SCALARS: dict[str, type | tuple[type, ...]] = {
    "schema_version": int,
    "video_id": str,
    "subject_id": str,
    "source": str,
    "split": str,
    "label": int,
    "pseudo_label": int,
    "pseudo_confidence": (int, float),
    "fps": (int, float),
    "transcript": str,
    "reasoning": str,
    "keypoint_source": str,
}


def _all_finite(a: np.ndarray) -> bool:
    if a.dtype == np.float16:
        # float16 NaN and infinity have all exponent bits set; testing the bits is ~3x
        # faster than np.isfinite, which converts every value (this runs on every read).
        return not np.any((a.view(np.uint16) & 0x7C00) == 0x7C00)
    return bool(np.isfinite(a).all())


def version_problem(version: object) -> str | None:
    """Why records (or a shard set) of schema ``version`` cannot be read, with what to do;
    None when this code reads them."""
    if version == SCHEMA_VERSION:
        return None
    if version == 1:
        return (
            "schema version 1 stored keypoints as float16 (up to 0.5 px off); this code reads "
            f"version {SCHEMA_VERSION} (float32): rebuild the shard set with `python -m "
            "preprocess run` and encode it again with `python -m hemo_jax.encode`"
        )
    return f"version {version!r}, expected {SCHEMA_VERSION}"


def validate(record: VideoRecord) -> None:
    """Raises SchemaError naming the first field that breaks the contract."""
    vid = record.video_id if isinstance(record.video_id, str) else repr(record.video_id)

    def fail(field: str, message: str) -> None:
        raise SchemaError(field, vid, message)

    if problem := version_problem(record.schema_version):
        fail("schema_version", problem)
    for name, kind in _SCALARS.items():
        value = getattr(record, name)
        if not isinstance(value, kind) or isinstance(value, bool):
            fail(name, f"expected {kind}, got {type(value).__name__}")
    if not record.video_id:
        fail("video_id", "empty")
    if record.split not in SPLITS:
        fail("split", f"{record.split!r} not one of {SPLITS}")
    if record.label not in LABELS:
        fail("label", f"{record.label!r} not one of {LABELS}")
    if record.pseudo_label not in LABELS:
        fail("pseudo_label", f"{record.pseudo_label!r} not one of {LABELS}")
    if not 0.0 <= record.pseudo_confidence <= 1.0:
        fail("pseudo_confidence", f"{record.pseudo_confidence!r} outside [0, 1]")
    if not record.fps > 0:
        fail("fps", f"{record.fps!r} is not positive")
    size = record.frame_size
    if (
        not isinstance(size, tuple | list)
        or len(size) != 2
        or not all(isinstance(s, int) and s > 0 for s in size)
    ):
        fail("frame_size", f"expected (H, W) positive ints, got {size!r}")

    dims: dict[str, int] = {}
    for name, (dtype, shape) in ARRAY_FIELDS.items():
        value = getattr(record, name)
        if value is None and name in OPTIONAL_ARRAYS:
            continue
        if not isinstance(value, np.ndarray):
            fail(name, f"expected a numpy array, got {type(value).__name__}")
        if value.dtype != dtype:
            fail(name, f"dtype {value.dtype}, expected {dtype}")
        if value.ndim != len(shape):
            fail(name, f"shape {value.shape}, expected rank {len(shape)} {shape}")
        for axis, (want, got) in enumerate(zip(shape, value.shape, strict=True)):
            if isinstance(want, int):
                if got != want:
                    fail(name, f"shape {value.shape}, axis {axis} must be {want}")
            elif dims.setdefault(want, got) != got:
                fail(name, f"shape {value.shape}: {want}={got} but other fields have {dims[want]}")
    if not isinstance(record.crops, list) or not all(isinstance(c, bytes) for c in record.crops):
        fail("crops", "expected a list of JPEG bytes")
    if record.crops and len(record.crops) != record.num_images:
        fail("crops", f"{len(record.crops)} crops but {record.num_images} crop_frames")
    # Windows are cut by source frame index, so both frame columns must be ordered.
    for name in ("keypoint_frames", "crop_frames"):
        frames = getattr(record, name)
        if frames.size and (frames[0] < 0 or np.any(np.diff(frames) <= 0)):
            fail(name, "frame indices must be non-negative and strictly increasing")
    if not _all_finite(record.keypoints):
        fail("keypoints", "contains NaN or infinity")
    if record.image_features is not None and not _all_finite(record.image_features):
        fail("image_features", "contains NaN or infinity")


def _pack_array(a: np.ndarray) -> dict[str, Any]:
    return {"dtype": a.dtype.str, "shape": list(a.shape), "data": a.tobytes()}


def _unpack_array(name: str, video_id: str, obj: Any) -> np.ndarray:
    dtype, shape = ARRAY_FIELDS[name]
    if not isinstance(obj, dict) or set(obj) != {"dtype", "shape", "data"}:
        raise SchemaError(name, video_id, "not an encoded array")
    try:
        got = np.dtype(obj["dtype"])
    except TypeError as e:
        raise SchemaError(name, video_id, f"unknown dtype {obj['dtype']!r}") from e
    if got != dtype:
        raise SchemaError(name, video_id, f"dtype {got}, expected {dtype}")
    if not isinstance(obj["shape"], list):
        raise SchemaError(name, video_id, f"shape {obj['shape']!r} is not a list")
    dims = tuple(obj["shape"])
    if len(dims) != len(shape) or any(not isinstance(d, int) or d < 0 for d in dims):
        raise SchemaError(name, video_id, f"shape {dims}, expected rank {len(shape)} {shape}")
    data = obj["data"]
    if not isinstance(data, bytes):
        raise SchemaError(name, video_id, f"data is {type(data).__name__}, expected bytes")
    if len(data) != int(np.prod(dims)) * dtype.itemsize:
        raise SchemaError(name, video_id, f"{len(data)} bytes do not fill shape {dims}")
    return np.frombuffer(data, dtype=dtype).reshape(dims)


def encode_record(record: VideoRecord) -> bytes:
    """Validates and serialises one record."""
    validate(record)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(VideoRecord):
        value = getattr(record, f.name)
        if f.name in ARRAY_FIELDS:
            out[f.name] = None if value is None else _pack_array(np.ascontiguousarray(value))
        elif f.name == "frame_size":
            out[f.name] = [int(v) for v in value]
        else:
            out[f.name] = value
    return msgpack.packb(out, use_bin_type=True)


_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(VideoRecord))
# Fields a reader may leave at their defaults: the bulky or text-only ones. The
# others are tied together by shape (crop_frames, boxes) or needed by every reader.
SKIPPABLE = frozenset({"crops", "image_features", "transcript", "reasoning"})


def decode_record(data: bytes, *, skip: Iterable[str] = ()) -> VideoRecord:
    """Parses and validates one record; fields in ``skip`` are left at defaults.

    Skipping ``crops`` saves building the JPEG list when only features are
    needed; ``skip`` may name only fields in ``SKIPPABLE``.
    """
    skipped = set(skip)
    if skipped - SKIPPABLE:
        bad = sorted(skipped - SKIPPABLE)
        raise ValueError(f"cannot skip {bad}; skippable fields: {sorted(SKIPPABLE)}")
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException) as e:  # all msgpack parse errors
        raise SchemaError("<record>", "?", f"not a msgpack record: {e}") from e
    if not isinstance(obj, dict):
        raise SchemaError("<record>", "?", f"expected a map, got {type(obj).__name__}")
    vid = obj.get("video_id", "?")
    vid = vid if isinstance(vid, str) else repr(vid)
    if problem := version_problem(obj.get("schema_version")):
        raise SchemaError("schema_version", vid, problem)
    unknown = sorted(str(k) for k in set(obj) - _FIELD_NAMES)  # keys may be bytes
    if unknown:
        raise SchemaError(unknown[0], vid, f"unknown field (all unknown: {unknown})")
    missing = _FIELD_NAMES - set(obj)
    if missing:
        raise SchemaError(sorted(missing)[0], vid, f"missing (all missing: {sorted(missing)})")
    kwargs: dict[str, Any] = {}
    for name in _FIELD_NAMES - skipped:
        value = obj[name]
        if name in ARRAY_FIELDS:
            if value is None and name in OPTIONAL_ARRAYS:
                kwargs[name] = None
            else:
                kwargs[name] = _unpack_array(name, vid, value)
        elif name == "frame_size":
            kwargs[name] = tuple(value) if isinstance(value, list) else value
        else:
            kwargs[name] = value
    record = VideoRecord(**kwargs)
    validate(record)
    return record
