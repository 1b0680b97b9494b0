"""DINOv2 in NNX against transformers.Dinov2Model with the same saved weights."""

from __future__ import annotations

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.torch
import torch
import transformers
from flax import nnx
from PIL import Image
from transformers.initialization import no_init_weights

from hemo_jax.models import dinov2, layers

TOL = 1e-4


def random_hf_model(model_cls, cfg, seed: int):
    """A transformers model with every parameter drawn at random (biases, norms and layer
    scales included), so a mis-mapped or untransposed tensor cannot hide behind a
    symmetric init value. Skips HF's own (slow) init."""
    with no_init_weights():
        model = model_cls(cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.05, generator=gen)
            if "norm" in name.lower() and name.endswith(".weight"):
                p.add_(1.0)
    return model


def _jax_forward(model, pixels_nchw: np.ndarray):
    with jax.default_matmul_precision("float32"):
        fwd = jax.jit(lambda m, x: m(x, return_hidden_states=True))
        return fwd(model, jnp.asarray(pixels_nchw.transpose(0, 2, 3, 1)))


def _hf_forward(model, pixels_nchw: np.ndarray, **kw):
    with torch.inference_mode():
        return model(torch.from_numpy(pixels_nchw), output_hidden_states=True, **kw)


@pytest.fixture(scope="module")
def base_checkpoint(tmp_path_factory):
    """Random weights at the real DINOv2-Base shape, saved as HF does (safetensors)."""
    cfg = transformers.Dinov2Config(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, patch_size=14, image_size=224
    )
    model = random_hf_model(transformers.Dinov2Model, cfg, seed=1)
    directory = tmp_path_factory.mktemp("dinov2_base")
    model.save_pretrained(directory)
    return model, directory


@pytest.mark.slow
def test_base_matches_transformers_at_224_and_280(base_checkpoint):
    hf, directory = base_checkpoint
    ours = dinov2.load_dinov2(directory)
    rng = np.random.default_rng(0)
    for size in (224, 280):
        pixels = rng.normal(size=(2, 3, size, size)).astype(np.float32)
        expected = _hf_forward(hf, pixels)
        pooled, aux = _jax_forward(ours, pixels)
        np.testing.assert_allclose(pooled, expected.pooler_output.numpy(), atol=TOL, rtol=0)
        np.testing.assert_allclose(
            aux["tokens"], expected.last_hidden_state.numpy(), atol=TOL, rtol=0
        )
        # Layer by layer: embeddings, then the output of each of the 12 blocks.
        assert len(aux["hidden_states"]) == len(expected.hidden_states) == 13
        for i, (a, b) in enumerate(zip(aux["hidden_states"], expected.hidden_states, strict=True)):
            np.testing.assert_allclose(a, b.numpy(), atol=TOL, rtol=0, err_msg=f"layer {i}")
        patch_mean = expected.last_hidden_state[:, 1:].mean(1).numpy()
        np.testing.assert_allclose(aux["patch_mean"], patch_mean, atol=TOL, rtol=0)
        assert aux["tokens"].shape == (2, 1 + (size // 14) ** 2, 768)


@pytest.mark.slow
def test_pytorch_bin_checkpoint_loads_identically(base_checkpoint, tmp_path):
    _, directory = base_checkpoint
    tensors = safetensors.torch.load_file(directory / "model.safetensors")
    torch.save(tensors, tmp_path / "pytorch_model.bin")
    shutil.copy(directory / "config.json", tmp_path / "config.json")
    from_safetensors = jax.tree.leaves(dinov2.load_dinov2(directory))
    from_bin = jax.tree.leaves(dinov2.load_dinov2(tmp_path))
    assert len(from_bin) == len(from_safetensors) > 100
    for a, b in zip(from_bin, from_safetensors, strict=True):
        np.testing.assert_array_equal(a, b)


def _small(config_cls, model_cls, **kw):
    cfg = config_cls(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=56,
        patch_size=14,
        **kw,
    )
    return random_hf_model(model_cls, cfg, seed=2)


@pytest.mark.parametrize("variant", ["swiglu", "registers"])
def test_small_variants_match_at_several_sizes(variant, tmp_path):
    if variant == "swiglu":
        hf = _small(transformers.Dinov2Config, transformers.Dinov2Model, use_swiglu_ffn=True)
    else:
        hf = _small(
            transformers.Dinov2WithRegistersConfig,
            transformers.Dinov2WithRegistersModel,
            num_register_tokens=3,
        )
    hf.save_pretrained(tmp_path)
    ours = dinov2.load_dinov2(tmp_path)
    assert ours.cfg.use_swiglu_ffn == (variant == "swiglu")
    assert ours.cfg.num_register_tokens == (3 if variant == "registers" else 0)
    rng = np.random.default_rng(1)
    # upsampled, downsampled, non-square with a remainder (the trained grid: the Base test)
    for h, w in [(98, 98), (28, 28), (60, 75)]:
        pixels = rng.normal(size=(2, 3, h, w)).astype(np.float32)
        expected = _hf_forward(hf, pixels)
        pooled, aux = _jax_forward(ours, pixels)
        np.testing.assert_allclose(pooled, expected.pooler_output.numpy(), atol=TOL, rtol=0)
        np.testing.assert_allclose(
            aux["tokens"], expected.last_hidden_state.numpy(), atol=TOL, rtol=0
        )


def test_mask_token_matches(tmp_path):
    hf = _small(transformers.Dinov2Config, transformers.Dinov2Model)
    hf.save_pretrained(tmp_path)
    ours = dinov2.load_dinov2(tmp_path)
    pixels = np.random.default_rng(2).normal(size=(2, 3, 56, 56)).astype(np.float32)
    masked = np.random.default_rng(3).random((2, 16)) < 0.5
    with torch.inference_mode():
        expected = hf(torch.from_numpy(pixels), bool_masked_pos=torch.from_numpy(masked))
    with jax.default_matmul_precision("float32"):
        fwd = jax.jit(lambda m, x, mask: m(x, bool_masked_pos=mask)[0])
        pooled = fwd(ours, pixels.transpose(0, 2, 3, 1), masked)
        unmasked = fwd(ours, pixels.transpose(0, 2, 3, 1), np.zeros_like(masked))
    np.testing.assert_allclose(pooled, expected.pooler_output.numpy(), atol=TOL, rtol=0)
    assert np.abs(np.asarray(unmasked) - np.asarray(pooled)).max() > 1e-3


@pytest.mark.parametrize("antialias", [False, True])
@pytest.mark.parametrize(("n_in", "n_out"), [(16, 20), (16, 16), (16, 7), (37, 16), (5, 23)])
def test_bicubic_matrix_equals_torch_interpolate(antialias, n_in, n_out):
    x = np.random.default_rng(0).normal(size=(1, 3, n_in, n_in)).astype(np.float32)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(x),
        size=(n_out, n_out),
        mode="bicubic",
        align_corners=False,
        antialias=antialias,
    ).numpy()
    m = dinov2.bicubic_resize_matrix(n_in, n_out, antialias=antialias)
    got = np.einsum("hi,wj,bcij->bchw", m, m, x)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("by_matmul", [True, False])
def test_layer_norm_statistics_and_output(by_matmul):
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(4, 7, 48)).astype(np.float32)
    mean, mean_sq = layers.layer_norm_stats(jnp.asarray(x), by_matmul=by_matmul)
    np.testing.assert_allclose(mean, x.mean(-1), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(mean_sq, (x * x).mean(-1), rtol=1e-6)
    scale, bias = rng.normal(size=(2, 48)).astype(np.float32)
    norm = layers.LayerNorm(48, epsilon=1e-6)
    norm.scale[...], norm.bias[...] = jnp.asarray(scale), jnp.asarray(bias)
    ref = torch.nn.functional.layer_norm(
        torch.from_numpy(x), (48,), torch.from_numpy(scale), torch.from_numpy(bias), eps=1e-6
    )
    np.testing.assert_allclose(norm(jnp.asarray(x)), ref.numpy(), atol=2e-5)
    assert norm(jnp.asarray(x, jnp.bfloat16)).dtype == jnp.bfloat16


def test_bfloat16_params_track_float32(tmp_path):
    hf = _small(transformers.Dinov2Config, transformers.Dinov2Model)
    hf.save_pretrained(tmp_path)
    f32 = dinov2.load_dinov2(tmp_path)
    bf16 = dinov2.load_dinov2(tmp_path, dtype=jnp.bfloat16)
    assert {x.dtype for x in jax.tree.leaves(bf16)} == {jnp.dtype(jnp.bfloat16)}
    pixels = np.random.default_rng(4).normal(size=(2, 56, 56, 3)).astype(np.float32)
    fwd = jax.jit(lambda m, x: m(x)[0])
    a, b = fwd(f32, pixels), fwd(bf16, pixels)
    assert b.dtype == jnp.bfloat16
    cos = np.sum(np.asarray(a) * np.asarray(b, np.float32), -1) / (
        np.linalg.norm(a, axis=-1) * np.linalg.norm(np.asarray(b, np.float32), axis=-1)
    )
    assert cos.min() > 0.99


def test_preprocess_matches_hf_image_processor():
    from ultralytics import ASSETS

    images = [Image.open(ASSETS / name) for name in ("bus.jpg", "zidane.jpg")]
    processor = transformers.BitImageProcessorPil(
        size={"shortest_edge": 256},
        crop_size={"height": 224, "width": 224},
        image_mean=list(dinov2.IMAGENET_MEAN),
        image_std=list(dinov2.IMAGENET_STD),
    )
    expected = processor(images, return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
    got = dinov2.preprocess_images(images)
    assert got.shape == (2, 224, 224, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    arrays = dinov2.preprocess_images([np.asarray(images[0].convert("RGB"))])
    np.testing.assert_array_equal(arrays[0], got[0])


def test_config_presets_and_errors():
    giant = dinov2.Dinov2Config.giant()
    assert (giant.hidden_size, giant.num_layers, giant.mlp_hidden) == (1536, 40, 4096)
    assert dinov2.Dinov2Config.base().grid == 37  # the hub checkpoints' 518² / 14
    hub_base = {
        "model_type": "dinov2",
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "image_size": 518,
        "patch_size": 14,
    }
    assert dinov2.Dinov2Config.from_hf_config(hub_base) == dinov2.Dinov2Config.base()
    with pytest.raises(ValueError, match="model_type 'vit'"):
        dinov2.Dinov2Config.from_hf_config({**hub_base, "model_type": "vit"})
    with pytest.raises(ValueError, match="image_size"):
        dinov2.Dinov2Config.from_hf_config({**hub_base, "image_size": [518, 224]})
    with pytest.raises(ValueError, match="hidden_act"):
        dinov2.Dinov2Config.from_hf_config({**hub_base, "hidden_act": "mish"})
    cfg = dinov2.Dinov2Config(hidden_size=32, num_layers=1, num_heads=2, image_size=28)
    model = nnx.eval_shape(lambda: dinov2.Dinov2Model(cfg, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        model(np.zeros((1, 3, 28, 28), np.float32))
