"""What a trained run needs of a new video, read from its workdir as files.

The torch side never imports the JAX side beyond ``hemo_jax.contract``: a training
workdir is read through the JSON its checkpoints hold (``checkpoints/<step>/config``),
a stacked one through its ``stack.json``, and the shard sets they trained on through
their manifests. From those come the branches the model reads, the keypoint source its
training records were made with (``VideoRecord.keypoint_source``), the encoder settings
of its image features (the feature shard set's manifest description, written by
``hemo_jax.encode``) and the preprocessing settings of its raw shards
(``preprocess_status.json``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from hemo_jax.contract.shards import MANIFEST

STACK_FILE = "stack.json"  # hemo_jax.experiment.stack.STACK_FILE
STATUS_FILE = "preprocess_status.json"  # preprocess.run.STATUS_FILE


class TrainedRunError(ValueError):
    """A workdir that is not a trained run this command can use; names the file."""


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    """A trained model as ``preprocess predict`` sees it."""

    workdir: Path
    kind: str  # "trained" (one training workdir) or "stacked"
    branches: tuple[str, ...]  # keypoints, image, text
    shards: Path  # the shard set it trained on
    checkpoints: dict[str, int]  # workdir → the step ``checkpoint`` chooses, per model
    keypoint_sources: frozenset[str]  # of the training records with keypoint rows
    encoder: dict[str, Any] | None  # hemo_jax.encode settings of the image features
    preprocess: dict[str, Any] | None  # preprocess run settings of the raw shards
    uses_labeler: bool  # a stacked fusion with the labeler's verdict as a feature

    @property
    def model(self) -> str:
        return f"{self.kind} {'+'.join(self.branches)}"


def _steps(workdir: Path) -> list[int]:
    root = workdir / "checkpoints"
    steps = sorted(
        int(p.name)
        for p in root.glob("*")
        if p.name.isdigit() and (p / "config").is_dir() and not p.name.startswith(".")
    )
    if not steps:
        raise TrainedRunError(f"{workdir}: no checkpoint with a config under {root}")
    return steps


def _config(workdir: Path) -> tuple[dict[str, Any], int]:
    step = _steps(workdir)[-1]
    path = workdir / "checkpoints" / str(step) / "config" / "metadata"
    try:
        return json.loads(path.read_text(encoding="utf-8")), step
    except (OSError, json.JSONDecodeError) as e:
        raise TrainedRunError(f"{path}: the run's config is not readable JSON ({e})") from e


def _checkpoint_step(workdir: Path, checkpoint: str) -> int:
    steps = _steps(workdir)
    if checkpoint.isdigit():
        if int(checkpoint) not in steps:
            raise TrainedRunError(f"{workdir}: no checkpoint at step {checkpoint} (has {steps})")
        return int(checkpoint)
    return steps[-1]  # latest; "best" is resolved by hemo_jax.predict and named there


def _manifest(shards: Path) -> dict[str, Any]:
    path = shards / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise TrainedRunError(f"{path}: the run's training shards are not readable ({e})") from e


def _keypoint_sources(manifest: dict[str, Any]) -> frozenset[str]:
    return frozenset(
        r.get("keypoint_source", "")
        for shard in manifest.get("shards", [])
        for r in shard.get("records", [])
        if r.get("num_frames", 0) > 0
    )


def _encoder_settings(manifest: dict[str, Any]) -> dict[str, Any] | None:
    text = (manifest.get("created") or {}).get("description", "")
    try:
        settings = json.loads(text)
    except (TypeError, json.JSONDecodeError):
        return None
    return settings if isinstance(settings, dict) and "encoder" in settings else None


def _preprocess_settings(raw: Path) -> dict[str, Any] | None:
    try:
        return json.loads((raw / STATUS_FILE).read_text(encoding="utf-8")).get("settings")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def read_trained_run(workdir: str | Path, checkpoint: str = "latest") -> TrainedRun:
    """The run in ``workdir`` (a training workdir or a stacked one)."""
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise TrainedRunError(f"{workdir}: no such run folder")
    uses_labeler = False
    if (workdir / STACK_FILE).is_file():
        try:
            stack = json.loads((workdir / STACK_FILE).read_text(encoding="utf-8"))
            full_runs = {b: Path(w) for b, w in stack["full_runs"].items()}
            shards = Path(stack["shards"])
            uses_labeler = "labeler" in stack["features"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise TrainedRunError(f"{workdir / STACK_FILE}: not a stacked run's file ({e})") from e
        kind, branches = "stacked", tuple(sorted(full_runs))
        checkpoints = {str(w): _checkpoint_step(w, checkpoint) for w in full_runs.values()}
    else:
        config, _ = _config(workdir)
        try:
            branches = tuple(config["branches"])
            shards = Path(config["data"]["shards"])
        except (KeyError, TypeError) as e:
            raise TrainedRunError(f"{workdir}: the config names no branches or shards") from e
        kind = "trained"
        checkpoints = {str(workdir): _checkpoint_step(workdir, checkpoint)}
    manifest = _manifest(shards)
    encoder = _encoder_settings(manifest)
    raw = Path(encoder["input"]) if encoder else shards
    return TrainedRun(
        workdir=workdir,
        kind=kind,
        branches=branches,
        shards=shards,
        checkpoints=checkpoints,
        keypoint_sources=_keypoint_sources(manifest),
        encoder=encoder,
        preprocess=_preprocess_settings(raw),
        uses_labeler=uses_labeler,
    )


def encode_overrides(encoder: dict[str, Any]) -> list[str]:
    """``hemo_jax.encode`` flags that give new videos the features the run trained on."""
    image = encoder["image"]
    flags = [
        f"--config.features={encoder['features']}",
        f"--config.compute_dtype={encoder['compute_dtype']}",
        f"--config.image.shortest_edge={image['shortest_edge']}",
        f"--config.image.crop_size={image['crop_size']}",
    ]
    weights = str(encoder["weights"])
    if weights.startswith("random seed "):
        model = encoder["model"]
        # Every preset shares these fields except giant (SwiGLU); the shape is overridden.
        preset = "giant" if model.get("use_swiglu_ffn") else "small"
        flags += [
            "--config.model.checkpoint=",
            f"--config.model.random_preset={preset}",
            f"--config.model.hidden_size={model['hidden_size']}",
            f"--config.model.num_layers={model['num_layers']}",
            f"--config.model.num_heads={model['num_heads']}",
            f"--config.seed={weights.removeprefix('random seed ')}",
        ]
    else:
        flags.append(f"--config.model.checkpoint={weights}")
    return flags


# The encoder settings that must match between the run's features and the new ones.
ENCODER_KEYS = ("weights", "model", "features", "compute_dtype", "image")
