"""grain input pipeline: shard set → windowed, normalised, padded batches → device arrays.

The order is fixed (as in maxtext and the flax examples): a source of selected
items → shuffle(seed) → repeat → per-process slice → map (read, decode,
normalise, window, pad) → to_iter_dataset → batch → mp_prefetch → global
arrays. Selection uses the manifest only (``splits.select``), never decoding;
the source holds indices into that selection and records are read inside the
map, so reading and decoding run on grain's threads and worker processes.

Keypoint offsets are per source-frame step (``keypoint_frames``), so a stride or frames
missing between rows do not scale them. Training yields one random window of
``max_frames`` (sampled every ``frame_stride`` rows) per record. Evaluation yields, per
record, either ``eval_windows`` evenly spaced windows or (``eval_windows=0``) the whole
sequence padded to the longest selected one; each element carries ``video_index`` and
``window_index`` so predictions can be averaged per video, and a padded last batch has
``valid=False`` rows, so (sum, count) metrics are exact. Image features follow the
keypoint window: the rows whose ``crop_frames`` fall inside the window's source-frame
range, evenly thinned to ``image_max``. Text stays out of the arrays;
``text_fn(record)`` may add fixed-shape token arrays.

Batches are dicts of numpy arrays, or of global ``jax.Array`` s sharded over a
mesh's data axis (``jax.make_array_from_process_local_data``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import grain
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from hemo_jax.contract import keypoint_layout
from hemo_jax.contract.schema import VideoRecord
from hemo_jax.contract.shards import ShardSet, open_shards
from hemo_jax.data.splits import Selection, select

NECK, R_SHOULDER, L_SHOULDER = 1, 2, 5  # OpenPose BODY_25
TextFn = Callable[[VideoRecord], dict[str, np.ndarray]]
Batch = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    batch_size: int = 8  # global: each of P processes makes batch_size / P
    max_frames: int = 512  # keypoint rows per window
    frame_stride: int = 1  # take every k-th keypoint row: a window spans max_frames * k rows
    image_dim: int | None = None  # width D of image features; None leaves images out
    image_max: int = 64  # image-feature rows per window
    eval_windows: int = 3  # windows per record in evaluation; 0 = the whole sequence
    splits: tuple[str, ...] = ("train",)
    # A validation split carved out of val_from, subject-disjoint (splits.select).
    val_fraction: float = 0.0
    val_from: tuple[str, ...] = ("train",)
    pseudo_pool: str = "none"  # none | unlabeled | test: pseudo-labelled pool (training)
    min_pseudo_confidence: float = 0.0
    confidence_weighting: bool = True  # pool records weighted by labeler confidence
    balance_classes: bool = False  # class-weighted loss
    balanced_sampling: bool = False  # repeat minority-class records instead
    hold_out: tuple[int, int] | None = None  # (k, K): fold k of the labelled records left out
    seed: int = 0
    num_epochs: int | None = None  # training: None repeats forever
    num_workers: int = 0  # grain worker processes; 0 reads in this process
    worker_buffer_size: int = 2  # batches each worker keeps ready
    read_threads: int = 2  # threads decoding elements inside each process
    prefetch_elements: int = 16

    def __post_init__(self):
        for name in ("batch_size", "max_frames", "frame_stride", "image_max", "read_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"PipelineConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_windows < 0 or self.num_workers < 0:
            raise ValueError("PipelineConfig.eval_windows and num_workers must be >= 0")


def _shoulders(keypoints: np.ndarray):
    """Neck presence and position, shoulder midpoint, width and presence, per frame."""
    joints = keypoints[:, [NECK, R_SHOULDER, L_SHOULDER]].astype(np.float32)  # [T, 3, 3]
    present = joints[..., 2] > 0
    right, left = joints[:, 1, :2], joints[:, 2, :2]
    width = np.linalg.norm(right - left, axis=-1)
    both = present[:, 1] & present[:, 2] & (width > 0)
    return present[:, 0], joints[:, 0, :2], 0.5 * (right + left), width, both


def _sequence_reference(keypoints: np.ndarray, frame_size: Sequence[int]):
    """Fallback centre and the reference shoulder width, from a whole sequence."""
    has_neck, neck, mid, width, both = _shoulders(keypoints)
    if has_neck.any():
        centre = np.median(neck[has_neck], axis=0)
    elif both.any():
        centre = np.median(mid[both], axis=0)
    else:
        centre = np.array([frame_size[1] / 2, frame_size[0] / 2])
    # With no shoulders anywhere, the frame's larger side keeps values near unit range.
    scale = float(np.median(width[both])) if both.any() else float(max(frame_size))
    return centre.astype(np.float32), scale


def _normalized_planes(keypoints: np.ndarray, frame_size: Sequence[int], reference: np.ndarray):
    """Normalised x, y and conf as separate contiguous float32 [T, K] planes
    (arithmetic on interleaved (x, y, c) triples is ~3x slower in numpy)."""
    centre_ref, scale_ref = _sequence_reference(reference, frame_size)
    has_neck, neck, mid, width, both = _shoulders(keypoints)
    centre = np.where(both[:, None], mid, centre_ref)
    centre = np.where(has_neck[:, None], neck, centre)
    scale = np.where(both, np.clip(width, 0.5 * scale_ref, 2.0 * scale_ref), scale_ref)
    x, y, c = (np.ascontiguousarray(keypoints[..., i], dtype=np.float32) for i in range(3))
    factor = (c > 0) / scale[:, None].astype(np.float32)  # missing points become exactly 0
    x -= centre[:, :1]
    x *= factor
    y -= centre[:, 1:]
    y *= factor
    return x, y, c


def _offset_planes(x: np.ndarray, y: np.ndarray, c: np.ndarray, frames: np.ndarray):
    # Per source-frame step: the change between two rows divided by the frames between
    # them. Rows taken every frame_stride-th, or with frames missing between them (no
    # skeleton there), then give the same offset for the same motion as adjacent
    # frames; across a gap that is the mean motion over it, which is the best estimate
    # without the frames and cannot pass a slow drift over a long gap off as a jump.
    both = (c[1:] > 0) & (c[:-1] > 0)
    factor = both / np.diff(frames).astype(np.float32)[:, None]
    dx, dy = np.zeros_like(x), np.zeros_like(y)
    np.subtract(x[1:], x[:-1], out=dx[1:])
    np.subtract(y[1:], y[:-1], out=dy[1:])
    dx[1:] *= factor
    dy[1:] *= factor
    return dx, dy


def normalize_keypoints(
    keypoints: np.ndarray,
    frame_size: Sequence[int],
    *,
    reference: np.ndarray | None = None,
) -> np.ndarray:
    """(x, y, conf) pixels [T, K, 3] → coordinates centred on the neck, in shoulder widths.

    Per frame: the centre is the neck, else the shoulders' midpoint, else the
    median neck of ``reference`` (the whole sequence; default ``keypoints``);
    the scale is the shoulder width, clipped to [0.5, 2] × the reference's
    median width (a half-occluded shoulder can collapse it), else that median.
    Confidence is kept; missing points (confidence 0) stay exactly 0.
    """
    ref = keypoints if reference is None else reference
    return np.stack(_normalized_planes(keypoints, frame_size, ref), axis=-1)


def frame_offsets(normalized: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Inter-row deltas [T, K, 2] of normalised (x, y) per source-frame step: divided by
    the difference of ``frames`` (each row's source frame index); 0 in the first row
    and wherever the point is missing in either row."""
    planes = (np.ascontiguousarray(normalized[..., i], dtype=np.float32) for i in range(3))
    return np.stack(_offset_planes(*planes, np.asarray(frames)), axis=-1)


def window_starts(num_rows: int, span: int, windows: int) -> list[int]:
    """Start rows of ``windows`` evenly spaced windows of ``span`` rows (one if it fits)."""
    if num_rows <= span or windows <= 1:
        return [0]
    return sorted({int(s) for s in np.linspace(0, num_rows - span, windows).round()})


class _MakeElement:
    """Reads and decodes one record and builds one (window) element. Picklable."""

    def __init__(self, shards, selection, config, frames, text_fn):
        self.shards, self.selection, self.config = shards, selection, config
        self.frames, self.text_fn = frames, text_fn
        self.skip = ("crops", "transcript", "reasoning") if text_fn is None else ("crops",)
        if config.image_dim is None:
            self.skip += ("image_features",)

    def record(self, pos: int) -> VideoRecord:
        return self.shards.read(int(self.selection.indices[pos]), skip=self.skip)

    def __call__(self, record: VideoRecord, pos: int, start: int, window: int, valid: bool):
        c, sel = self.config, self.selection
        rows = slice(start, start + self.frames * c.frame_stride, c.frame_stride)
        kp = record.keypoints[rows]
        n = len(kp)
        x, y, conf = _normalized_planes(kp, record.frame_size, record.keypoints)
        keypoints = np.zeros((self.frames, *kp.shape[1:]), np.float32)
        offsets = np.zeros((self.frames, kp.shape[1], 2), np.float32)
        for i, plane in enumerate((x, y, conf)):
            keypoints[:n, :, i] = plane
        for i, plane in enumerate(_offset_planes(x, y, conf, record.keypoint_frames[rows])):
            offsets[:n, :, i] = plane
        element = {
            "keypoints": keypoints,
            "keypoint_offsets": offsets,
            "keypoint_mask": np.arange(self.frames) < n,
            "label": np.int32(record.label),
            "pseudo_label": np.int32(record.pseudo_label),
            "pseudo_confidence": np.float32(record.pseudo_confidence),
            "target": np.int32(sel.target[pos]),
            "sample_weight": np.float32(sel.weight[pos] if valid else 0.0),
            "video_index": np.int32(sel.indices[pos]),
            "window_index": np.int32(window),
            "valid": np.bool_(valid),
        }
        if c.image_dim is not None:
            element.update(self._images(record, record.keypoint_frames[rows]))
        if self.text_fn is not None:
            element.update(self.text_fn(record))
        return element

    def _images(self, record: VideoRecord, frames: np.ndarray) -> dict[str, np.ndarray]:
        c = self.config
        feats = record.image_features
        if feats is None or len(frames) == 0:  # widths were checked from the manifest
            feats = np.zeros((0, c.image_dim), np.float32)
        else:
            lo = np.searchsorted(record.crop_frames, frames[0], side="left")
            hi = np.searchsorted(record.crop_frames, frames[-1], side="right")
            feats = feats[lo:hi]
            if len(feats) > c.image_max:  # evenly thinned, first and last kept
                feats = feats[np.linspace(0, len(feats) - 1, c.image_max).round().astype(int)]
        out = np.zeros((c.image_max, c.image_dim), np.float32)
        out[: len(feats)] = feats
        return {"image_features": out, "image_mask": np.arange(c.image_max) < len(feats)}


class _TrainMap:
    def __init__(self, make: _MakeElement):
        self.make = make

    def __call__(self, pos: int, rng: np.random.Generator) -> Batch:
        record = self.make.record(pos)
        span = self.make.frames * self.make.config.frame_stride
        start = (
            int(rng.integers(0, record.num_frames - span + 1)) if record.num_frames > span else 0
        )
        return self.make(record, pos, start, 0, True)


class _EvalMap:
    def __init__(self, make: _MakeElement):
        self.make = make

    def __call__(self, item: np.ndarray) -> Batch:
        pos, start, window, valid = (int(v) for v in item)
        return self.make(self.make.record(pos), pos, start, window, bool(valid))


def _stack_padded(elements: Sequence[Batch], *, batch_size: int) -> Batch:
    """Stacks a batch; a short last batch is filled with copies marked invalid."""
    filler = {**elements[-1], "valid": np.bool_(False), "sample_weight": np.float32(0.0)}
    elements = [*elements, *[filler] * (batch_size - len(elements))]
    return {k: np.stack([e[k] for e in elements]) for k in elements[0]}


def _ensure_absl_flags_parsed() -> None:
    """grain's worker start-up reads absl flags; outside absl.app.run they are
    unparsed and workers die with UnparsedFlagAccessError. Marking them parsed
    keeps every flag at its default and is what absl.app.run does too."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _check_image_features(shards: ShardSet, sel: Selection, config: PipelineConfig) -> None:
    """From the manifest, before any record is read: the image branch needs features of
    its width, and a shard set where no selected record has any is not encoded yet."""
    infos = [shards.infos[i] for i in sel.indices]
    if all(info.feature_dim is None for info in infos):
        raise ValueError(
            f"{shards.root}: no record of splits {tuple(config.splits)} has image_features; "
            "the image branch reads the features hemo_jax.encode adds to a shard set"
        )
    for info in infos:
        if info.feature_dim not in (None, config.image_dim):
            raise ValueError(
                f"record {info.video_id!r}: image_features width {info.feature_dim}, "
                f"PipelineConfig.image_dim is {config.image_dim}"
            )


def batch_spec(
    config: PipelineConfig, *, text_length: int | None = None
) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes and dtypes of a global training batch (the loader's, for a training
    ``config``), without reading data: enough to compile the step before a run.
    ``text_length`` is the text hook's token count (None: no text branch)."""
    b, f, k = config.batch_size, config.max_frames, keypoint_layout.NUM_KEYPOINTS
    spec = {
        "keypoints": ((b, f, k, 3), np.float32),
        "keypoint_offsets": ((b, f, k, 2), np.float32),
        "keypoint_mask": ((b, f), np.bool_),
        **{key: ((b,), np.int32) for key in ("label", "pseudo_label", "target")},
        **{key: ((b,), np.float32) for key in ("pseudo_confidence", "sample_weight")},
        **{key: ((b,), np.int32) for key in ("video_index", "window_index")},
        "valid": ((b,), np.bool_),
    }
    if config.image_dim is not None:
        spec["image_features"] = ((b, config.image_max, config.image_dim), np.float32)
        spec["image_mask"] = ((b, config.image_max), np.bool_)
    if text_length is not None:
        spec["text_ids"] = ((b, text_length), np.int32)
        spec["text_mask"] = ((b, text_length), np.bool_)
    return {key: jax.ShapeDtypeStruct(shape, dtype) for key, (shape, dtype) in spec.items()}


def make_dataset(
    shards: ShardSet | str | os.PathLike,
    config: PipelineConfig,
    *,
    train: bool,
    process_index: int | None = None,
    process_count: int | None = None,
    text_fn: TextFn | None = None,
) -> grain.IterDataset:
    """The grain dataset of numpy batches for this process."""
    shards = shards if isinstance(shards, ShardSet) else open_shards(shards)
    p = jax.process_index() if process_index is None else process_index
    n = jax.process_count() if process_count is None else process_count
    if config.batch_size % n:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by {n} processes")
    local_batch = config.batch_size // n
    sel: Selection = select(
        shards.infos,
        splits=config.splits,
        val_fraction=config.val_fraction,
        val_from=config.val_from,
        pseudo_pool=config.pseudo_pool,
        min_pseudo_confidence=config.min_pseudo_confidence,
        confidence_weighting=config.confidence_weighting,
        balance_classes=config.balance_classes,
        balanced_sampling=config.balanced_sampling,
        hold_out=config.hold_out,
    )
    if config.image_dim is not None:
        _check_image_features(shards, sel, config)
    if train:
        make = _MakeElement(shards, sel, config, config.max_frames, text_fn)
        ds = grain.MapDataset.source(np.arange(len(sel.indices))).shuffle(seed=config.seed)
        ds = ds.repeat(config.num_epochs)
        if config.num_epochs is not None:  # equal whole batches on every process
            ds = ds[: len(ds) // config.batch_size * config.batch_size]
        # random_map before the slice: an element's window is drawn from its global
        # position, so every process count yields the same global batches (lazy:
        # each process still reads only its own slice).
        ds = ds.random_map(_TrainMap(make), seed=config.seed)[p::n]
    else:
        rows = [shards.infos[i].num_frames for i in sel.indices]
        stride = config.frame_stride
        if config.eval_windows == 0:
            frames = max(1, max(-(-r // stride) for r in rows))
        else:
            frames = config.max_frames
        items = [
            (pos, start, w, 1)
            for pos, r in enumerate(rows)
            for w, start in enumerate(window_starts(r, frames * stride, config.eval_windows))
        ]
        items += [(*items[0][:3], 0)] * (-len(items) % n)  # same count on every process
        make = _MakeElement(shards, sel, config, frames, text_fn)
        ds = grain.MapDataset.source(np.asarray(items, np.int64))[p::n].map(_EvalMap(make))
    read = grain.ReadOptions(
        num_threads=config.read_threads, prefetch_buffer_size=config.prefetch_elements
    )
    it = ds.to_iter_dataset(read)
    if train:
        it = it.batch(local_batch, drop_remainder=True)
    else:
        it = it.batch(
            local_batch, batch_fn=functools.partial(_stack_padded, batch_size=local_batch)
        )
    if config.num_workers > 0:
        _ensure_absl_flags_parsed()
        it = it.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=config.num_workers, per_worker_buffer_size=config.worker_buffer_size
            )
        )
    return it


class Loader:
    """Iterates batches; with a mesh, as global arrays sharded over its data axis.

    ``get_state()`` / ``set_state()`` save and restore the position (grain
    iterator state), so a resumed run sees the same batches.
    """

    def __init__(
        self,
        dataset: grain.IterDataset,
        *,
        mesh: Mesh | None = None,
        data_axis: str | tuple[str, ...] = "data",
    ):
        self.dataset = dataset
        self.iterator = iter(dataset)
        self.sharding = None if mesh is None else NamedSharding(mesh, PartitionSpec(data_axis))

    def __iter__(self) -> Loader:
        return self

    def __next__(self) -> Batch:
        batch = next(self.iterator)
        if self.sharding is None:
            return batch
        return {
            k: jax.make_array_from_process_local_data(self.sharding, np.asarray(v))
            for k, v in batch.items()
        }

    def get_state(self) -> dict[str, Any]:
        return self.iterator.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self.iterator.set_state(state)

    def close(self) -> None:
        close = getattr(self.iterator, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_loader(
    shards: ShardSet | str | os.PathLike,
    config: PipelineConfig,
    *,
    train: bool,
    mesh: Mesh | None = None,
    data_axis: str | tuple[str, ...] = "data",
    process_index: int | None = None,
    process_count: int | None = None,
    text_fn: TextFn | None = None,
) -> Loader:
    """The pipeline for training (``train=True``) or evaluation, as a Loader."""
    if mesh is not None:
        axes = (data_axis,) if isinstance(data_axis, str) else data_axis
        devices = int(np.prod([mesh.shape[a] for a in axes]))
        if config.batch_size % devices:
            raise ValueError(f"batch_size {config.batch_size} not divisible by {devices} devices")
    dataset = make_dataset(
        shards,
        config,
        train=train,
        process_index=process_index,
        process_count=process_count,
        text_fn=text_fn,
    )
    return Loader(dataset, mesh=mesh, data_axis=data_axis)
