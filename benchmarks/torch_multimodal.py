"""A PyTorch implementation of hemo_jax's fused multimodal classifier, for benchmarks only.

It mirrors ``hemo_jax.models`` (``hemo_jax.experiment.model.model_fn`` of a stage-2 config with the
keypoint, image and text branches and concat fusion) layer for layer, so the train
step of both frameworks does the same arithmetic on the same shapes:

- keypoint branch: per-joint (x, y, conf, dx, dy), zeroed where confidence is 0;
  three streams (body 25, face 70, hands 42), each: linear embedding + learned joint
  embedding, pre-norm MLP-Mixer blocks over joints (token mixing J -> 2J -> J, then
  channel MLP C -> 2C -> C, each ``x + Drop(f(LN(x)))``), LN, readout of J*C to the
  stream width; concatenated streams -> linear -> Transformer over frames -> head.
- image branch: LN -> linear -> Transformer -> head.
- text branch: token embedding -> Transformer -> linear -> masked mean -> head.
- Transformer: pre-norm blocks (``x + Drop(Attn(LN(x)))``, ``x + Drop(MLP(LN(x)))``),
  rotary positions (rotate-half) on queries and keys, key-padding mask, final LN,
  masked mean pooling. Attention is ``F.scaled_dot_product_attention``.
- concat fusion over branches in sorted name order (image, keypoints, text):
  linear -> ``x + Drop(MLP(LN(x)))`` -> head. Head: LN -> dropout -> linear (zero init).
- GELU is the tanh approximation (``jax.nn.gelu``'s default); LayerNorm epsilon 1e-6
  (flax's default).

Initialisation follows PyTorch's defaults except the zero-initialised head and the
normal(0.02) joint embeddings; it does not affect the cost of a step.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

LN_EPS = 1e-6
STREAMS = {"body": 25, "face": 70, "hands": 42}
BODY, FACE, LEFT_HAND, RIGHT_HAND = slice(0, 25), slice(25, 95), slice(95, 116), slice(116, 137)
BRANCHES = ("image", "keypoints", "text")  # sorted, the fusion's input order


@dataclasses.dataclass(frozen=True)
class TorchModelConfig:
    width: int = 64
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    keypoint_channels: int = 16
    keypoint_depth: int = 1
    keypoint_stream_width: int = 64
    image_feature_dim: int = 384
    vocab_size: int = 8192
    fusion_mlp_ratio: float = 4.0
    num_classes: int = 2
    rope_base: float = 10_000.0


def gelu(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def layer_norm(width: int) -> nn.LayerNorm:
    return nn.LayerNorm(width, eps=LN_EPS)


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.up, self.down = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(gelu(self.up(x)))


def rope_tables(length: int, head_dim: int, base: float, device) -> tuple[torch.Tensor, ...]:
    half = head_dim // 2
    freqs = base ** (-torch.arange(half, dtype=torch.float32, device=device) / half)
    angles = torch.arange(length, dtype=torch.float32, device=device)[:, None] * freqs
    return torch.cos(angles)[:, None, :], torch.sin(angles)[:, None, :]  # [T, 1, D/2]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x`` [B, T, H, D]; channel i pairs with i + D/2."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = (nn.Linear(width, width) for _ in range(3))
        self.out = nn.Linear(width, width)

    def forward(self, x, mask, cos, sin) -> torch.Tensor:
        b, t, w = x.shape
        h = self.heads

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, h, w // h)

        q = apply_rope(split(self.query(x)), cos, sin).transpose(1, 2)
        k = apply_rope(split(self.key(x)), cos, sin).transpose(1, 2)
        v = split(self.value(x)).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        return self.out(y.transpose(1, 2).reshape(b, t, w))


class EncoderBlock(nn.Module):
    def __init__(self, cfg: TorchModelConfig):
        super().__init__()
        self.norm1, self.norm2 = layer_norm(cfg.width), layer_norm(cfg.width)
        self.attn = SelfAttention(cfg.width, cfg.heads)
        self.mlp = Mlp(cfg.width, int(cfg.width * cfg.mlp_ratio))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, mask, cos, sin) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), mask, cos, sin))
        return x + self.drop(self.mlp(self.norm2(x)))


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    w = mask.to(x.dtype)[..., None]
    return (x * w).sum(1) / w.sum(1).clamp_min(1)


class TransformerEncoder(nn.Module):
    def __init__(self, cfg: TorchModelConfig):
        super().__init__()
        self.cfg = cfg
        self.blocks = nn.ModuleList([EncoderBlock(cfg) for _ in range(cfg.depth)])
        self.norm = layer_norm(cfg.width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = rope_tables(
            x.shape[1], self.cfg.width // self.cfg.heads, self.cfg.rope_base, x.device
        )
        for block in self.blocks:
            x = block(x, mask, cos, sin)
        tokens = self.norm(x)
        return masked_mean(tokens, mask), tokens


class ClassifierHead(nn.Module):
    def __init__(self, width: int, num_classes: int, dropout: float):
        super().__init__()
        self.norm, self.drop = layer_norm(width), nn.Dropout(dropout)
        self.linear = nn.Linear(width, num_classes)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.drop(self.norm(x)))


class TokenMixing(nn.Module):
    """A dense MLP across joints (J -> 2J -> J), shared over channels."""

    def __init__(self, joints: int):
        super().__init__()
        self.mlp = Mlp(joints, 2 * joints)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., J, C]
        return self.mlp(x.transpose(-1, -2)).transpose(-1, -2)


class JointBlock(nn.Module):
    def __init__(self, joints: int, channels: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2 = layer_norm(channels), layer_norm(channels)
        self.mix = TokenMixing(joints)
        self.mlp = Mlp(channels, 2 * channels)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.mix(self.norm1(x)))
        return x + self.drop(self.mlp(self.norm2(x)))


class StreamBackbone(nn.Module):
    """Joint features [B, F, J, 5] -> frame embeddings [B, F, stream_width]."""

    def __init__(self, joints: int, cfg: TorchModelConfig):
        super().__init__()
        c = cfg.keypoint_channels
        self.embed = nn.Linear(5, c)
        self.joint_embed = nn.Parameter(torch.randn(joints, c) * 0.02)
        self.blocks = nn.ModuleList(
            [JointBlock(joints, c, cfg.dropout) for _ in range(cfg.keypoint_depth)]
        )
        self.norm = layer_norm(c)
        self.readout = nn.Linear(joints * c, cfg.keypoint_stream_width)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = self.embed(feats) + self.joint_embed
        for block in self.blocks:
            x = block(x)
        return self.readout(self.norm(x).flatten(-2))


class KeypointBranch(nn.Module):
    def __init__(self, cfg: TorchModelConfig):
        super().__init__()
        self.streams = nn.ModuleDict({n: StreamBackbone(j, cfg) for n, j in STREAMS.items()})
        self.fuse = nn.Linear(len(STREAMS) * cfg.keypoint_stream_width, cfg.width)
        self.encoder = TransformerEncoder(cfg)
        self.head = ClassifierHead(cfg.width, cfg.num_classes, cfg.dropout)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        kp, mask = batch["keypoints"], batch["keypoint_mask"]
        feats = torch.cat([kp, batch["keypoint_offsets"]], dim=-1)
        feats = torch.where(kp[..., 2:3] > 0, feats, torch.zeros((), dtype=feats.dtype))
        parts = {
            "body": feats[:, :, BODY],
            "face": feats[:, :, FACE],
            "hands": torch.cat([feats[:, :, LEFT_HAND], feats[:, :, RIGHT_HAND]], dim=2),
        }
        frames = torch.cat([self.streams[n](parts[n]) for n in STREAMS], dim=-1)
        pooled, _ = self.encoder(self.fuse(frames), mask)
        return self.head(pooled), pooled


class ImageBranch(nn.Module):
    def __init__(self, cfg: TorchModelConfig):
        super().__init__()
        self.in_norm = layer_norm(cfg.image_feature_dim)
        self.proj = nn.Linear(cfg.image_feature_dim, cfg.width)
        self.encoder = TransformerEncoder(cfg)
        self.head = ClassifierHead(cfg.width, cfg.num_classes, cfg.dropout)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.proj(self.in_norm(batch["image_features"]))
        pooled, _ = self.encoder(x, batch["image_mask"])
        return self.head(pooled), pooled


class TextBranch(nn.Module):
    """Hashing-token embedding -> Transformer -> projection -> masked mean -> head."""

    def __init__(self, cfg: TorchModelConfig):
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.width)
        self.encoder = TransformerEncoder(cfg)
        self.proj = nn.Linear(cfg.width, cfg.width)
        self.head = ClassifierHead(cfg.width, cfg.num_classes, cfg.dropout)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        mask = batch["text_mask"]
        _, tokens = self.encoder(self.embed(batch["text_ids"]), mask)
        pooled = masked_mean(self.proj(tokens), mask)
        return self.head(pooled), pooled


class ConcatFusion(nn.Module):
    def __init__(self, cfg: TorchModelConfig):
        super().__init__()
        self.proj = nn.Linear(len(BRANCHES) * cfg.width, cfg.width)
        self.norm = layer_norm(cfg.width)
        self.mlp = Mlp(cfg.width, int(cfg.width * cfg.fusion_mlp_ratio))
        self.drop = nn.Dropout(cfg.dropout)
        self.head = ClassifierHead(cfg.width, cfg.num_classes, cfg.dropout)

    def forward(self, pooled: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.proj(torch.cat([pooled[n] for n in BRANCHES], dim=-1))
        x = x + self.drop(self.mlp(self.norm(x)))
        return self.head(x)


class MultimodalClassifier(nn.Module):
    def __init__(self, cfg: TorchModelConfig):
        super().__init__()
        self.branches = nn.ModuleDict(
            {"image": ImageBranch(cfg), "keypoints": KeypointBranch(cfg), "text": TextBranch(cfg)}
        )
        self.fusion = ConcatFusion(cfg)

    def forward(self, batch: dict[str, torch.Tensor]):
        logits, pooled = {}, {}
        for name in BRANCHES:
            logits[name], pooled[name] = self.branches[name](batch)
        return self.fusion(pooled), logits


def loss_sums(model: MultimodalClassifier, batch, aux_loss_weight: float):
    """The trainer's loss: weighted CE of the fused logits + aux weight x each branch's,
    divided by the batch's weight sum (padding rows weigh 0)."""
    fused, branch_logits = model(batch)
    w = batch["sample_weight"] * batch["valid"].to(torch.float32)
    target = batch["target"].long()

    def weighted_ce(logits: torch.Tensor) -> torch.Tensor:
        return (w * F.cross_entropy(logits, target, reduction="none")).sum()

    total = weighted_ce(fused)
    for logits in branch_logits.values():
        total = total + aux_loss_weight * weighted_ce(logits)
    return total / w.sum().clamp_min(1e-12), fused


def warmup_cosine(lr: float, warmup_steps: int, total_steps: int):
    """optax.warmup_cosine_decay_schedule(0, lr, warmup, total, lr * 0.01) as a LambdaLR factor."""
    warmup = max(warmup_steps, 1)
    decay = max(total_steps, warmup_steps + 1)

    def factor(step: int) -> float:
        if step < warmup:
            return step / warmup
        frac = min((step - warmup) / max(decay - warmup, 1), 1.0)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * frac))

    return factor


def make_optimizer(
    model: nn.Module, *, lr, warmup_steps, total_steps, weight_decay, b1=0.9, b2=0.999
):
    """AdamW with decay on matrices only (as the JAX trainer's mask) + the same schedule."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=lr, betas=(b1, b2), eps=1e-8)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(lr, warmup_steps, total_steps))
    return opt, sched


def make_train_step(model, opt, sched, *, clip_norm: float, aux_loss_weight: float):
    """One step: forward, backward, global-norm clipping, AdamW, schedule; returns
    (loss, gradient norm) as tensors."""
    params = [p for p in model.parameters() if p.requires_grad]

    def step(batch):
        opt.zero_grad(set_to_none=True)
        loss, _ = loss_sums(model, batch, aux_loss_weight)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip_norm)
        opt.step()
        sched.step()
        return loss.detach(), grad_norm

    return step


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
