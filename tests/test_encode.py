"""hemo_jax.encode: raw shards → feature shards with a frozen DINOv2."""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from configs import demo as demo_config
from configs import encode as encode_config
from hemo_jax import encode
from hemo_jax.contract.schema import VideoRecord
from hemo_jax.contract.shards import ShardError, open_shards
from hemo_jax.models import dinov2
from preprocess.shards import write_records

ROOT = Path(__file__).resolve().parents[1]
# ultralytics.ASSETS, found without importing ultralytics (which patches PIL.Image.open).
ASSETS = Path(importlib.util.find_spec("ultralytics").submodule_search_locations[0]) / "assets"
# Crops per record: batches of 8 (the smoke batch over 8 devices) cross record
# boundaries, one record has no crops, and the last batch is padded.
CROPS = (3, 0, 7, 1, 4)


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _crops(i: int, n: int) -> list[bytes]:
    """Windows of the real test pictures; some square 224² as the cropper makes, some not."""
    rng = np.random.default_rng(i)
    picture = Image.open(ASSETS / ("bus.jpg" if i % 2 else "zidane.jpg")).convert("RGB")
    out = []
    for k in range(n):
        w, h = (224, 224) if k % 3 else (int(rng.integers(60, 300)), int(rng.integers(60, 300)))
        x = int(rng.integers(0, picture.width - w))
        y = int(rng.integers(0, picture.height - h))
        out.append(_jpeg(picture.crop((x, y, x + w, y + h))))
    return out


def _record(i: int, n: int) -> VideoRecord:
    return VideoRecord(
        video_id=f"v{i}",
        subject_id=f"s{i}",
        source="synthetic",
        split="train",
        fps=25.0,
        frame_size=(720, 1280),
        keypoints=np.full((6, 137, 3), i, np.float32),
        keypoint_frames=np.arange(6, dtype=np.int32),
        label=i % 2,
        crops=_crops(i, n),
        crop_frames=np.arange(n, dtype=np.int32) * 2,
        boxes=np.full((n, 4), i, np.float32),
        transcript=f"interview {i}",
    )


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("raw") / "shards"
    write_records([_record(i, n) for i, n in enumerate(CROPS)], path, records_per_shard=2)
    return path


def _config(raw: Path, out: Path, variant: str = "smoke", **overrides):
    c = encode_config.get_config(variant)
    with c.unlocked():
        c.input, c.output = str(raw), str(out)
        for key, value in overrides.items():
            parent = c
            *parents, leaf = key.split(".")
            for p in parents:
                parent = parent[p]
            parent[leaf] = value
    return c


@pytest.fixture(scope="module")
def encoded(raw, tmp_path_factory) -> Path:
    """The smoke config, uninterrupted, with CLS + patch-mean features."""
    out = tmp_path_factory.mktemp("features") / "shards"
    encode.run(_config(raw, out, features="cls+patch_mean"))
    return out


def _smoke_model() -> dinov2.Dinov2Model:
    cfg = dataclasses.replace(
        dinov2.Dinov2Config.small(), hidden_size=64, num_layers=2, num_heads=4
    )
    return dinov2.Dinov2Model(cfg, rngs=nnx.Rngs(0))


def test_rows_equal_a_direct_dinov2_call_on_the_same_crops(raw, encoded):
    source, features = open_shards(raw), open_shards(encoded)
    assert features.video_ids == source.video_ids == [f"v{i}" for i in range(len(CROPS))]
    assert {i.feature_dim for i in features.infos} == {128}  # 2 x 64: CLS then patch mean
    stored, crops = [], []
    for before, after in zip(source.records(), features.records(), strict=True):
        assert after.crops == []  # dropped by default
        np.testing.assert_array_equal(after.keypoints, before.keypoints)
        np.testing.assert_array_equal(after.crop_frames, before.crop_frames)
        assert after.transcript == before.transcript and after.label == before.label
        assert after.image_features.dtype == np.float16
        assert after.image_features.shape == (len(before.crops), 128)
        stored.append(after.image_features)
        crops.extend(before.crops)

    images = [Image.open(io.BytesIO(jpeg)) for jpeg in crops]
    pixels = dinov2.preprocess_images(images, shortest_edge=64, crop_size=56)
    with jax.default_matmul_precision("float32"):
        pooled, aux = jax.jit(lambda m, x: m(x))(_smoke_model(), jnp.asarray(pixels))
    expected = np.concatenate([pooled, aux["patch_mean"]], axis=-1)
    assert np.abs(expected).max() > 0.5  # features of real magnitude, not all ~0
    np.testing.assert_allclose(
        np.concatenate(stored).astype(np.float32), expected, rtol=1e-3, atol=1e-4
    )


def test_checkpoint_features_match_transformers_pytorch_model(raw, tmp_path):
    """A Hugging Face checkpoint (weights and preprocessor_config.json) against the
    PyTorch Dinov2Model fed by HF's own image processor."""
    import torch
    import transformers
    from transformers.initialization import no_init_weights

    hf_cfg = transformers.Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=70, patch_size=14
    )
    with no_init_weights():
        hf = transformers.Dinov2Model(hf_cfg).eval()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.normal_(0.0, 0.05, generator=gen)
            if "norm" in name and name.endswith(".weight"):
                p.add_(1.0)
    checkpoint = tmp_path / "dinov2"
    hf.save_pretrained(checkpoint)
    processor = transformers.BitImageProcessorPil(
        size={"shortest_edge": 80},
        crop_size={"height": 70, "width": 70},
        image_mean=[0.5, 0.4, 0.3],
        image_std=[0.2, 0.25, 0.3],
    )
    processor.save_pretrained(checkpoint)

    out = tmp_path / "features"
    config = _config(raw, out, "smoke", keep_crops=True, batch_size=4)
    with config.unlocked():
        config.model.update(checkpoint=str(checkpoint), random_preset="")
        config.model.update(hidden_size=0, num_layers=0, num_heads=0)
        config.image.update(shortest_edge=0, crop_size=0)  # from the checkpoint's file
    features = encode.run(config)

    manifest_settings = json.loads(features.manifest["created"]["description"])
    assert manifest_settings["image"]["crop_size"] == 70
    assert manifest_settings["weights"] == str(checkpoint.resolve())
    for before, after in zip(open_shards(raw).records(), features.records(), strict=True):
        assert after.crops == before.crops  # keep_crops
        assert after.image_features.shape == (len(before.crops), 32)
        if not before.crops:
            continue
        images = [Image.open(io.BytesIO(jpeg)).convert("RGB") for jpeg in before.crops]
        pixels = processor(images, return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            expected = hf(pixels).pooler_output.numpy()
        np.testing.assert_allclose(
            after.image_features.astype(np.float32), expected, rtol=1e-3, atol=2e-4
        )


def test_bfloat16_and_another_device_count_agree_with_float32(raw, encoded, tmp_path):
    reference = [r.image_features.astype(np.float32) for r in open_shards(encoded).records()]
    # 3 devices round batch 4 up to 6: another mesh and another padding of the last batch.
    three = encode.run(
        _config(raw, tmp_path / "three", features="cls+patch_mean", num_devices=3, batch_size=4)
    )
    bf16 = encode.run(
        _config(raw, tmp_path / "bf16", features="cls+patch_mean", compute_dtype="bfloat16")
    )
    for want, got3, got16 in zip(reference, three.records(), bf16.records(), strict=True):
        np.testing.assert_allclose(got3.image_features.astype(np.float32), want, atol=1e-3)
        if len(want):
            low = got16.image_features.astype(np.float32)
            assert not np.array_equal(low, want)  # bf16 really ran
            cos = (
                (low * want).sum(-1) / np.linalg.norm(low, axis=-1) / np.linalg.norm(want, axis=-1)
            )
            assert cos.min() > 0.99


def _sha256s(path: Path) -> list[tuple[str, int, str]]:
    return [(s.file, s.num_records, s.sha256) for s in open_shards(path).shards]


@pytest.mark.slow  # two interpreter start-ups
def test_killed_run_then_rerun_equals_an_uninterrupted_run(raw, encoded, tmp_path):
    out = tmp_path / "features"
    flags = [
        "--config=configs/encode.py:smoke",
        f"--config.input={raw}",
        f"--config.output={out}",
        "--config.features=cls+patch_mean",
    ]
    # A real SIGKILL right after the third record reaches the writer: the first shard
    # (two records) is finished, the third record sits in an unfinished shard.
    die_after_three = textwrap.dedent(
        f"""
        import os, signal, sys
        from absl import app
        from hemo_jax.contract.shards import ShardWriter
        from hemo_jax import encode

        add, added = ShardWriter.add, []
        def add_then_die(self, record):
            add(self, record)
            added.append(record.video_id)
            if len(added) == 3:
                os.kill(os.getpid(), signal.SIGKILL)
        ShardWriter.add = add_then_die
        sys.argv = ["encode", *{flags!r}]
        app.run(encode.main)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed = subprocess.run(
        [sys.executable, "-c", die_after_three], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert killed.returncode == -9, killed.stderr[-3000:]
    with pytest.raises(ShardError, match="incomplete"):
        open_shards(out)
    first = open_shards(out, allow_incomplete=True)
    assert first.video_ids == ["v0", "v1"]
    first_shard = (out / first.shards[0].file).stat()

    # The smoke config through the command line, as a user would rerun it.
    rerun = subprocess.run(
        [sys.executable, "-m", "hemo_jax.encode", *flags],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "RANDOM WEIGHTS" in rerun.stderr
    assert "2 records stored, 3 to encode" in rerun.stderr
    assert (out / first.shards[0].file).stat().st_ino == first_shard.st_ino  # not redone
    assert not list(out.glob(".tmp-*"))
    # Byte for byte the shards of the uninterrupted run.
    assert _sha256s(out) == _sha256s(encoded)


def test_records_without_crops_pass_through_with_zero_rows(tmp_path):
    records = [_record(0, 0), _record(1, 0)]
    write_records(records, tmp_path / "raw")
    features = encode.run(_config(tmp_path / "raw", tmp_path / "out"))
    assert features.video_ids == ["v0", "v1"]
    for r in features.records():
        assert r.image_features.shape == (0, 64) and r.image_features.dtype == np.float16

    # Other settings on the same output: refused, unless asked to overwrite.
    wider = _config(tmp_path / "raw", tmp_path / "out", features="cls+patch_mean")
    with pytest.raises(encode.EncodeError, match="other settings"):
        encode.run(wider)
    with wider.unlocked():
        wider.overwrite = True
    features = encode.run(wider)
    assert [i.feature_dim for i in features.infos] == [128, 128]


def test_refuses_bad_settings_and_inputs(raw, encoded, tmp_path):
    # Resuming a set encoded with other settings would mix two encoders.
    with pytest.raises(encode.EncodeError, match="other settings.*features"):
        encode.run(_config(raw, encoded, features="cls"))
    with pytest.raises(encode.EncodeError, match="give one"):
        encode.run(_config(raw, tmp_path / "a", **{"model.checkpoint": "facebook/dinov2-base"}))
    with pytest.raises(encode.EncodeError, match="random_preset='tiny'"):
        encode.run(_config(raw, tmp_path / "b", **{"model.random_preset": "tiny"}))
    with pytest.raises(encode.EncodeError, match="features='pooled'"):
        encode.run(_config(raw, tmp_path / "c", features="pooled"))
    with pytest.raises(FileNotFoundError, match="org/absent"):
        config = _config(raw, tmp_path / "d", **{"model.random_preset": ""})
        with config.unlocked():
            config.model.update(checkpoint="org/absent", hidden_size=0, num_layers=0, num_heads=0)
        encode.run(config)

    # Crops already dropped: features could not match the record's crop_frames.
    dropped = dataclasses.replace(_record(7, 2), crops=[])
    write_records([dropped], tmp_path / "dropped")
    with pytest.raises(encode.EncodeError, match=r"crop_frames but hold no crops.*v7"):
        encode.run(_config(tmp_path / "dropped", tmp_path / "e"))

    # A crop that is not a JPEG names its video and index.
    broken = _record(8, 3)
    broken.crops[1] = b"not a jpeg"
    write_records([broken], tmp_path / "broken")
    with pytest.raises(encode.EncodeError, match=r"video 'v8' crop 1"):
        encode.run(_config(tmp_path / "broken", tmp_path / "f"))


def test_config_variants():
    assert encode_config.get_config().model.checkpoint == "facebook/dinov2-base"
    assert encode_config.get_config("random").model.random_preset == "base"
    # configs/demo.py trains on D=384 features, smoke or not: CLS + patch mean of width 192.
    for variant in ("demo", "demo,smoke"):
        c = encode_config.get_config(variant)
        assert (c.model.checkpoint, c.model.random_preset) == ("", "small")
        assert (c.features, c.model.hidden_size) == ("cls+patch_mean", 192)
    assert demo_config.get_config("fused").model.image_feature_dim == 2 * 192
    with pytest.raises(ValueError, match="unknown config variants"):
        encode_config.get_config("smok")
    with pytest.raises(AttributeError):
        encode_config.get_config().batch_sizes = 3  # locked: a typo is an error
