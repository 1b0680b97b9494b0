"""What the classifier is trained to do and how it predicts: the loss and the probabilities.

The only code that reads the classifier's ``aux["branch_logits"]`` (each branch's own
logits in the fused model); the trainer gets these as functions.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from hemo_jax.training import metrics
from hemo_jax.training.trainer import LossFn


def loss_fn(aux_loss_weight: float) -> LossFn:
    """Weighted cross-entropy sums of the fused logits, plus ``aux_loss_weight`` times each
    branch's own (stage 2).

    The model reads ``inputs`` (the batch in the compute dtype); targets and weights come
    from ``batch`` in full precision. The data pipeline sets each example's ``target`` (its
    label, or its pseudo label for the pseudo-labelled pool) and ``sample_weight`` (class
    weights, labeler confidence, zero for padding).
    """
    if aux_loss_weight < 0:
        raise ValueError(f"aux_loss_weight must be >= 0, got {aux_loss_weight}")

    def loss(
        model: nnx.Module, inputs: Mapping[str, jax.Array], batch: Mapping[str, jax.Array]
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        logits, aux = model(inputs, deterministic=False)
        target, weight, valid = batch["target"], batch["sample_weight"], batch["valid"]
        sums = metrics.classification_sums(logits, target, weight, valid)
        loss_sum = sums["loss_sum"]
        if aux_loss_weight:
            for branch_logits in aux["branch_logits"].values():
                extra = metrics.classification_sums(branch_logits, target, weight, valid)
                loss_sum = loss_sum + aux_loss_weight * extra["loss_sum"]
        return loss_sum, sums

    return loss


def _p_win(logits: jax.Array) -> jax.Array:
    return jax.nn.softmax(logits.astype(jnp.float32))[:, 1]


def predict(model: nnx.Module, inputs: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """P(win) of the prediction (``prob``) and of each branch alone (``prob_<branch>``)."""
    logits, aux = model(inputs, deterministic=True)
    out = {"prob": _p_win(logits)}
    for name, branch_logits in aux["branch_logits"].items():
        out[f"prob_{name}"] = _p_win(branch_logits)
    return out
