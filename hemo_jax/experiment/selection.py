"""What chose a run's checkpoint, in words for its report."""

from __future__ import annotations

import ml_collections


def selection_note(config: ml_collections.ConfigDict, split: str) -> str:
    """Which split chose the best checkpoint and stopped training; a warning when it is
    the split reported on (its numbers are then not held out)."""
    chosen = config.data.eval_split
    uses = (
        "the best checkpoint, early stopping"
        if config.train.get("patience", 0)
        else ("the best checkpoint")
    )
    note = f"Evaluations during training ({uses}) on split {chosen!r}"
    if chosen == "val" and config.data.get("val_fraction", 0.0):
        note += (
            f" (a subject-disjoint {config.data.val_fraction:g} of the subjects of "
            f"{', '.join(config.data.train_splits)}, carved out of training)"
        )
    if chosen == split:
        note += "; the same split as reported here, so these numbers are not held out"
    return note + "."
