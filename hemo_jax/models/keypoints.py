"""Keypoint branch: body, face and hand streams -> per-frame embeddings -> Transformer over time.

Input (what the data pipeline produces), under the keys named in the config:
    keypoints          [B, F, 137, 3]  normalised x, y and confidence (0 where missing)
    keypoint_offsets   [B, F, 137, 2]  inter-frame offsets dx, dy
    keypoint_mask      [B, F]          True for real frames, False for padding
Each joint gets 5 channels (x, y, confidence, dx, dy); joints with zero
confidence are zeroed, so a missing joint carries no stale coordinates.

Streams follow the OpenPose layout of ``hemo_jax.contract.keypoint_layout``: body (BODY_25,
25 joints), face (68 landmarks + 2 pupils), hands (left 21 then right 21, one
stream of 42 joints with two disconnected hand graphs). Each stream has its own
backbone; every backbone is a stack of pre-norm residual blocks over joints,
``x + mix(LN(x))`` then ``x + MLP(LN(x))``, and differs only in ``mix``:

    mlp  token mixing over joints (MLP-Mixer): a learned dense joint-to-joint MLP.
         The default: it learns which joints interact (hands with face, say,
         which the skeleton graph does not link) at the cost of J^2 weights,
         tiny for J <= 70, and keeps each joint's identity, unlike flatten+MLP
         which mixes joints and channels in one J*C-wide layer.
    gcn  normalised propagation D^-1/2 (A + I) D^-1/2 (x W) (Kipf & Welling).
    gat  multi-head attention over graph neighbours and self (Velickovic et al.).
    gin  (1 + eps) x + sum of neighbours, then the block's MLP (Xu et al.).

A readout flattens joints x channels to the stream's frame embedding; the three
are concatenated and projected to the Transformer width, and the long-sequence
Transformer runs over frames. Returns ``(logits, aux)`` with aux {"pooled",
"tokens", "mask"}.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hemo_jax.contract import keypoint_layout
from hemo_jax.models.dropout import Dropout
from hemo_jax.models.layers import ClassifierHead, layer_norm
from hemo_jax.models.partitioning import BSE, axes, shard_activation
from hemo_jax.models.transformer import (
    TransformerConfig,
    TransformerEncoder,
    masked_mean,
)

BACKBONES = ("mlp", "gcn", "gat", "gin")
TEMPORAL = ("transformer", "mean")  # over frames: the Transformer, or per-frame pooling
CHANNELS = 5  # x, y, confidence, dx, dy
GAT_HEADS = 4

# OpenPose BODY_25 limbs (POSE_BODY_25_PAIRS_RENDER): a tree over 25 joints.
BODY_25_EDGES: tuple[tuple[int, int], ...] = (
    (1, 8), (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (8, 9), (9, 10), (10, 11),
    (8, 12), (12, 13), (13, 14), (1, 0), (0, 15), (15, 17), (0, 16), (16, 18),
    (14, 19), (19, 20), (14, 21), (11, 22), (22, 23), (11, 24),
)  # fmt: skip


def _chain(first: int, last: int, *, closed: bool = False) -> tuple[tuple[int, int], ...]:
    edges = tuple((i, i + 1) for i in range(first, last))
    return edges + ((last, first),) if closed else edges


# OpenPose face: the 68-landmark contour chains (iBUG 300-W order), plus the two
# pupils (68 right, 69 left), each linked to every point of its eye's ring.
FACE_70_EDGES: tuple[tuple[int, int], ...] = (
    _chain(0, 16)  # jaw
    + _chain(17, 21)  # right brow
    + _chain(22, 26)  # left brow
    + _chain(27, 30)  # nose bridge
    + _chain(31, 35)  # nostrils
    + _chain(36, 41, closed=True)  # right eye
    + _chain(42, 47, closed=True)  # left eye
    + _chain(48, 59, closed=True)  # outer lips
    + _chain(60, 67, closed=True)  # inner lips
    + tuple((68, i) for i in range(36, 42))
    + tuple((69, i) for i in range(42, 48))
)

# OpenPose hand: wrist 0, then thumb 1-4, index 5-8, middle 9-12, ring 13-16, pinky 17-20.
HAND_21_EDGES: tuple[tuple[int, int], ...] = tuple(
    edge for base in (1, 5, 9, 13, 17) for edge in ((0, base),) + _chain(base, base + 3)
)
_HAND = keypoint_layout.HAND_POINTS
HANDS_42_EDGES = HAND_21_EDGES + tuple((i + _HAND, j + _HAND) for i, j in HAND_21_EDGES)


def _size(part: slice) -> int:
    return part.stop - part.start


# Stream name -> (joints, edges); the joints are the record's, in keypoint_layout's order.
STREAMS: dict[str, tuple[int, tuple[tuple[int, int], ...]]] = {
    "body": (_size(keypoint_layout.BODY), BODY_25_EDGES),
    "face": (_size(keypoint_layout.FACE), FACE_70_EDGES),
    "hands": (_size(keypoint_layout.HANDS), HANDS_42_EDGES),
}


@functools.cache
def adjacency(num_joints: int, edges: tuple[tuple[int, int], ...]) -> np.ndarray:
    """Symmetric 0/1 adjacency [J, J] without self-loops."""
    a = np.zeros((num_joints, num_joints), np.float32)
    for i, j in edges:
        if not (0 <= i < num_joints and 0 <= j < num_joints) or i == j:
            raise ValueError(f"edge ({i}, {j}) is not valid for {num_joints} joints")
        a[i, j] = a[j, i] = 1.0
    return a


@functools.cache
def normalized_adjacency(num_joints: int, edges: tuple[tuple[int, int], ...]) -> np.ndarray:
    """D^-1/2 (A + I) D^-1/2, the GCN propagation matrix."""
    a = adjacency(num_joints, edges) + np.eye(num_joints, dtype=np.float32)
    d = 1.0 / np.sqrt(a.sum(axis=1))
    return (a * d[:, None] * d[None, :]).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class KeypointConfig:
    backbone: str = "mlp"  # one of BACKBONES
    channels: int = 32  # per-joint width inside the backbone
    depth: int = 2  # backbone blocks
    stream_width: int = 128  # each stream's frame embedding
    dropout: float = 0.1
    remat: bool = False  # recompute the per-frame backbones in the backward pass
    # Ablations: offsets False zeroes dx, dy (no motion input; the same parameters);
    # temporal "mean" pools the frame tokens without the Transformer (no order, no context).
    offsets: bool = True
    temporal: str = "transformer"
    num_classes: int = 2
    transformer: TransformerConfig = dataclasses.field(default_factory=TransformerConfig.small)
    keypoints_key: str = "keypoints"
    offsets_key: str = "keypoint_offsets"
    mask_key: str = "keypoint_mask"

    def __post_init__(self):
        if self.backbone not in BACKBONES:
            raise ValueError(f"keypoint backbone {self.backbone!r} is not one of {BACKBONES}")
        if self.temporal not in TEMPORAL:
            raise ValueError(f"keypoint temporal {self.temporal!r} is not one of {TEMPORAL}")
        if self.backbone == "gat" and self.channels % GAT_HEADS:
            raise ValueError(
                f"keypoint channels {self.channels} not divisible by the {GAT_HEADS} GAT heads"
            )

    @classmethod
    def tiny(cls, **kw) -> KeypointConfig:
        defaults = {"channels": 8, "depth": 1, "stream_width": 16, "dropout": 0.0}
        return cls(**{"transformer": TransformerConfig.tiny(depth=1), **defaults, **kw})


def _linear(n_in: int, n_out: int, names: tuple[str, str], rngs: nnx.Rngs, **kw) -> nnx.Linear:
    return nnx.Linear(
        n_in, n_out, kernel_metadata=axes(*names), bias_metadata=axes(names[1]), rngs=rngs, **kw
    )


class TokenMixing(nnx.Module):
    """MLP-Mixer token mixing: a dense MLP across joints, shared over channels."""

    def __init__(self, num_joints: int, cfg: KeypointConfig, *, rngs: nnx.Rngs):
        hidden = 2 * num_joints
        self.up = _linear(num_joints, hidden, ("joints", "joint_hidden"), rngs)
        self.down = _linear(hidden, num_joints, ("joint_hidden", "joints"), rngs)

    def __call__(self, x: jax.Array) -> jax.Array:  # [..., J, C]
        y = jnp.swapaxes(x, -1, -2)
        return jnp.swapaxes(self.down(jax.nn.gelu(self.up(y))), -1, -2)


class GraphConv(nnx.Module):
    """GCN propagation over the fixed skeleton: A_hat (x W)."""

    def __init__(self, num_joints: int, edges, cfg: KeypointConfig, *, rngs: nnx.Rngs):
        self.num_joints, self.edges = num_joints, edges
        self.proj = _linear(cfg.channels, cfg.channels, ("joint_channels", "joint_hidden"), rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        a_hat = jnp.asarray(normalized_adjacency(self.num_joints, self.edges), x.dtype)
        return jnp.einsum("ij,...jc->...ic", a_hat, self.proj(x))


class GraphAttention(nnx.Module):
    """Multi-head GAT: each joint attends over its graph neighbours and itself."""

    def __init__(self, num_joints: int, edges, cfg: KeypointConfig, *, rngs: nnx.Rngs):
        self.num_joints, self.edges, self.heads = num_joints, edges, GAT_HEADS
        c = cfg.channels
        self.proj = _linear(c, c, ("joint_channels", "joint_hidden"), rngs, use_bias=False)
        init = nnx.initializers.normal(1.0 / np.sqrt(c // self.heads))
        shape = (self.heads, c // self.heads)
        self.att_src = nnx.Param(init(rngs.params(), shape), **axes(None, "joint_hidden"))
        self.att_dst = nnx.Param(init(rngs.params(), shape), **axes(None, "joint_hidden"))

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.proj(x)
        h = h.reshape(*h.shape[:-1], self.heads, -1)  # [..., J, H, Dh]
        src = jnp.einsum("...jhd,hd->...hj", h, self.att_src[...])
        dst = jnp.einsum("...ihd,hd->...hi", h, self.att_dst[...])
        scores = jax.nn.leaky_relu(dst[..., :, None] + src[..., None, :], 0.2)  # [..., H, i, j]
        links = adjacency(self.num_joints, self.edges) + np.eye(self.num_joints, dtype=np.float32)
        scores = jnp.where(jnp.asarray(links, bool), scores, -jnp.inf)
        weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(h.dtype)
        out = jnp.einsum("...hij,...jhd->...ihd", weights, h)
        return out.reshape(*x.shape)


class GinAggregate(nnx.Module):
    """GIN aggregation (1 + eps) x_i + sum_j x_j; the block's MLP is GIN's MLP."""

    def __init__(self, num_joints: int, edges, cfg: KeypointConfig, *, rngs: nnx.Rngs):
        self.num_joints, self.edges = num_joints, edges
        self.eps = nnx.Param(jnp.zeros(()), **axes())

    def __call__(self, x: jax.Array) -> jax.Array:
        a = jnp.asarray(adjacency(self.num_joints, self.edges), x.dtype)
        return (1.0 + self.eps[...]) * x + jnp.einsum("ij,...jc->...ic", a, x)


class JointBlock(nnx.Module):
    """x + Drop(mix(LN(x))), then x + Drop(MLP(LN(x))), over [..., joints, channels]."""

    def __init__(self, mix: nnx.Module, cfg: KeypointConfig, *, rngs: nnx.Rngs):
        c = cfg.channels
        self.norm1, self.norm2 = (
            layer_norm(c, rngs, axis="joint_channels"),
            layer_norm(c, rngs, axis="joint_channels"),
        )
        self.mix = mix
        self.up = _linear(c, 2 * c, ("joint_channels", "joint_hidden"), rngs)
        self.down = _linear(2 * c, c, ("joint_hidden", "joint_channels"), rngs)
        self.drop = Dropout(cfg.dropout, rngs=rngs)

    def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
        x = x + self.drop(self.mix(self.norm1(x)), deterministic=deterministic)
        y = self.down(jax.nn.gelu(self.up(self.norm2(x))))
        return x + self.drop(y, deterministic=deterministic)


class StreamBackbone(nnx.Module):
    """One stream: joint features [B, F, J, 5] -> frame embeddings [B, F, stream_width]."""

    def __init__(self, num_joints: int, edges, cfg: KeypointConfig, *, rngs: nnx.Rngs):
        c = cfg.channels
        self.embed = _linear(CHANNELS, c, ("features", "joint_channels"), rngs)
        init = nnx.initializers.normal(0.02)
        self.joint_embed = nnx.Param(
            init(rngs.params(), (num_joints, c)), **axes("joints", "joint_channels")
        )

        def mixer() -> nnx.Module:
            if cfg.backbone == "mlp":
                return TokenMixing(num_joints, cfg, rngs=rngs)
            kind = {"gcn": GraphConv, "gat": GraphAttention, "gin": GinAggregate}[cfg.backbone]
            return kind(num_joints, edges, cfg, rngs=rngs)

        self.blocks = nnx.List([JointBlock(mixer(), cfg, rngs=rngs) for _ in range(cfg.depth)])
        self.norm = layer_norm(c, rngs, axis="joint_channels")
        self.readout = nnx.LinearGeneral(
            (num_joints, c),
            cfg.stream_width,
            axis=(-2, -1),
            kernel_metadata=axes("joints", "joint_channels", "embed"),
            bias_metadata=axes("embed"),
            rngs=rngs,
        )

    def __call__(self, feats: jax.Array, *, deterministic: bool) -> jax.Array:
        x = self.embed(feats) + self.joint_embed[...]
        for block in self.blocks:
            x = block(x, deterministic=deterministic)
        return self.readout(self.norm(x))


class FramePooling(nnx.Module):
    """The per-frame pooling ablation: normalised frame tokens averaged over real frames,
    returned as the Transformer returns them."""

    def __init__(self, width: int, *, rngs: nnx.Rngs):
        self.norm = layer_norm(width, rngs)

    def __call__(
        self, x: jax.Array, mask: jax.Array, *, deterministic: bool
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        tokens = self.norm(x)
        pooled = masked_mean(tokens, mask)
        return pooled, {"tokens": tokens, "pooled": pooled, "mask": mask}


class KeypointBranch(nnx.Module):
    """Three skeleton streams fused per frame, then the Transformer over frames."""

    def __init__(self, cfg: KeypointConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.width, self.num_classes = cfg.transformer.width, cfg.num_classes
        self.streams = nnx.Dict(
            {
                name: StreamBackbone(joints, edges, cfg, rngs=rngs)
                for name, (joints, edges) in STREAMS.items()
            }
        )
        self.fuse = nnx.Linear(
            len(STREAMS) * cfg.stream_width,
            self.width,
            kernel_metadata=axes("features", "embed"),
            bias_metadata=axes("embed"),
            rngs=rngs,
        )
        if cfg.temporal == "transformer":
            self.encoder = TransformerEncoder(cfg.transformer, rngs=rngs)
        else:
            self.encoder = FramePooling(self.width, rngs=rngs)
        self.head = ClassifierHead(self.width, cfg.num_classes, cfg.dropout, rngs=rngs)

    def frame_features(self, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        """Checked inputs -> joint features [B, F, 137, 5] and the frame mask [B, F]."""
        cfg = self.cfg
        for key in (cfg.keypoints_key, cfg.offsets_key, cfg.mask_key):
            if key not in batch:
                raise KeyError(f"keypoint branch needs batch[{key!r}]; got keys {sorted(batch)}")
        kp, off, mask = batch[cfg.keypoints_key], batch[cfg.offsets_key], batch[cfg.mask_key]
        expected = {
            cfg.keypoints_key: (*kp.shape[:2], keypoint_layout.NUM_KEYPOINTS, 3),
            cfg.offsets_key: (*kp.shape[:2], keypoint_layout.NUM_KEYPOINTS, 2),
            cfg.mask_key: kp.shape[:2],
        }
        for key, value in ((cfg.keypoints_key, kp), (cfg.offsets_key, off), (cfg.mask_key, mask)):
            if value.ndim != len(expected[key]) or value.shape != expected[key]:
                raise ValueError(
                    f"batch[{key!r}] has shape {value.shape}, expected {expected[key]} "
                    f"(keypoints [B, F, {keypoint_layout.NUM_KEYPOINTS}, 3], offsets "
                    f"[B, F, {keypoint_layout.NUM_KEYPOINTS}, 2], mask [B, F])"
                )
        # The per-frame backbones are small and run in float32; the Transformer casts
        # the frame tokens to its compute dtype.
        if not cfg.offsets:
            off = jnp.zeros_like(off)
        feats = jnp.concatenate([kp, off], axis=-1).astype(jnp.float32)
        present = kp[..., 2:3] > 0  # a missing joint carries only zeros
        return jnp.where(present, feats, 0.0), mask.astype(bool)

    def __call__(
        self, batch: Mapping[str, jax.Array], *, deterministic: bool
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        feats, mask = self.frame_features(batch)
        parts = {
            "body": feats[:, :, keypoint_layout.BODY],
            "face": feats[:, :, keypoint_layout.FACE],
            "hands": feats[:, :, keypoint_layout.HANDS],  # left then right, adjacent
        }

        def run_stream(stream: StreamBackbone, x: jax.Array) -> jax.Array:
            return stream(x, deterministic=deterministic)

        if self.cfg.remat:
            run_stream = nnx.remat(run_stream)
        frames = jnp.concatenate(
            [run_stream(self.streams[name], parts[name]) for name in STREAMS], axis=-1
        )
        tokens = shard_activation(self.fuse(frames), BSE)
        pooled, aux = self.encoder(tokens, mask, deterministic=deterministic)
        logits = self.head(pooled, deterministic=deterministic)
        return logits, {"pooled": pooled, "tokens": aux["tokens"], "mask": aux["mask"]}
