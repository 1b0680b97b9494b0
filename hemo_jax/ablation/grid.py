"""The research questions as runs and tables.

Every run is one ``hemo_jax.train`` of ``configs/paper.py`` plus one switch, repeated
for every (corpus, training seed); rows of different tables share runs: the full
method's stage-1 runs are RQ1's single-modality rows and RQ2/RQ3's references, and
RQ4's (pretrained, test pool) cell is the full method itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

BRANCHES = ("keypoints", "image", "text")  # configs/paper.py's stage-1 stages
LABELER = "labeler"  # a row read from the full method's predictions: the VLM's verdicts


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One training run: a configs/paper.py stage, its switches, and for stage 2 the run
    each branch starts from."""

    name: str
    stage: str  # keypoints | image | text | fused
    overrides: tuple[str, ...] = ()
    init: tuple[tuple[str, str], ...] = ()  # (branch, run name) for stage 2

    @property
    def needs(self) -> tuple[str, ...]:
        return tuple(run for _, run in self.init)


def _stage2(name: str, *overrides: str, text: str = "s1_text", scratch: bool = False):
    init = () if scratch else (("keypoints", "s1_keypoints"), ("image", "s1_image"), ("text", text))
    return RunSpec(name, "fused", overrides, init)


RUNS: tuple[RunSpec, ...] = (
    *(RunSpec(f"s1_{b}", b) for b in BRANCHES),
    RunSpec("s1_text_transcript", "text", ("--config.data.text_source=transcript",)),
    *(
        RunSpec(f"s1_keypoints_{g}", "keypoints", (f"--config.model.keypoint_backbone={g}",))
        for g in ("gcn", "gat", "gin")
    ),
    RunSpec("s1_keypoints_no_offsets", "keypoints", ("--config.model.keypoint_offsets=False",)),
    RunSpec("s1_keypoints_pooling", "keypoints", ("--config.model.keypoint_temporal=mean",)),
    _stage2("full"),
    _stage2("s2_pool_none", "--config.pseudo.pool=none"),
    _stage2("s2_pool_unlabeled", "--config.pseudo.pool=unlabeled"),
    *(
        _stage2(f"s2_scratch_{pool}", "--config.from_stage1=False", f"--config.pseudo.pool={pool}",
                scratch=True)
        for pool in ("none", "unlabeled", "test")
    ),
    _stage2("s2_text_transcript", "--config.data.text_source=transcript",
            text="s1_text_transcript"),
    _stage2("s2_cross_attention", "--config.model.fusion=cross_attention"),
)  # fmt: skip
RUN_NAMES = {r.name: r for r in RUNS}


@dataclasses.dataclass(frozen=True)
class Table:
    key: str
    title: str
    rows: tuple[tuple[str, str], ...]  # (label, run name or LABELER); the first: reference


TABLES: tuple[Table, ...] = (
    Table(
        "rq1",
        "RQ1: the full method against each modality alone and its labeler (student vs teacher)",
        (
            ("full method", "full"),
            ("keypoints alone (stage 1)", "s1_keypoints"),
            ("image alone (stage 1)", "s1_image"),
            ("text alone (stage 1)", "s1_text"),
            ("the labeler's verdicts (VLM)", LABELER),
        ),
    ),
    Table(
        "rq2",
        "RQ2: the keypoint backbone (keypoint branch alone)",
        (
            ("MLP (the method's)", "s1_keypoints"),
            ("GCN", "s1_keypoints_gcn"),
            ("GAT", "s1_keypoints_gat"),
            ("GIN", "s1_keypoints_gin"),
        ),
    ),
    Table(
        "rq3",
        "RQ3: motion and time (keypoint branch alone)",
        (
            ("offsets on, long-sequence Transformer (the method's)", "s1_keypoints"),
            ("offsets off", "s1_keypoints_no_offsets"),
            ("per-frame pooling instead of the Transformer", "s1_keypoints_pooling"),
        ),
    ),
    Table(
        "rq4",
        "RQ4: stage-1 pretraining x pseudo-labelled pool",
        (
            ("pretrained, pool = test (the full method)", "full"),
            ("pretrained, pool = none", "s2_pool_none"),
            ("pretrained, pool = unlabeled", "s2_pool_unlabeled"),
            ("from scratch, pool = none", "s2_scratch_none"),
            ("from scratch, pool = unlabeled", "s2_scratch_unlabeled"),
            ("from scratch, pool = test", "s2_scratch_test"),
        ),
    ),
    Table(
        "rq5",
        "RQ5: the VLM's generated text in the text branch",
        (
            ("reasoning + transcript (the full method)", "full"),
            ("transcript only", "s2_text_transcript"),
        ),
    ),
    Table(
        "fusion",
        "Fusion: concatenation against cross-attention",
        (
            ("concat (the full method)", "full"),
            ("cross-attention", "s2_cross_attention"),
        ),
    ),
)


def select(keys: Sequence[str] = ()) -> tuple[tuple[Table, ...], tuple[RunSpec, ...]]:
    """The tables named by ``keys`` (all when empty) and the runs they need, the runs
    their stage-2 runs start from included, in grid order."""
    by_key = {t.key: t for t in TABLES}
    unknown = [k for k in keys if k not in by_key]
    if unknown:
        raise ValueError(f"unknown tables {unknown}; known: {list(by_key)}")
    tables = tuple(by_key[k] for k in keys) if keys else TABLES
    wanted = {"full" if run == LABELER else run for t in tables for _, run in t.rows}
    while extra := {n for r in wanted for n in RUN_NAMES[r].needs} - wanted:
        wanted |= extra
    return tables, tuple(r for r in RUNS if r.name in wanted)


def check_grid() -> None:
    """Every table row and every stage-2 start names a run of the grid."""
    for spec in RUNS:
        missing = [n for n in spec.needs if n not in RUN_NAMES]
        if missing:
            raise ValueError(f"run {spec.name} starts from unknown runs {missing}")
    for table in TABLES:
        for _, run in table.rows:
            if run != LABELER and run not in RUN_NAMES:
                raise ValueError(f"table {table.key} names unknown run {run!r}")
