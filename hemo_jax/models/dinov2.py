"""DINOv2 ViT in Flax NNX, numerically matching ``transformers.Dinov2Model``.

Also covers the ``Dinov2WithRegisters`` layout (register tokens after CLS, antialiased
position-embedding interpolation) and the SwiGLU MLP of the giant model. Images are
channels-last ``[B, H, W, 3]``, already normalised (see :func:`preprocess_images`).
The module returns ``(pooled, aux)``: ``pooled`` is the CLS token after the final
layer norm (HF ``pooler_output``); ``aux`` holds ``tokens`` (HF ``last_hidden_state``),
``pooled``, ``patch_mean`` (mean of the patch tokens) and, on request,
``hidden_states`` (embeddings, then the output of every block, before the final norm;
HF's ``output_hidden_states``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hemo_jax.models import convert
from hemo_jax.models.attention import attention
from hemo_jax.models.layers import ACTIVATIONS, LayerNorm

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class Dinov2Config:
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = 14
    # Position embeddings cover an (image_size // patch_size)² grid; other sizes interpolate.
    image_size: int = 518
    num_channels: int = 3
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True
    hidden_act: str = "gelu"
    use_swiglu_ffn: bool = False
    use_mask_token: bool = True
    num_register_tokens: int = 0
    # Dinov2WithRegisters interpolates position embeddings with antialias=True.
    interpolate_antialias: bool = False
    attention_impl: str | None = None

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} not divisible by {self.num_heads}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} not one of {sorted(ACTIVATIONS)}")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def mlp_hidden(self) -> int:
        hidden = int(self.hidden_size * self.mlp_ratio)
        if self.use_swiglu_ffn:  # two thirds, rounded up to a multiple of 8 (as DINOv2)
            hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        return hidden

    # Presets: the facebook/dinov2-* checkpoints (all trained at 518², patch 14).
    @classmethod
    def small(cls, **kw: Any) -> Dinov2Config:
        return cls(hidden_size=384, num_layers=12, num_heads=6, **kw)

    @classmethod
    def base(cls, **kw: Any) -> Dinov2Config:
        return cls(hidden_size=768, num_layers=12, num_heads=12, **kw)

    @classmethod
    def large(cls, **kw: Any) -> Dinov2Config:
        return cls(hidden_size=1024, num_layers=24, num_heads=16, **kw)

    @classmethod
    def giant(cls, **kw: Any) -> Dinov2Config:
        return cls(hidden_size=1536, num_layers=40, num_heads=24, use_swiglu_ffn=True, **kw)

    @classmethod
    def from_hf_config(cls, hf: dict[str, Any], **overrides: Any) -> Dinov2Config:
        """From a ``config.json`` dict of a dinov2 or dinov2_with_registers checkpoint."""
        model_type = hf.get("model_type")
        if model_type not in ("dinov2", "dinov2_with_registers"):
            raise ValueError(f"config model_type {model_type!r} is not dinov2")

        def square(field: str) -> int:
            value = hf.get(field, getattr(cls, field))
            if isinstance(value, (list, tuple)):
                if len(set(value)) != 1:
                    raise ValueError(f"config {field} {value}: only square sizes are supported")
                value = value[0]
            return int(value)

        registers = model_type == "dinov2_with_registers"
        kw = dict(
            hidden_size=hf["hidden_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"],
            mlp_ratio=hf.get("mlp_ratio", 4),
            patch_size=square("patch_size"),
            image_size=square("image_size"),
            num_channels=hf.get("num_channels", 3),
            layer_norm_eps=hf.get("layer_norm_eps", 1e-6),
            qkv_bias=hf.get("qkv_bias", True),
            hidden_act=hf.get("hidden_act", "gelu"),
            use_swiglu_ffn=hf.get("use_swiglu_ffn", False),
            use_mask_token=True if registers else hf.get("use_mask_token", True),
            num_register_tokens=hf.get("num_register_tokens", 4) if registers else 0,
            interpolate_antialias=registers,
        )
        kw.update(overrides)
        return cls(**kw)


# ---------------------------------------------------------------------------------------
# Position-embedding interpolation (torch.nn.functional.interpolate, bicubic, as HF)


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel."""
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def bicubic_resize_matrix(in_size: int, out_size: int, *, antialias: bool) -> np.ndarray:
    """``[out, in]`` weights reproducing torch's 1-D bicubic resampling, align_corners=False.

    Without antialias: 4 taps, a = -0.75, edge indices clamped (``upsample_bicubic2d``).
    With antialias: PIL-style support widened by the downscale factor, a = -0.5,
    weights normalised (``_upsample_bicubic2d_aa``).
    """
    weights = np.zeros((out_size, in_size), np.float64)
    scale = np.float32(in_size) / np.float32(out_size)
    if not antialias:
        for i in range(out_size):
            src = np.float32(scale * np.float32(i + 0.5) - np.float32(0.5))
            base = int(np.floor(src))
            t = float(src - base)
            taps = _cubic(np.array([t + 1, t, 1 - t, 2 - t]), -0.75)
            for offset, w in zip((-1, 0, 1, 2), taps, strict=True):
                weights[i, min(max(base + offset, 0), in_size - 1)] += w
        return weights.astype(np.float32)
    support_scale = max(float(scale), 1.0)
    support = 2.0 * support_scale
    for i in range(out_size):
        center = float(scale) * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        taps = _cubic((np.arange(lo, hi) - center + 0.5) / support_scale, -0.5)
        weights[i, lo:hi] = taps / taps.sum()
    return weights.astype(np.float32)


def interpolate_pos_encoding(
    pos: jax.Array, grid: int, out_h: int, out_w: int, *, antialias: bool
) -> jax.Array:
    """Resize the patch part of ``pos`` [1, 1 + grid², D] to an out_h × out_w grid."""
    cls_pos, patch_pos = pos[:, :1], pos[0, 1:].reshape(grid, grid, -1)
    wh = bicubic_resize_matrix(grid, out_h, antialias=antialias)
    ww = bicubic_resize_matrix(grid, out_w, antialias=antialias)
    resized = jnp.einsum(
        "hi,wj,ijd->hwd", wh, ww, patch_pos.astype(jnp.float32), precision="highest"
    )
    return jnp.concatenate([cls_pos, resized.reshape(1, out_h * out_w, -1).astype(pos.dtype)], 1)


# ---------------------------------------------------------------------------------------
# Modules


class Dinov2Attention(nnx.Module):
    def __init__(self, cfg: Dinov2Config, *, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.num_heads = cfg.num_heads
        self.impl = cfg.attention_impl
        # Query, key and value in one [D, 3D] projection: one large matmul instead of
        # three (the loader concatenates the checkpoint's three).
        self.qkv = nnx.Linear(d, 3 * d, use_bias=cfg.qkv_bias, rngs=rngs)
        self.out = nnx.Linear(d, d, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.num_heads, d // self.num_heads)
        out = attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], implementation=self.impl)
        return self.out(out.reshape(b, t, d))


class Dinov2Mlp(nnx.Module):
    def __init__(self, cfg: Dinov2Config, *, rngs: nnx.Rngs):
        self.act = ACTIVATIONS[cfg.hidden_act]
        self.fc1 = nnx.Linear(cfg.hidden_size, cfg.mlp_hidden, rngs=rngs)
        self.fc2 = nnx.Linear(cfg.mlp_hidden, cfg.hidden_size, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(self.act(self.fc1(x)))


class Dinov2SwiGLU(nnx.Module):
    """The fused SwiGLU of DINOv2-giant: ``weights_in`` holds [gate; up]."""

    def __init__(self, cfg: Dinov2Config, *, rngs: nnx.Rngs):
        self.weights_in = nnx.Linear(cfg.hidden_size, 2 * cfg.mlp_hidden, rngs=rngs)
        self.weights_out = nnx.Linear(cfg.mlp_hidden, cfg.hidden_size, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        gate, up = jnp.split(self.weights_in(x), 2, axis=-1)
        return self.weights_out(jax.nn.silu(gate) * up)


class Dinov2Layer(nnx.Module):
    """Pre-norm block with layer scale on both residual branches."""

    def __init__(self, cfg: Dinov2Config, *, rngs: nnx.Rngs):
        d, eps = cfg.hidden_size, cfg.layer_norm_eps
        self.norm1 = LayerNorm(d, epsilon=eps)
        self.attention = Dinov2Attention(cfg, rngs=rngs)
        self.layer_scale1 = nnx.Param(jnp.ones((d,)))
        self.norm2 = LayerNorm(d, epsilon=eps)
        self.mlp = Dinov2SwiGLU(cfg, rngs=rngs) if cfg.use_swiglu_ffn else Dinov2Mlp(cfg, rngs=rngs)
        self.layer_scale2 = nnx.Param(jnp.ones((d,)))

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attention(self.norm1(x)) * self.layer_scale1[...]
        return x + self.mlp(self.norm2(x)) * self.layer_scale2[...]


class Dinov2Model(nnx.Module):
    def __init__(self, cfg: Dinov2Config, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d, p = cfg.hidden_size, cfg.patch_size
        init = nnx.initializers.truncated_normal(0.02)
        self.patch_embed = nnx.Conv(
            cfg.num_channels, d, (p, p), strides=(p, p), padding="VALID", rngs=rngs
        )
        self.cls_token = nnx.Param(init(rngs.params(), (1, 1, d)))
        self.position_embeddings = nnx.Param(init(rngs.params(), (1, cfg.grid**2 + 1, d)))
        if cfg.use_mask_token:
            self.mask_token = nnx.Param(jnp.zeros((1, d)))
        if cfg.num_register_tokens:
            self.register_tokens = nnx.Param(jnp.zeros((1, cfg.num_register_tokens, d)))
        self.layers = nnx.List([Dinov2Layer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.layernorm = LayerNorm(d, epsilon=cfg.layer_norm_eps)

    def embed(self, pixels: jax.Array, bool_masked_pos: jax.Array | None = None) -> jax.Array:
        cfg = self.cfg
        if pixels.ndim != 4 or pixels.shape[-1] != cfg.num_channels:
            raise ValueError(f"expected images [B, H, W, {cfg.num_channels}], got {pixels.shape}")
        height, width = pixels.shape[1:3]
        if min(height, width) < cfg.patch_size:
            raise ValueError(f"image {height}x{width} is smaller than one patch {cfg.patch_size}")
        x = self.patch_embed(pixels.astype(self.patch_embed.kernel.dtype))
        b, gh, gw, d = x.shape
        x = x.reshape(b, gh * gw, d)
        if bool_masked_pos is not None:
            if not self.cfg.use_mask_token:
                raise ValueError("bool_masked_pos given but the model has no mask token")
            x = jnp.where(bool_masked_pos[..., None], self.mask_token[...].astype(x.dtype), x)
        x = jnp.concatenate(
            [jnp.broadcast_to(self.cls_token[...], (b, 1, d)).astype(x.dtype), x], 1
        )
        pos = self.position_embeddings[...]
        # HF keeps the table as is for a square image of the trained grid; else it resamples.
        if not (gh * gw == cfg.grid**2 and height == width):
            pos = interpolate_pos_encoding(
                pos, cfg.grid, gh, gw, antialias=cfg.interpolate_antialias
            )
        x = x + pos.astype(x.dtype)
        if cfg.num_register_tokens:
            regs = jnp.broadcast_to(self.register_tokens[...], (b, cfg.num_register_tokens, d))
            x = jnp.concatenate([x[:, :1], regs.astype(x.dtype), x[:, 1:]], 1)
        return x

    def __call__(
        self,
        pixels: jax.Array,
        *,
        bool_masked_pos: jax.Array | None = None,
        return_hidden_states: bool = False,
    ) -> tuple[jax.Array, dict[str, Any]]:
        x = self.embed(pixels, bool_masked_pos)
        hidden = [x]
        for layer in self.layers:
            x = layer(x)
            hidden.append(x)
        tokens = self.layernorm(x)
        pooled = tokens[:, 0]
        aux = {
            "pooled": pooled,
            "tokens": tokens,
            "patch_mean": tokens[:, 1 + self.cfg.num_register_tokens :].mean(axis=1),
        }
        if return_hidden_states:
            aux["hidden_states"] = hidden
        return pooled, aux


# ---------------------------------------------------------------------------------------
# Loading Hugging Face checkpoints

_L = r"encoder\.layer\.(\d+)\."
RULES: tuple[convert.Rule, ...] = (
    convert.Rule(r"embeddings\.cls_token", "cls_token"),
    convert.Rule(r"embeddings\.mask_token", "mask_token"),
    convert.Rule(r"embeddings\.register_tokens", "register_tokens"),
    convert.Rule(r"embeddings\.position_embeddings", "position_embeddings"),
    convert.Rule(
        r"embeddings\.patch_embeddings\.projection\.weight",
        "patch_embed.kernel",
        convert.conv_kernel,
    ),
    convert.Rule(r"embeddings\.patch_embeddings\.projection\.bias", "patch_embed.bias"),
    convert.Rule(_L + r"(norm[12])\.weight", "layers.{0}.{1}.scale"),
    convert.Rule(_L + r"(norm[12])\.bias", "layers.{0}.{1}.bias"),
    convert.Rule(
        _L + r"attention\.attention\.(query|key|value)\.weight",
        "layers.{0}.attention.qkv.kernel",
        convert.linear_kernel,
        concat=convert.QKV,
    ),
    convert.Rule(
        _L + r"attention\.attention\.(query|key|value)\.bias",
        "layers.{0}.attention.qkv.bias",
        concat=convert.QKV,
    ),
    convert.Rule(
        _L + r"attention\.output\.dense\.weight",
        "layers.{0}.attention.out.kernel",
        convert.linear_kernel,
    ),
    convert.Rule(_L + r"attention\.output\.dense\.bias", "layers.{0}.attention.out.bias"),
    convert.Rule(_L + r"(layer_scale[12])\.lambda1", "layers.{0}.{1}"),
    convert.Rule(
        _L + r"mlp\.(fc1|fc2|weights_in|weights_out)\.weight",
        "layers.{0}.mlp.{1}.kernel",
        convert.linear_kernel,
    ),
    convert.Rule(_L + r"mlp\.(fc1|fc2|weights_in|weights_out)\.bias", "layers.{0}.mlp.{1}.bias"),
    convert.Rule(r"layernorm\.weight", "layernorm.scale"),
    convert.Rule(r"layernorm\.bias", "layernorm.bias"),
)
# Dinov2ForImageClassification checkpoints: the backbone sits under "dinov2.", the
# linear head is not part of this model.
SOURCE_PREFIX = r"(?:dinov2\.)?"
IGNORE = (r"^classifier\.",)


def load_dinov2(
    path_or_repo: str | os.PathLike,
    *,
    dtype: Any = jnp.float32,
    cache_dir: str | None = None,
    **config_overrides: Any,
) -> Dinov2Model:
    """A DINOv2 model from a Hugging Face checkpoint directory or a cached repo id."""
    directory = convert.resolve_checkpoint(path_or_repo, cache_dir=cache_dir)
    cfg = Dinov2Config.from_hf_config(convert.read_config(directory), **config_overrides)
    return convert.load_into_model(
        lambda: Dinov2Model(cfg, rngs=nnx.Rngs(0)),
        convert.read_checkpoint(directory),
        RULES,
        ignore=IGNORE,
        source_prefix=SOURCE_PREFIX,
        source=str(directory),
        dtype=dtype,
    )


# ---------------------------------------------------------------------------------------
# Image preprocessing (as the DINOv2 image processor: BitImageProcessor settings)


def preprocess_images(
    images: Sequence[Any],
    *,
    shortest_edge: int = 256,
    crop_size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> np.ndarray:
    """PIL images or uint8 ``[H, W, 3]`` arrays → float32 ``[N, crop, crop, 3]``.

    Resize the shorter side to ``shortest_edge`` (PIL bicubic, the longer side
    truncated as HF does), centre-crop, scale to [0, 1], normalise.
    """
    from PIL import Image

    out = []
    for i, image in enumerate(images):
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
                raise ValueError(
                    f"image {i}: expected uint8 [H, W, 3], got {image.dtype} {image.shape}"
                )
            image = Image.fromarray(image)
        image = image.convert("RGB")
        width, height = image.size
        short, long = sorted((width, height))
        new_long = int(shortest_edge * long / short)
        size = (shortest_edge, new_long) if width <= height else (new_long, shortest_edge)
        array = np.asarray(image.resize(size, resample=Image.Resampling.BICUBIC))
        h, w = array.shape[:2]
        if min(h, w) < crop_size:
            raise ValueError(f"image {i}: {w}x{h} after resize is smaller than crop {crop_size}")
        top, left = (h - crop_size) // 2, (w - crop_size) // 2
        array = array[top : top + crop_size, left : left + crop_size].astype(np.float32) / 255.0
        out.append((array - np.asarray(mean, np.float32)) / np.asarray(std, np.float32))
    return np.stack(out)
