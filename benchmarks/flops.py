"""Analytic cost of one train step of the fused model: FLOPs and memory, per config.

FLOPs count the matrix products alone (2 x multiply-adds), split into the dense layers
(every Linear/LinearGeneral of the keypoint streams, the Transformers, the projections,
the fusion and the heads) and attention's two products (QK^T and PV over the full,
padded length). Two totals:

- ``model``: forward x 3, the usual basis of MFU (a backward costs two forwards; no
  recomputation counted).
- ``executed``: what the compiled step does. The backward of a dense layer is two
  products (input and weight gradients), one where its input needs no gradient (the
  keypoint embedding reads the batch). Attention's backward is four products after
  autodiff through a materialised softmax (``reference``, ``xla``, ``dense`` over
  heads wider than 32) and five with a recomputing backward (``blockwise``, ``ring``,
  ``cudnn``'s flash kernel, ``dense`` up to 32-wide heads), which first redoes QK^T.
  Rematerialised blocks (``config.model.remat``: the Transformer blocks and the
  keypoint streams) run their forward once more in the backward.

Memory, in bytes: parameters, gradients and AdamW's two moments (all float32), and the
activations the backward keeps, per component and in total, with and without remat.
The activation figures are an estimate from the layers' saved tensors (the classic
count for a pre-norm block: about 34 x width bytes per token in 16-bit compute,
attention keeping only its output and log-sum-exp), not XLA's buffer assignment.

    python benchmarks/flops.py                    # the table for 4k..64k frames, bf16
    python benchmarks/flops.py --json out.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import ml_collections

# Joints per keypoint stream (hemo_jax.models.keypoints.STREAMS: body 25, face 70,
# both hands 2 x 21) and per-joint input features (x, y, confidence, 2 offsets).
STREAM_JOINTS = (25, 70, 42)
JOINT_FEATURES = 5
NUM_CLASSES = 2
RECOMPUTING_BACKWARD = ("blockwise", "ring", "cudnn")
F32 = 4
# The concat fusion's MLP: FusionConfig's own width (the experiment layer does not pass the
# model's mlp_ratio to it).
FUSION_MLP_RATIO = 4
# Saved tensors of one pre-norm Transformer block per token, in units of width x
# bytes-per-element: block input, LN1 output, q, k, v, attention output, the residual
# after attention, LN2 output (8), plus the MLP's up output and GELU output (2 x
# mlp_ratio).
BLOCK_SAVED_WIDTHS = 8
# One joint block of a keypoint stream, per joint, in units of channels (float32):
# LN1 in/out, token-mixing hidden before/after GELU (2 x 2), its output, LN2 in/out,
# the MLP hidden before/after GELU (2 x 2).
JOINT_BLOCK_SAVED_CHANNELS = 13


@dataclasses.dataclass(frozen=True)
class Shapes:
    """What the cost depends on, read off a training config."""

    batch: int
    frames: int
    images: int
    tokens: int
    width: int
    depth: int
    heads: int
    mlp: int
    channels: int
    joint_depth: int
    stream_width: int
    image_dim: int
    vocab: int
    compute_bytes: int

    @classmethod
    def of(cls, config: ml_collections.ConfigDict, vocab: int = 8192) -> Shapes:
        m, d = config.model, config.data
        if m.keypoint_backbone != "mlp" or m.fusion != "concat" or m.text_encoder:
            raise ValueError(
                "the analytic model covers the mlp keypoint backbone, concat fusion and the "
                f"hashing-token text encoder; got backbone {m.keypoint_backbone!r}, fusion "
                f"{m.fusion!r}, text_encoder {m.text_encoder!r}"
            )
        if tuple(sorted(config.branches)) != ("image", "keypoints", "text"):
            raise ValueError(f"the analytic model is of the fused model; got {config.branches}")
        compute = {"float32": 4, "bfloat16": 2, "float16": 2}.get(config.train.compute_dtype)
        if compute is None:
            raise ValueError(f"train.compute_dtype {config.train.compute_dtype!r} not known")
        return cls(
            batch=d.batch_size,
            frames=d.max_frames,
            images=d.max_images,
            tokens=d.max_text_tokens,
            width=m.width,
            depth=m.depth,
            heads=m.heads,
            mlp=int(m.width * m.mlp_ratio),
            channels=m.keypoint_channels,
            joint_depth=m.keypoint_depth,
            stream_width=m.keypoint_stream_width,
            image_dim=m.image_feature_dim,
            vocab=vocab,
            compute_bytes=compute,
        )

    @property
    def sequences(self) -> dict[str, int]:
        """Tokens per sequence of each branch's Transformer."""
        return {"keypoints": self.frames, "image": self.images, "text": self.tokens}


# --- parameters -------------------------------------------------------------------


def _linear_params(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def _encoder_params(s: Shapes) -> int:
    w = s.width
    block = 4 * _linear_params(w, w) + 2 * 2 * w
    block += _linear_params(w, s.mlp) + _linear_params(s.mlp, w)
    return s.depth * block + 2 * w  # the final LayerNorm


def _head_params(width: int) -> int:
    return 2 * width + _linear_params(width, NUM_CLASSES)


def _stream_params(s: Shapes, joints: int) -> int:
    c = s.channels
    block = 2 * 2 * c  # two LayerNorms
    block += _linear_params(joints, 2 * joints) + _linear_params(2 * joints, joints)  # mixing
    block += _linear_params(c, 2 * c) + _linear_params(2 * c, c)  # channel MLP
    embed = _linear_params(JOINT_FEATURES, c) + joints * c
    return embed + s.joint_depth * block + 2 * c + _linear_params(joints * c, s.stream_width)


def param_count(s: Shapes) -> dict[str, int]:
    w = s.width
    encoder, head = _encoder_params(s), _head_params(w)
    streams = sum(_stream_params(s, j) for j in STREAM_JOINTS)
    counts = {
        "keypoints": streams + _linear_params(3 * s.stream_width, w) + encoder + head,
        "image": 2 * s.image_dim + _linear_params(s.image_dim, w) + encoder + head,
        "text": s.vocab * w + encoder + _linear_params(w, w) + head,
        "fusion": _linear_params(3 * w, w) + 2 * w + _linear_params(w, FUSION_MLP_RATIO * w)
        + _linear_params(FUSION_MLP_RATIO * w, w) + head,
    }  # fmt: skip
    counts["total"] = sum(counts.values())
    return counts


# --- FLOPs --------------------------------------------------------------------------


def _mm(m: int, k: int, n: int) -> int:
    return 2 * m * k * n


def encoder_dense(s: Shapes, tokens: int) -> int:
    """Forward FLOPs of one sequence's Transformer encoder: its dense layers."""
    w = s.width
    per_token = 4 * _mm(1, w, w) + _mm(1, w, s.mlp) + _mm(1, s.mlp, w)
    return s.depth * tokens * per_token


def encoder_attention(s: Shapes, tokens: int) -> int:
    """Forward FLOPs of one sequence's Transformer encoder: attention's two products."""
    return s.depth * 2 * _mm(tokens, s.width, tokens)  # QK^T and PV, over all heads


def stream_dense(s: Shapes, joints: int) -> tuple[int, int]:
    """(forward FLOPs per frame, of which the embedding, whose input needs no gradient)."""
    c = s.channels
    embed = _mm(joints, JOINT_FEATURES, c)
    block = _mm(c, joints, 2 * joints) + _mm(c, 2 * joints, joints)  # token mixing
    block += _mm(joints, c, 2 * c) + _mm(joints, 2 * c, c)  # channel MLP
    return embed + s.joint_depth * block + _mm(1, joints * c, s.stream_width), embed


def forward_flops(s: Shapes) -> dict[str, dict[str, int]]:
    """Forward matmul FLOPs of the whole batch, per component: {"dense", "attention"}."""
    w, b = s.width, s.batch
    head = _mm(1, w, NUM_CLASSES)
    streams = sum(stream_dense(s, j)[0] for j in STREAM_JOINTS)
    per_sample = {
        "keypoint_streams": (s.frames * (streams + _mm(1, 3 * s.stream_width, w)), 0),
        "transformers": (
            sum(encoder_dense(s, t) for t in s.sequences.values()),
            sum(encoder_attention(s, t) for t in s.sequences.values()),
        ),
        "projections": (_mm(s.images, s.image_dim, w) + _mm(s.tokens, w, w), 0),
        "fusion_and_heads": (
            _mm(1, 3 * w, w) + 2 * _mm(1, w, FUSION_MLP_RATIO * w) + 4 * head,
            0,
        ),
    }
    return {
        name: {"dense": b * dense, "attention": b * attn}
        for name, (dense, attn) in per_sample.items()
    }


def train_flops(
    s: Shapes, *, attention_backward: str = "recompute", remat: bool = False
) -> dict[str, Any]:
    """Forward, model (3 x forward) and executed FLOPs of one train step, dense and
    attention apart. ``attention_backward``: "recompute" (5 products in the backward)
    or "autodiff" (4)."""
    if attention_backward not in ("recompute", "autodiff"):
        raise ValueError(f"attention_backward {attention_backward!r}: recompute or autodiff")
    fwd = forward_flops(s)
    dense = sum(c["dense"] for c in fwd.values())
    attn = sum(c["attention"] for c in fwd.values())
    no_input_grad = s.batch * s.frames * sum(stream_dense(s, j)[1] for j in STREAM_JOINTS)
    backward_products = 5 if attention_backward == "recompute" else 4
    executed_dense = 3 * dense - no_input_grad
    executed_attn = attn + attn * backward_products // 2
    if remat:  # the rematerialised parts' forward, once more
        executed_dense += fwd["transformers"]["dense"] + fwd["keypoint_streams"]["dense"]
        executed_attn += attn
    return {
        "forward": {"dense": dense, "attention": attn, "total": dense + attn},
        "model": {"dense": 3 * dense, "attention": 3 * attn, "total": 3 * (dense + attn)},
        "executed": {
            "dense": executed_dense,
            "attention": executed_attn,
            "total": executed_dense + executed_attn,
        },
        "by_component_forward": fwd,
        "attention_backward": attention_backward,
        "remat": remat,
    }


# --- memory -------------------------------------------------------------------------


def _transformer_activations(s: Shapes, tokens: int, remat: bool) -> int:
    """Bytes the backward keeps for one sequence's encoder: per block the saved tensors
    (16- or 32-bit) and attention's float32 log-sum-exp per head; with remat only each
    block's input, plus one block's worth while that block is recomputed."""
    block = tokens * ((BLOCK_SAVED_WIDTHS * s.width + 2 * s.mlp) * s.compute_bytes + s.heads * F32)
    if remat:
        return s.depth * tokens * s.width * s.compute_bytes + block
    return s.depth * block


def _stream_activations(s: Shapes, joints: int, remat: bool) -> int:
    """Bytes per frame of one keypoint stream (float32): its input, and, unless
    rematerialised, the embedding, each block's saved tensors and the final norm."""
    inputs = joints * JOINT_FEATURES * F32
    if remat:
        return inputs
    saved = joints * s.channels * (2 + s.joint_depth * JOINT_BLOCK_SAVED_CHANNELS + 2)
    return inputs + saved * F32


def activation_bytes(s: Shapes, *, remat: bool = False) -> dict[str, int]:
    b = s.batch
    streams = sum(_stream_activations(s, j, remat) for j in STREAM_JOINTS)
    if remat:  # the largest stream's activations, while it is recomputed, for the batch
        largest = max(STREAM_JOINTS)
        streams_peak = b * s.frames * _stream_activations(s, largest, False)
    else:
        streams_peak = 0
    parts = {
        "keypoint_streams": b * s.frames * (streams + 3 * s.stream_width * F32) + streams_peak,
        "keypoint_transformer": b * _transformer_activations(s, s.frames, remat),
        "image_transformer": b * _transformer_activations(s, s.images, remat),
        "text_transformer": b * _transformer_activations(s, s.tokens, remat),
    }
    parts["total"] = sum(parts.values())
    return parts


def memory_bytes(s: Shapes) -> dict[str, Any]:
    """Parameters, gradients and optimizer moments (float32), and the activations with
    and without remat; ``total_*`` adds the two."""
    params = param_count(s)["total"]
    state = {"params": params * F32, "grads": params * F32, "adam_moments": 2 * params * F32}
    state["total"] = sum(state.values())
    no_remat, with_remat = activation_bytes(s, remat=False), activation_bytes(s, remat=True)
    return {
        "state": state,
        "activations": no_remat,
        "activations_remat": with_remat,
        "total": state["total"] + no_remat["total"],
        "total_remat": state["total"] + with_remat["total"],
    }


def longest_frames(
    config: ml_collections.ConfigDict, memory: float, *, remat: bool, quantum: int = 1024
) -> int:
    """The most keypoint frames (a multiple of ``quantum``) whose estimated total fits in
    ``memory`` bytes, the other settings as in ``config``; 0 if none does."""
    key = "total_remat" if remat else "total"
    best, frames = 0, quantum
    while frames <= 2**24:
        c = ml_collections.ConfigDict(config.to_dict())
        c.data.max_frames = frames
        if memory_bytes(Shapes.of(c))[key] > memory:
            break
        best, frames = frames, frames + quantum
    return best


# --- the benchmark's model ----------------------------------------------------------


def gpu_config(frames: int, *, batch: int = 4, width: int = 256, heads: int = 4, depth: int = 4):
    """The fused model the GPU train-step benchmark runs: the demo config widened."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from configs import demo

    c = demo.get_config("fused")
    c.data.batch_size, c.data.max_frames = batch, frames
    c.data.max_images, c.data.max_text_tokens = 128, 192
    c.model.width, c.model.heads, c.model.depth = width, heads, depth
    c.train.compute_dtype = "bfloat16"
    return c


def table(lengths: list[int], peaks: dict[str, float]) -> tuple[str, list[dict[str, Any]]]:
    rows, lines = (
        [],
        [
            "| frames | dense TFLOP (model) | attention TFLOP (model) | attention share | "
            "executed TFLOP (no remat / remat) | activations GB (no remat / remat) | "
            "state GB | ms at " + " / ".join(f"{k} peak" for k in peaks) + " |",
            "|---|---|---|---|---|---|---|---|",
        ],
    )
    for frames in lengths:
        s = Shapes.of(gpu_config(frames))
        flops, flops_remat = train_flops(s), train_flops(s, remat=True)
        mem = memory_bytes(s)
        model = flops["model"]
        row = {
            "frames": frames,
            "flops": flops,
            "flops_remat": flops_remat,
            "memory": mem,
            "params": param_count(s)["total"],
            "ideal_ms": {k: 1e3 * model["total"] / p for k, p in peaks.items()},
        }
        rows.append(row)
        lines.append(
            f"| {frames:,} | {model['dense'] / 1e12:.3f} | {model['attention'] / 1e12:.2f} | "
            f"{model['attention'] / model['total']:.0%} | "
            f"{flops['executed']['total'] / 1e12:.2f} / "
            f"{flops_remat['executed']['total'] / 1e12:.2f} | "
            f"{mem['activations']['total'] / 1e9:.2f} / "
            f"{mem['activations_remat']['total'] / 1e9:.2f} | {mem['state']['total'] / 1e9:.2f} | "
            + " / ".join(f"{v:.1f}" for v in row["ideal_ms"].values())
            + " |"
        )
    return "\n".join(lines), rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384, 32768, 65536])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    peaks = {"H100/H200 data-sheet (989 TFLOP/s)": 989.4e12, "measured H200 (734)": 733.6e12}
    text, rows = table(args.lengths, peaks)
    print(text)
    base = gpu_config(4096)
    for label, memory in (("80 GB (H100)", 80e9), ("141 GB (H200)", 141e9)):
        fits = {r: longest_frames(base, 0.9 * memory, remat=r) for r in (False, True)}
        print(f"longest frames in 90% of {label}: {fits[False]:,} ; with remat {fits[True]:,}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
