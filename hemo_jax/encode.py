"""Encode the person crops of raw shards with a frozen DINOv2 into feature shards.

    python -m hemo_jax.encode --config configs/encode.py \\
        --config.input=RAW_SHARDS --config.output=FEATURE_SHARDS

Every input record is written to the output, in order, with ``image_features``
(float16 [T_img, D]) filled: the CLS token after the final layer norm, followed by
the mean of the patch tokens when ``features="cls+patch_mean"``. The JPEG crops are
dropped unless ``keep_crops``; a record without crops passes through with a [0, D]
array. JPEG decoding and the DINOv2 preprocessing run in a thread pool ahead of the
device; every batch has the same size (the last one padded), so the forward compiles
once, and the batch is split over the local devices (parameters replicated).

The output is written shard by shard: a killed run keeps its finished shards and a
rerun of the same command continues after them. The settings that shape the features
(weights, feature kind, dtype, preprocessing) are stored in the output's manifest, and
a rerun with other settings is refused rather than mixing two encoders in one set.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import io
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec
from ml_collections import config_flags
from PIL import Image
from PIL.JpegImagePlugin import JpegImageFile
from tqdm import tqdm

from hemo_jax.contract.schema import VideoRecord
from hemo_jax.contract.shards import MANIFEST, ShardError, ShardSet, ShardWriter, open_shards
from hemo_jax.models import convert, dinov2

FEATURES = ("cls", "cls+patch_mean")
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# float32 means float32 matmuls too (not TF32 on GPUs); bfloat16 takes the fast path.
MATMUL_PRECISION = {"float32": "float32", "bfloat16": "default"}
PRESETS = ("small", "base", "large", "giant")
PROCESSOR_CONFIG = "preprocessor_config.json"
# HF's DINOv2 image processor (BitImageProcessor) when a checkpoint does not say.
DEFAULT_SHORTEST_EDGE = 256
DEFAULT_CROP_SIZE = 224
_PIL_BICUBIC = 3


class EncodeError(ValueError):
    """A setting, checkpoint or record the encoder cannot use; says which."""


# ---------------------------------------------------------------------------------------
# Model and preprocessing


@dataclasses.dataclass(frozen=True)
class ImageSettings:
    """The DINOv2 preprocessing: resize the shorter side, centre-crop, normalise."""

    shortest_edge: int = DEFAULT_SHORTEST_EDGE
    crop_size: int = DEFAULT_CROP_SIZE
    mean: tuple[float, ...] = dinov2.IMAGENET_MEAN
    std: tuple[float, ...] = dinov2.IMAGENET_STD

    def __post_init__(self):
        if not 0 < self.crop_size <= self.shortest_edge:
            raise EncodeError(
                f"image crop_size {self.crop_size} must be positive and at most "
                f"shortest_edge {self.shortest_edge}"
            )

    def decode(self, jpeg: bytes) -> np.ndarray:
        """JPEG bytes → float32 [crop, crop, 3], normalised.

        Crops are JPEG by contract, so the JPEG decoder is called directly: the
        generic ``Image.open`` may be replaced process-wide by other libraries
        (ultralytics does), which changes its errors.
        """
        with JpegImageFile(io.BytesIO(jpeg)) as image:
            image.load()
            return dinov2.preprocess_images(
                [image],
                shortest_edge=self.shortest_edge,
                crop_size=self.crop_size,
                mean=self.mean,
                std=self.std,
            )[0]


def read_processor_config(directory: str | os.PathLike) -> ImageSettings:
    """The checkpoint's ``preprocessor_config.json`` (HF's defaults when it has none).

    Only the BitImageProcessor pipeline DINOv2 checkpoints use is reproduced; a file
    asking for anything else is refused, naming the field.
    """
    path = Path(directory) / PROCESSOR_CONFIG
    if not path.is_file():
        return ImageSettings()
    try:
        proc = json.loads(path.read_text())
    except ValueError as e:
        raise EncodeError(f"{path}: not JSON: {e}") from e
    expected = {
        "do_resize": True,
        "do_center_crop": True,
        "do_rescale": True,
        "do_normalize": True,
        "resample": _PIL_BICUBIC,
    }
    for field, want in expected.items():
        if proc.get(field, want) != want:
            raise EncodeError(f"{path}: {field}={proc[field]!r} is not supported (needs {want!r})")
    if abs(proc.get("rescale_factor", 1 / 255) - 1 / 255) > 1e-9:
        raise EncodeError(f"{path}: rescale_factor={proc['rescale_factor']!r}, expected 1/255")
    size = proc.get("size", {"shortest_edge": DEFAULT_SHORTEST_EDGE})
    crop = proc.get("crop_size", {"height": DEFAULT_CROP_SIZE, "width": DEFAULT_CROP_SIZE})
    if not isinstance(size, dict) or "shortest_edge" not in size:
        raise EncodeError(f"{path}: size={size!r}; only {{'shortest_edge': N}} is supported")
    if not isinstance(crop, dict) or crop.get("height") != crop.get("width"):
        raise EncodeError(f"{path}: crop_size={crop!r}; only square crops are supported")
    return ImageSettings(
        shortest_edge=int(size["shortest_edge"]),
        crop_size=int(crop["height"]),
        mean=tuple(float(v) for v in proc.get("image_mean", dinov2.IMAGENET_MEAN)),
        std=tuple(float(v) for v in proc.get("image_std", dinov2.IMAGENET_STD)),
    )


def build_model(
    model_config: ml_collections.ConfigDict, *, seed: int
) -> tuple[dinov2.Dinov2Model, Path | None]:
    """The DINOv2 to encode with, and its checkpoint directory (None for random weights)."""
    m = model_config
    attention = m.attention or None
    shape = {k: m[k] for k in ("hidden_size", "num_layers", "num_heads") if m[k]}
    if m.checkpoint and m.random_preset:
        raise EncodeError(
            f"model.checkpoint={m.checkpoint!r} and model.random_preset={m.random_preset!r}: "
            "give one (set the other to '')"
        )
    if m.checkpoint:
        if shape:
            raise EncodeError(f"model {sorted(shape)} shape only a random preset, not a checkpoint")
        directory = convert.resolve_checkpoint(m.checkpoint)
        return dinov2.load_dinov2(directory, attention_impl=attention), directory
    if m.random_preset not in PRESETS:
        raise EncodeError(
            f"model.random_preset={m.random_preset!r} is not one of {PRESETS}; "
            "or give model.checkpoint"
        )
    preset = getattr(dinov2.Dinov2Config, m.random_preset)(attention_impl=attention)
    try:
        cfg = dataclasses.replace(preset, **shape)
    except ValueError as e:
        raise EncodeError(f"model {shape}: {e}") from e
    logging.warning(
        "RANDOM WEIGHTS: DINOv2 %s preset %s, seed %d. These features carry no pretrained "
        "meaning; use them for tests and demos only (set model.checkpoint for real ones).",
        m.random_preset,
        shape or "as is",
        seed,
    )
    return dinov2.Dinov2Model(cfg, rngs=nnx.Rngs(seed)), None


class Encoder:
    """The jitted, data-parallel forward: preprocessed images → float16 features [B, D].

    ``batch_size`` is rounded up to a multiple of the devices used. A call returns the
    device array without waiting for it, so the host can prepare the next batch.
    """

    def __init__(
        self,
        model: dinov2.Dinov2Model,
        *,
        features: str = "cls",
        compute_dtype: str = "float32",
        batch_size: int = 32,
        num_devices: int = 0,
    ):
        if features not in FEATURES:
            raise EncodeError(f"features={features!r} is not one of {FEATURES}")
        if compute_dtype not in COMPUTE_DTYPES:
            raise EncodeError(f"compute_dtype={compute_dtype!r} not one of {list(COMPUTE_DTYPES)}")
        if batch_size < 1:
            raise EncodeError(f"batch_size={batch_size} must be positive")
        devices = jax.local_devices()
        n = num_devices or len(devices)
        if not 0 < n <= len(devices):
            raise EncodeError(f"num_devices={num_devices}: {len(devices)} local devices exist")
        self.mesh = jax.make_mesh((n,), ("data",), (AxisType.Auto,), devices=devices[:n])
        self.batch_size = -(-batch_size // n) * n
        if self.batch_size != batch_size:
            logging.info(
                "batch_size %d rounded up to %d for %d devices", batch_size, self.batch_size, n
            )
        self.features = features
        self.dim = model.cfg.hidden_size * (2 if features == "cls+patch_mean" else 1)
        self.precision = MATMUL_PRECISION[compute_dtype]
        dtype = COMPUTE_DTYPES[compute_dtype]

        graphdef, state = nnx.split(model)
        state = jax.tree.map(
            lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, state
        )
        replicated = NamedSharding(self.mesh, PartitionSpec())
        self._batch_sharding = NamedSharding(self.mesh, PartitionSpec("data"))
        self._state = jax.device_put(state, replicated)

        def forward(state: nnx.State, pixels: jax.Array) -> jax.Array:
            pooled, aux = nnx.merge(graphdef, state)(pixels.astype(dtype))
            if features == "cls+patch_mean":
                pooled = jnp.concatenate([pooled, aux["patch_mean"]], axis=-1)
            return pooled.astype(jnp.float16)

        self._forward = jax.jit(
            forward,
            in_shardings=(replicated, self._batch_sharding),
            out_shardings=self._batch_sharding,
        )

    def __call__(self, pixels: np.ndarray) -> jax.Array:
        if pixels.ndim != 4 or pixels.shape[0] != self.batch_size or pixels.shape[-1] != 3:
            raise EncodeError(f"expected images [{self.batch_size}, H, W, 3], got {pixels.shape}")
        with jax.default_matmul_precision(self.precision):
            return self._forward(self._state, jax.device_put(pixels, self._batch_sharding))


# ---------------------------------------------------------------------------------------
# Records → features


@dataclasses.dataclass
class _Pending:
    """A record read from the input whose features are not all computed yet."""

    record: VideoRecord
    features: np.ndarray
    remaining: int


def encode_records(
    records: Iterable[VideoRecord],
    encoder: Encoder,
    decode: Callable[[bytes], np.ndarray],
    *,
    threads: int,
    source: str = "input",
    on_images: Callable[[int], Any] | None = None,
) -> Iterator[tuple[VideoRecord, np.ndarray]]:
    """Yields ``(record, features float16 [len(crops), D])`` in input order.

    Crops of consecutive records share batches; ``decode`` runs in ``threads``
    threads, up to two batches ahead of the device, and the next batch is dispatched
    before the previous one is read back. ``on_images(n)`` reports finished images.
    """
    pending: collections.deque[_Pending] = collections.deque()

    def crops() -> Iterator[tuple[_Pending, int, bytes]]:
        for record in records:
            n = len(record.crops)
            entry = _Pending(record, np.zeros((n, encoder.dim), np.float16), n)
            pending.append(entry)
            for row, jpeg in enumerate(record.crops):
                yield entry, row, jpeg

    def finished() -> Iterator[tuple[VideoRecord, np.ndarray]]:
        while pending and pending[0].remaining == 0:
            entry = pending.popleft()
            yield entry.record, entry.features

    def read_back(owners: list[tuple[_Pending, int]], result: jax.Array) -> None:
        out = np.asarray(result)  # waits for the device
        for k, (entry, row) in enumerate(owners):
            entry.features[row] = out[k]
            entry.remaining -= 1
        if on_images is not None:
            on_images(len(owners))

    batch = encoder.batch_size
    lookahead = 2 * batch
    in_flight: tuple[list[tuple[_Pending, int]], jax.Array] | None = None
    owners: list[tuple[_Pending, int]] = []
    images: list[np.ndarray] = []
    window: collections.deque = collections.deque()
    stream = crops()
    with concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="decode") as pool:
        exhausted = False
        while True:
            while not exhausted and len(window) < lookahead:
                item = next(stream, None)
                if item is None:
                    exhausted = True
                else:
                    window.append((item[0], item[1], pool.submit(decode, item[2])))
            if not window:
                break
            entry, row, future = window.popleft()
            try:
                image = future.result()
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
                raise EncodeError(
                    f"{source}: video {entry.record.video_id!r} crop {row}: not a usable image: {e}"
                ) from e
            owners.append((entry, row))
            images.append(image)
            if len(owners) < batch and (window or not exhausted):
                continue
            pixels = np.stack(images)
            if len(pixels) < batch:  # the last batch: pad to the one compiled shape
                pad = np.zeros((batch - len(pixels), *pixels.shape[1:]), pixels.dtype)
                pixels = np.concatenate([pixels, pad])
            result = encoder(pixels)
            if in_flight is not None:
                read_back(*in_flight)
                yield from finished()
            in_flight, owners, images = (owners, result), [], []
        if in_flight is not None:
            read_back(*in_flight)
    # Records without crops wait only for those before them.
    yield from finished()
    if pending:  # every image was read back, so this is a bug, not bad input
        raise RuntimeError(f"{len(pending)} records left unfinished")


# ---------------------------------------------------------------------------------------
# The command


def _settings(
    config: ml_collections.ConfigDict,
    model: dinov2.Dinov2Model,
    checkpoint: Path | None,
    image: ImageSettings,
) -> dict[str, Any]:
    """What shapes the stored features; a resumed output must have been made with these."""
    model_cfg = dataclasses.asdict(model.cfg)
    model_cfg.pop("attention_impl")  # any implementation gives the same features
    weights = str(checkpoint.resolve()) if checkpoint else f"random seed {config.seed}"
    settings = {
        "encoder": "hemo_jax.encode",
        "input": str(Path(config.input).resolve()),
        "weights": weights,
        "model": model_cfg,
        "features": config.features,
        "compute_dtype": config.compute_dtype,
        "image": dataclasses.asdict(image),
        "keep_crops": config.keep_crops,
    }
    return json.loads(json.dumps(settings))  # as the manifest gives them back (lists)


def _check_resumable(output: Path, settings: dict[str, Any]) -> None:
    if not (output / MANIFEST).exists():
        return
    created = open_shards(output, allow_incomplete=True).manifest.get("created", {})
    try:
        before = json.loads(created.get("description", ""))
    except ValueError:
        before = None
    if not isinstance(before, dict) or before.get("encoder") != "hemo_jax.encode":
        raise EncodeError(
            f"{output}: holds a shard set not written by hemo_jax.encode; "
            "choose another output or pass --config.overwrite=True"
        )
    changed = sorted(k for k in settings.keys() | before.keys() if settings.get(k) != before.get(k))
    if changed:
        diffs = "; ".join(f"{k}: {before.get(k)!r} -> {settings.get(k)!r}" for k in changed)
        raise EncodeError(
            f"{output}: was encoded with other settings ({diffs}); rerun with the same "
            "config to resume it, or pass --config.overwrite=True"
        )


def run(config: ml_collections.ConfigDict) -> ShardSet:
    """Encodes ``config.input`` into ``config.output`` (resuming it); opens the result."""
    if not config.input or not config.output:
        raise EncodeError("give --config.input=RAW_SHARDS and --config.output=FEATURE_SHARDS")
    source, output = Path(config.input), Path(config.output)
    if source.resolve() == output.resolve():
        raise EncodeError(f"{output}: the output must not be the input")
    src = open_shards(source)

    model, checkpoint = build_model(config.model, seed=config.seed)
    image = read_processor_config(checkpoint) if checkpoint else ImageSettings()
    image = dataclasses.replace(
        image,
        shortest_edge=config.image.shortest_edge or image.shortest_edge,
        crop_size=config.image.crop_size or image.crop_size,
    )
    encoder = Encoder(
        model,
        features=config.features,
        compute_dtype=config.compute_dtype,
        batch_size=config.batch_size,
        num_devices=config.num_devices,
    )
    settings = _settings(config, model, checkpoint, image)
    if not config.overwrite:
        _check_resumable(output, settings)
    logging.info(
        "DINOv2 %s, %d layers x %d wide, %s features (D=%d), %s, %d² crops, batch %d over %d "
        "device(s)",
        settings["weights"],
        model.cfg.num_layers,
        model.cfg.hidden_size,
        config.features,
        encoder.dim,
        config.compute_dtype,
        image.crop_size,
        encoder.batch_size,
        encoder.mesh.size,
    )

    with ShardWriter(
        output,
        records_per_shard=config.records_per_shard,
        resume=not config.overwrite,
        overwrite=config.overwrite,
        description=json.dumps(settings, sort_keys=True),
    ) as writer:
        done = writer.video_ids
        todo = [i for i, info in enumerate(src.infos) if info.video_id not in done]
        # A record whose crops were dropped cannot get features matching its crop_frames.
        cropless = [
            src.infos[i].video_id
            for i in todo
            if src.infos[i].num_crops == 0 and src.infos[i].num_images > 0
        ]
        if cropless:
            raise EncodeError(
                f"{source}: {len(cropless)} records list crop_frames but hold no crops "
                f"(first: {cropless[:5]}); encode from the raw shards that still hold them"
            )
        total = sum(src.infos[i].num_crops for i in todo)
        logging.info(
            "%s: %d records stored, %d to encode (%d images)", output, len(done), len(todo), total
        )
        start = time.perf_counter()
        threads = config.decode_threads or len(os.sched_getaffinity(0))
        with tqdm(
            total=total, unit="img", desc="encode", disable=not config.progress, dynamic_ncols=True
        ) as bar:
            stream = encode_records(
                (src.read(i, skip=("image_features",)) for i in todo),
                encoder,
                image.decode,
                threads=threads,
                source=str(source),
                on_images=bar.update,
            )
            for record, features in stream:
                crops = record.crops if config.keep_crops else []
                writer.add(dataclasses.replace(record, crops=crops, image_features=features))
        seconds = time.perf_counter() - start
    logging.info(
        "%s: encoded %d records, %d images in %.1f s (%.1f images/s, compilation included)",
        output,
        len(todo),
        total,
        seconds,
        total / max(seconds, 1e-9),
    )
    return open_shards(output)


_CONFIG = config_flags.DEFINE_config_file("config", None, "Encode config (configs/encode.py).")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        run(_CONFIG.value)
    except (EncodeError, ShardError, convert.ConversionError, FileNotFoundError) as e:
        # Bad settings, input or checkpoint: the message names it; no traceback needed.
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
