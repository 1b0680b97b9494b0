"""Which records a pipeline reads, and how much each one counts.

Everything here works on the manifest's per-record summaries (RecordInfo), so
selecting a split or the pseudo-labelled pool never decodes a record.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections import Counter
from collections.abc import Sequence

import numpy as np

from hemo_jax.contract.schema import SPLITS
from hemo_jax.contract.shards import RecordInfo


@dataclasses.dataclass(frozen=True)
class Selection:
    """Chosen records (global indices into the shard set) with their training target.

    ``target`` is the label, or the pseudo label for records taken from the
    pseudo-labelled pool; ``weight`` is the per-record sample weight.
    """

    indices: np.ndarray  # int64 [N]
    target: np.ndarray  # int32 [N], -1 where a record has neither
    weight: np.ndarray  # float32 [N]
    from_pool: np.ndarray  # bool [N]


PSEUDO_POOLS = ("none", "unlabeled", "test")


def parse_fold(spec: str) -> tuple[int, int] | None:
    """``"k/K"`` (fold k of K, counted from 0) -> ``(k, K)``; ``""`` -> None."""
    if not spec:
        return None
    try:
        k, num = (int(part) for part in spec.split("/"))
    except ValueError:
        raise ValueError(f"fold {spec!r} is not of the form k/K, e.g. 0/2") from None
    if num < 2 or not 0 <= k < num:
        raise ValueError(f"fold {spec!r}: need K >= 2 and 0 <= k < K")
    return k, num


def group_of(info: RecordInfo) -> str:
    """Records of one subject share a fold, so no fold sees the person it is tested on."""
    return f"subject:{info.subject_id}" if info.subject_id else f"video:{info.video_id}"


def assign_folds(
    infos: Sequence[RecordInfo], splits: Sequence[str], num_folds: int
) -> dict[str, int]:
    """Fold of every group (subject) with labelled records in ``splits``.

    Largest groups first (ties in crc32 order, so the result depends on the ids
    alone), each to the fold holding the fewest records so far: subject-disjoint
    folds of near-equal size, the same for every run that asks.
    """
    sizes = Counter(group_of(r) for r in infos if r.split in splits and r.label >= 0)
    if len(sizes) < num_folds:
        raise ValueError(
            f"{len(sizes)} subjects in splits {tuple(splits)}: too few for {num_folds} folds"
        )
    order = sorted(sizes, key=lambda g: (-sizes[g], zlib.crc32(g.encode()), g))
    load = [0] * num_folds
    folds = {}
    for group in order:
        fold = min(range(num_folds), key=lambda f: (load[f], f))
        folds[group] = fold
        load[fold] += sizes[group]
    return folds


def validation_groups(
    infos: Sequence[RecordInfo], carve_from: Sequence[str], fraction: float
) -> set[str]:
    """Groups (subjects) carved out of the labelled records of ``carve_from`` as the
    validation split: fold 0 of ``round(1 / fraction)`` subject-disjoint folds
    (``assign_folds``), so the carve depends on the ids alone, and no subject is both
    trained on and used to choose checkpoints. ``fraction`` 0 carves nothing."""
    if fraction == 0:
        return set()
    if not 0 < fraction < 1:
        raise ValueError(f"val_fraction {fraction} must be in [0, 1)")
    num = max(2, round(1 / fraction))
    try:
        folds = assign_folds(infos, carve_from, num)
    except ValueError as e:
        raise ValueError(
            f"val_fraction {fraction} carves one of {num} subject-disjoint folds: {e}; "
            "raise the fraction, or set data.val_fraction=0 and name another eval_split"
        ) from None
    return {g for g, f in folds.items() if f == 0}


def select(
    infos: Sequence[RecordInfo],
    *,
    splits: Sequence[str],
    val_fraction: float = 0.0,
    val_from: Sequence[str] = ("train",),
    pseudo_pool: str = "none",
    min_pseudo_confidence: float = 0.0,
    confidence_weighting: bool = True,
    balance_classes: bool = False,
    balanced_sampling: bool = False,
    hold_out: tuple[int, int] | None = None,
) -> Selection:
    """Records whose split is in ``splits``, plus the pseudo-labelled pool if asked.

    ``pseudo_pool`` names the split the pool comes from: ``unlabeled`` (videos
    without a label), or ``test`` (transductive, as the published method did:
    the test videos are trained on with their pseudo labels only; their true
    labels are used for evaluation alone). A pool record needs a pseudo label
    with ``pseudo_confidence >= min_pseudo_confidence``; its weight is
    its confidence when ``confidence_weighting``, else 1.
    Labelled records weigh 1, records with no target 0.

    ``balance_classes`` scales each class's weights so that every class carries
    the same share of the summed weight (a class-weighted loss; the iMiGUE whole
    set is 258 win / 101 lose). ``balanced_sampling`` instead repeats records
    of the smaller classes until every class has as many records as the largest.

    ``val_fraction > 0`` moves the labelled records of ``val_from`` whose subject is in
    ``validation_groups`` to the split ``val`` (beside any record written as ``val``):
    out of those splits, into ``val``.

    ``hold_out=(k, K)`` leaves out the labelled records of ``splits`` whose subject
    is in fold k of K (``assign_folds``): a run trained so predicts those records
    out of fold, for the stacked fusion. The pool is not split.
    """
    unknown = set(splits) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown splits {sorted(unknown)}; expected some of {SPLITS}")
    if pseudo_pool not in PSEUDO_POOLS:
        raise ValueError(f"pseudo_pool {pseudo_pool!r} not one of {PSEUDO_POOLS}")
    if pseudo_pool in splits:
        raise ValueError(f"pseudo_pool {pseudo_pool!r} is also a training split")
    carved = validation_groups(infos, val_from, val_fraction)

    def split_of(r: RecordInfo) -> str:
        moved = r.split in val_from and r.label >= 0 and group_of(r) in carved
        return "val" if moved else r.split

    held_out: set[str] = set()
    if hold_out is not None:
        k, num = hold_out
        held_out = {g for g, f in assign_folds(infos, splits, num).items() if f == k}
    rows: list[tuple[int, int, float, bool]] = []
    for i, r in enumerate(infos):
        split = split_of(r)
        if split in splits and r.label >= 0 and group_of(r) in held_out:
            continue
        if split in splits:
            rows.append((i, r.label, 1.0 if r.label >= 0 else 0.0, False))
        elif (
            r.split == pseudo_pool
            and r.pseudo_label >= 0
            and r.pseudo_confidence >= min_pseudo_confidence
        ):
            w = r.pseudo_confidence if confidence_weighting else 1.0
            rows.append((i, r.pseudo_label, w, True))
    if not rows:
        held = dict(Counter(r.split for r in infos))
        raise ValueError(f"no records in splits {tuple(splits)} (the shard set holds {held})")
    indices, target, weight, pool = (np.asarray(c) for c in zip(*rows, strict=True))
    weight = weight.astype(np.float32)
    labelled = target >= 0
    counts = Counter(target[labelled].tolist())
    if balance_classes:
        # Balance the summed weights, not the counts: pool records weigh their confidence.
        totals = {cls: float(weight[target == cls].sum()) for cls in counts}
        grand = sum(totals.values())
        for cls, total in totals.items():
            if total > 0:
                weight[target == cls] *= grand / (len(totals) * total)
    if balanced_sampling and counts:
        largest = max(counts.values())
        order = [np.flatnonzero(~labelled)]
        for cls in sorted(counts):
            members = np.flatnonzero(target == cls)
            order.append(np.resize(members, largest))  # cycles through the class
        keep = np.sort(np.concatenate(order))
        indices, target, weight, pool = indices[keep], target[keep], weight[keep], pool[keep]
    return Selection(
        indices=indices.astype(np.int64),
        target=target.astype(np.int32),
        weight=weight,
        from_pool=pool.astype(bool),
    )
