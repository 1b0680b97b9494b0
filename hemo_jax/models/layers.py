"""The layers every model shares: layer norms, activations and the classifier head.

Two layer norms, one per purpose, both here:

- ``LayerNorm`` computes as torch does, for the encoders converted from Hugging Face
  checkpoints (DINOv2, BERT), whose parity tests compare against torch layer by layer.
- ``layer_norm`` builds ``nnx.LayerNorm`` with the logical axis names of its parameters,
  for the models trained here (sharded by ``hemo_jax.models.partitioning``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from hemo_jax.models.dropout import Dropout
from hemo_jax.models.partitioning import axes


def gelu(x: jax.Array) -> jax.Array:
    """Exact (erf) GELU in the form torch computes it: x/2 * (1 + erf(x/sqrt(2))).

    ``jax.nn.gelu(approximate=False)`` goes through erfc, whose XLA:CPU expansion ran
    2.7x slower (4.2 against 1.5 ms on [2056, 3072] float32, 2 cores); both stay within
    6e-7 of float64.
    """
    return x * 0.5 * (1.0 + jax.lax.erf(x * 0.7071067811865476))


ACTIVATIONS = {
    "gelu": gelu,
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


class LayerNorm(nnx.Module):
    """Layer norm over the last axis, with nnx.LayerNorm's ``scale`` and ``bias``.

    Statistics in float32 as mean and mean square (as nnx.LayerNorm). On CPU they are
    matrix-vector products: as reductions, XLA:CPU's library fusion merged them with
    the matmuls before them into one fused kernel that made all-MiniLM-L6-v2 18% slower
    end to end (DINOv2-Base and BERT-base unchanged within noise).
    """

    def __init__(self, dim: int, *, epsilon: float):
        self.scale = nnx.Param(jnp.ones((dim,)))
        self.bias = nnx.Param(jnp.zeros((dim,)))
        self.epsilon = epsilon

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean, mean_sq = layer_norm_stats(x32, by_matmul=jax.default_backend() == "cpu")
        var = jnp.maximum(mean_sq - mean * mean, 0.0)
        y = (x32 - mean[..., None]) * jax.lax.rsqrt(var + self.epsilon)[..., None]
        return (y * self.scale[...] + self.bias[...]).astype(x.dtype)


def layer_norm_stats(x: jax.Array, *, by_matmul: bool) -> tuple[jax.Array, jax.Array]:
    """Mean and mean square of float32 ``x`` over its last axis."""
    if not by_matmul:
        return x.mean(axis=-1), (x * x).mean(axis=-1)
    weights = jnp.full((x.shape[-1],), 1.0 / x.shape[-1], jnp.float32)
    dot = functools.partial(jnp.dot, precision=jax.lax.Precision.HIGHEST)
    return dot(x, weights), dot(x * x, weights)


def layer_norm(
    width: int, rngs: nnx.Rngs, *, dtype: str = "float32", axis: str = "embed"
) -> nnx.LayerNorm:
    """``nnx.LayerNorm`` computing in ``dtype``, its parameters named by logical ``axis``."""
    return nnx.LayerNorm(
        width,
        dtype=jnp.dtype(dtype),
        scale_metadata=axes(axis),
        bias_metadata=axes(axis),
        rngs=rngs,
    )


class ClassifierHead(nnx.Module):
    """LayerNorm -> dropout -> linear to logits.

    The linear layer starts at zero (as big_vision's heads): every class starts
    equally likely, so training begins at loss log(num_classes) whatever the seed.
    """

    def __init__(self, width: int, num_classes: int, dropout: float, *, rngs: nnx.Rngs):
        self.norm = layer_norm(width, rngs)
        self.drop = Dropout(dropout, rngs=rngs)
        self.linear = nnx.Linear(
            width,
            num_classes,
            kernel_init=nnx.initializers.zeros_init(),
            kernel_metadata=axes("embed", "classes"),
            bias_metadata=axes("classes"),
            rngs=rngs,
        )

    def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
        x = self.drop(self.norm(x.astype(jnp.float32)), deterministic=deterministic)
        return self.linear(x)
