"""BERT encoder in Flax NNX, numerically matching ``transformers.BertModel``.

Post-norm layers, exact GELU, absolute positions, token types, tanh pooler. The
attention mask (1 = real token) becomes a key-padding mask for
:func:`hemo_jax.models.attention.attention`. The module returns ``(pooled, aux)``:
``pooled`` is HF's ``pooler_output`` (the CLS token after the tanh pooler; the raw
CLS token for a model built without a pooler); ``aux`` holds ``tokens``
(``last_hidden_state``), ``pooled``, ``cls`` (``tokens[:, 0]``) and, on request,
``hidden_states`` (embeddings, then every layer's output).
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


@dataclasses.dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    with_pooler: bool = True
    attention_impl: str | None = None

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} not divisible by {self.num_heads}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} not one of {sorted(ACTIVATIONS)}")

    @classmethod
    def base(cls, **kw: Any) -> BertConfig:
        """bert-base-uncased."""
        return cls(**kw)

    @classmethod
    def minilm_l6(cls, **kw: Any) -> BertConfig:
        """all-MiniLM-L6-v2 (sentence-transformers), 6 layers, 384 wide."""
        return cls(hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536, **kw)

    @classmethod
    def from_hf_config(cls, hf: dict[str, Any], **overrides: Any) -> BertConfig:
        """From a ``config.json`` dict of a bert checkpoint."""
        if hf.get("model_type") != "bert":
            raise ValueError(f"config model_type {hf.get('model_type')!r} is not bert")
        position = hf.get("position_embedding_type", "absolute")
        if position != "absolute":
            raise ValueError(f"config position_embedding_type {position!r}: only absolute")
        if hf.get("is_decoder", False):
            raise ValueError(
                "config is_decoder is true: only the bidirectional encoder is supported"
            )
        kw = dict(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"],
            intermediate_size=hf["intermediate_size"],
            max_position_embeddings=hf.get("max_position_embeddings", 512),
            type_vocab_size=hf.get("type_vocab_size", 2),
            layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
            hidden_act=hf.get("hidden_act", "gelu"),
        )
        kw.update(overrides)
        return cls(**kw)


class BertAttention(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.num_heads = cfg.num_heads
        self.impl = cfg.attention_impl
        # Query, key and value in one [D, 3D] projection: one large matmul instead of
        # three (the loader concatenates the checkpoint's three).
        self.qkv = nnx.Linear(d, 3 * d, rngs=rngs)
        self.out = nnx.Linear(d, d, rngs=rngs)

    def __call__(self, x: jax.Array, key_mask: jax.Array | None) -> jax.Array:
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        out = attention(q, k, v, kv_mask=key_mask, implementation=self.impl)
        return self.out(out.reshape(b, t, d))


class BertLayer(nnx.Module):
    """Post-norm block: LN(x + attn(x)), then LN(x + mlp(x))."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        d, eps = cfg.hidden_size, cfg.layer_norm_eps
        self.attention = BertAttention(cfg, rngs=rngs)
        self.attention_norm = LayerNorm(d, epsilon=eps)
        self.intermediate = nnx.Linear(d, cfg.intermediate_size, rngs=rngs)
        self.output = nnx.Linear(cfg.intermediate_size, d, rngs=rngs)
        self.output_norm = LayerNorm(d, epsilon=eps)
        self.act = ACTIVATIONS[cfg.hidden_act]

    def __call__(self, x: jax.Array, key_mask: jax.Array | None) -> jax.Array:
        x = self.attention_norm(x + self.attention(x, key_mask))
        return self.output_norm(x + self.output(self.act(self.intermediate(x))))


class BertModel(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d = cfg.hidden_size
        self.word_embeddings = nnx.Embed(cfg.vocab_size, d, rngs=rngs)
        self.position_embeddings = nnx.Embed(cfg.max_position_embeddings, d, rngs=rngs)
        self.token_type_embeddings = nnx.Embed(cfg.type_vocab_size, d, rngs=rngs)
        self.embeddings_norm = LayerNorm(d, epsilon=cfg.layer_norm_eps)
        self.layers = nnx.List([BertLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.pooler = nnx.Linear(d, d, rngs=rngs) if cfg.with_pooler else None

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
        *,
        return_hidden_states: bool = False,
    ) -> tuple[jax.Array, dict[str, Any]]:
        if input_ids.ndim != 2:
            raise ValueError(f"expected input_ids [B, T], got shape {input_ids.shape}")
        seq_len = input_ids.shape[1]
        if seq_len > self.cfg.max_position_embeddings:
            raise ValueError(
                f"sequence length {seq_len} exceeds max_position_embeddings "
                f"{self.cfg.max_position_embeddings}"
            )
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = (
            self.word_embeddings(input_ids)
            + self.token_type_embeddings(token_type_ids)
            + self.position_embeddings(jnp.arange(seq_len))[None]
        )
        x = self.embeddings_norm(x)
        key_mask = None if attention_mask is None else attention_mask.astype(bool)
        hidden = [x]
        for layer in self.layers:
            x = layer(x, key_mask)
            hidden.append(x)
        cls = x[:, 0]
        pooled = jnp.tanh(self.pooler(cls)) if self.pooler is not None else cls
        aux = {"tokens": x, "pooled": pooled, "cls": cls}
        if return_hidden_states:
            aux["hidden_states"] = hidden
        return pooled, aux


# ---------------------------------------------------------------------------------------
# Loading Hugging Face checkpoints

_L = r"encoder\.layer\.(\d+)\."
_W, _B = r"(?:weight|gamma)", r"(?:bias|beta)"  # old checkpoints name LayerNorm gamma/beta
RULES: tuple[convert.Rule, ...] = (
    convert.Rule(r"embeddings\.word_embeddings\.weight", "word_embeddings.embedding"),
    convert.Rule(r"embeddings\.position_embeddings\.weight", "position_embeddings.embedding"),
    convert.Rule(r"embeddings\.token_type_embeddings\.weight", "token_type_embeddings.embedding"),
    convert.Rule(r"embeddings\.LayerNorm\." + _W, "embeddings_norm.scale"),
    convert.Rule(r"embeddings\.LayerNorm\." + _B, "embeddings_norm.bias"),
    convert.Rule(
        _L + r"attention\.self\.(query|key|value)\.weight",
        "layers.{0}.attention.qkv.kernel",
        convert.linear_kernel,
        concat=convert.QKV,
    ),
    convert.Rule(
        _L + r"attention\.self\.(query|key|value)\.bias",
        "layers.{0}.attention.qkv.bias",
        concat=convert.QKV,
    ),
    convert.Rule(
        _L + r"attention\.output\.dense\.weight",
        "layers.{0}.attention.out.kernel",
        convert.linear_kernel,
    ),
    convert.Rule(_L + r"attention\.output\.dense\.bias", "layers.{0}.attention.out.bias"),
    convert.Rule(_L + r"attention\.output\.LayerNorm\." + _W, "layers.{0}.attention_norm.scale"),
    convert.Rule(_L + r"attention\.output\.LayerNorm\." + _B, "layers.{0}.attention_norm.bias"),
    convert.Rule(
        _L + r"intermediate\.dense\.weight", "layers.{0}.intermediate.kernel", convert.linear_kernel
    ),
    convert.Rule(_L + r"intermediate\.dense\.bias", "layers.{0}.intermediate.bias"),
    convert.Rule(_L + r"output\.dense\.weight", "layers.{0}.output.kernel", convert.linear_kernel),
    convert.Rule(_L + r"output\.dense\.bias", "layers.{0}.output.bias"),
    convert.Rule(_L + r"output\.LayerNorm\." + _W, "layers.{0}.output_norm.scale"),
    convert.Rule(_L + r"output\.LayerNorm\." + _B, "layers.{0}.output_norm.bias"),
    convert.Rule(r"pooler\.dense\.weight", "pooler.kernel", convert.linear_kernel),
    convert.Rule(r"pooler\.dense\.bias", "pooler.bias"),
)
# Task-head checkpoints (BertForPreTraining, ...) put the encoder under "bert."; the
# heads and the constant position_ids buffer are not part of this model.
SOURCE_PREFIX = r"(?:bert\.)?"
IGNORE = (r"^cls\.", r"^classifier\.", r"^qa_outputs\.", r"embeddings\.position_ids$")


def load_bert(
    path_or_repo: str | os.PathLike,
    *,
    dtype: Any = jnp.float32,
    cache_dir: str | None = None,
    **config_overrides: Any,
) -> BertModel:
    """A BERT encoder from a Hugging Face checkpoint directory or a cached repo id.

    Pass ``with_pooler=False`` for checkpoints saved without the pooler; the pooler is
    otherwise required (strict loading).
    """
    directory = convert.resolve_checkpoint(path_or_repo, cache_dir=cache_dir)
    cfg = BertConfig.from_hf_config(convert.read_config(directory), **config_overrides)
    ignore = IGNORE if cfg.with_pooler else (*IGNORE, r"^(?:bert\.)?pooler\.")
    return convert.load_into_model(
        lambda: BertModel(cfg, rngs=nnx.Rngs(0)),
        convert.read_checkpoint(directory),
        RULES,
        ignore=ignore,
        source_prefix=SOURCE_PREFIX,
        source=str(directory),
        dtype=dtype,
    )


def tokenize(
    texts: Sequence[str], tokenizer: Any, max_length: int, *, pad_to_max_length: bool = True
) -> dict[str, np.ndarray]:
    """Token ids, attention mask and token type ids as int32 numpy ``[N, T]``.

    ``tokenizer`` is ``transformers.AutoTokenizer.from_pretrained(checkpoint_dir)``.
    Padding to ``max_length`` keeps shapes static (one compilation); otherwise pad to the
    longest text. Longer texts are truncated.
    """
    if isinstance(texts, str):
        raise TypeError("tokenize expects a sequence of texts, got one str")
    enc = tokenizer(
        list(texts),
        padding="max_length" if pad_to_max_length else "longest",
        truncation=True,
        max_length=max_length,
        return_tensors="np",
        return_token_type_ids=True,
        return_attention_mask=True,
    )
    return {
        k: np.asarray(enc[k], np.int32) for k in ("input_ids", "attention_mask", "token_type_ids")
    }
