"""The research-question tables from the runs' per-video test predictions.

Each cell: balanced accuracy, mean ± sd over every (corpus, training seed) run. Each
row against its table's first row (the reference), on the same test videos: the
paired bootstrap of the difference (resolved when its 95% interval excludes 0) and
the exact McNemar test on each video's seed-averaged prediction, pooled over corpora.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import html
import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from hemo_jax.ablation import stats  # noqa: E402
from hemo_jax.ablation.grid import (  # noqa: E402
    LABELER,
    RUN_NAMES,  # noqa: E402
    Table,
)
from hemo_jax.ablation.runner import Job  # noqa: E402
from hemo_jax.contract import atomic  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Predictions:
    """One run's test videos: ids, true labels, the labeler's and the model's P(win)."""

    video_ids: tuple[str, ...]
    labels: np.ndarray
    pseudo: np.ndarray
    probability: np.ndarray


def read_predictions(path: Path) -> Predictions:
    with open(path, newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: r["video_id"])
    return Predictions(
        video_ids=tuple(r["video_id"] for r in rows),
        labels=np.array([int(r["label"]) for r in rows]),
        pseudo=np.array([int(r["pseudo_label"]) for r in rows]),
        probability=np.array([float(r["probability_win"]) for r in rows]),
    )


@dataclasses.dataclass(frozen=True)
class Row:
    label: str
    run: str
    accuracies: tuple[float, ...]  # balanced accuracy of every (corpus, seed) run
    versus: stats.PairedDifference | None  # None for the reference
    mcnemar_p: float | None
    discordant: tuple[int, int] | None  # (row right & reference wrong, the reverse)

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracies)) if self.accuracies else float("nan")

    @property
    def sd(self) -> float:
        return float(np.std(self.accuracies, ddof=1)) if len(self.accuracies) > 1 else 0.0

    @property
    def verdict(self) -> str:
        if self.versus is None:
            return "reference"
        if not self.versus.resolved:
            return "within noise"
        return "better (resolved)" if self.versus.difference > 0 else "worse (resolved)"


class Results:
    """Predictions of every finished run, by (run name, corpus, seed)."""

    def __init__(self, out: Path, corpora: Sequence[str], seeds: Sequence[int]):
        self.corpora, self.seeds = tuple(corpora), tuple(seeds)
        self.preds: dict[tuple[str, str, int], Predictions] = {}
        for name, spec in RUN_NAMES.items():
            for corpus in corpora:
                for seed in seeds:
                    path = Job(spec, corpus, "", seed).workdir(out) / "report"
                    if (path / "metrics.json").exists():
                        self.preds[name, corpus, seed] = read_predictions(path / "predictions.csv")

    def hard(self, run: str, corpus: str, seed: int) -> Predictions | None:
        """A run's predictions with hard 0/1 probabilities for the labeler row."""
        if run != LABELER:
            return self.preds.get((run, corpus, seed))
        full = self.preds.get(("full", corpus, seed))
        if full is None:
            return None
        return dataclasses.replace(full, probability=full.pseudo.astype(float))


def _pairs(results: Results, run: str, reference: str, corpus: str):
    """Seeds where both ran, on the test videos both predicted: labels, [S, N] each."""
    a, b = [], []
    labels = None
    for seed in results.seeds:
        pa, pb = results.hard(run, corpus, seed), results.hard(reference, corpus, seed)
        if pa is None or pb is None:
            continue
        if pa.video_ids != pb.video_ids:
            raise ValueError(f"{run} and {reference} predicted different test videos ({corpus})")
        labels = pa.labels
        a.append((pa.probability >= 0.5).astype(int))
        b.append((pb.probability >= 0.5).astype(int))
    if labels is None:
        return None
    return labels, np.array(a), np.array(b)


def build_table(table: Table, results: Results, *, num_resamples: int = 2000) -> list[Row]:
    reference = table.rows[0][1]
    rows = []
    for label, run in table.rows:
        accs = []
        for corpus in results.corpora:
            for seed in results.seeds:
                p = results.hard(run, corpus, seed)
                if p is not None:
                    correct = ((p.probability >= 0.5) == p.labels).astype(float)[None]
                    ones = np.ones((1, len(p.labels)))
                    accs.append(float(stats.balanced_accuracy(p.labels, correct, ones)[0, 0]))
        versus = mcnemar_p = disc = None
        if run != reference:
            corpora = []
            b = c = 0
            for corpus in results.corpora:
                paired = _pairs(results, run, reference, corpus)
                if paired is None:
                    continue
                labels, pa, pb = paired
                corpora.append(stats.Corpus(labels, pa, pb))
                # One vote per video: the seeds' majority (ties to win), so each video
                # counts once in McNemar's test.
                vote_a, vote_b = (pa.mean(0) >= 0.5).astype(int), (pb.mean(0) >= 0.5).astype(int)
                db, dc = stats.discordant(labels, vote_a, vote_b)
                b, c = b + db, c + dc
            if corpora:
                versus = stats.paired_bootstrap(corpora, num_resamples=num_resamples)
                mcnemar_p, disc = stats.mcnemar_exact(b, c), (b, c)
        rows.append(Row(label, run, tuple(accs), versus, mcnemar_p, disc))
    return rows


def _cells(row: Row) -> list[str]:
    n = len(row.accuracies)
    acc = f"{row.mean:.3f} ± {row.sd:.3f} (n={n})" if n else "no runs"
    if row.versus is None:
        return [row.label, acc, "—", "—", "—", row.verdict]
    v = row.versus
    delta = f"{v.difference:+.3f} [{v.low:+.3f}, {v.high:+.3f}]"
    mc = f"{row.mcnemar_p:.3g} ({row.discordant[0]}/{row.discordant[1]})"
    return [row.label, acc, delta, f"{v.p_value:.3g}", mc, row.verdict]


HEADER = [
    "row",
    "balanced accuracy, mean ± sd",
    "Δ vs first row [95% CI]",
    "bootstrap p",
    "McNemar p (row/ref right alone)",
    "",
]


def markdown(tables: Sequence[tuple[Table, list[Row]]], notes: Sequence[str]) -> str:
    out = ["# Research questions", "", *notes, "", "![the tables as a plot](paper.png)", ""]
    for table, rows in tables:
        out += [f"## {table.title}", "", "| " + " | ".join(HEADER) + " |"]
        out.append("|" + "---|" * len(HEADER))
        out += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
        out.append("")
    return "\n".join(out)


def plot(tables: Sequence[tuple[Table, list[Row]]]) -> bytes:
    fig, axes = plt.subplots(
        len(tables), 1, figsize=(8, 1.0 + 0.45 * sum(len(r) for _, r in tables)), squeeze=False
    )
    for ax, (table, rows) in zip(axes[:, 0], tables, strict=True):
        y = np.arange(len(rows))[::-1]
        for yi, row in zip(y, rows, strict=True):
            filled = row.versus is None or row.versus.resolved
            ax.errorbar(
                row.mean, yi, xerr=row.sd, fmt="o", color="C0" if row.versus is None else "C1",
                mfc=None if filled else "white", capsize=3,
            )  # fmt: skip
        ax.axvline(rows[0].mean, color="grey", lw=0.8, ls="--")
        ax.set_yticks(y, [r.label for r in rows], fontsize=8)
        ax.set_title(table.title, fontsize=9, loc="left")
    axes[-1, 0].set_xlabel("balanced accuracy (mean ± sd; hollow: within noise of the first row)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def html_page(tables: Sequence[tuple[Table, list[Row]]], notes: Sequence[str], png: bytes) -> str:
    esc = html.escape
    parts = [
        "<!doctype html><meta charset='utf-8'><title>Research questions</title>",
        "<style>body{font-family:sans-serif;max-width:70em}td,th{padding:2px 8px;"
        "border-bottom:1px solid #ddd;text-align:left}</style>",
        "<h1>Research questions</h1>",
        *(f"<p>{esc(n)}</p>" for n in notes),
        f"<img alt='plot' src='data:image/png;base64,{base64.b64encode(png).decode()}'>",
    ]
    for table, rows in tables:
        parts.append(f"<h2>{esc(table.title)}</h2><table><tr>")
        parts += [f"<th>{esc(h)}</th>" for h in HEADER]
        parts.append("</tr>")
        for row in rows:
            parts.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in _cells(row)) + "</tr>")
        parts.append("</table>")
    return "\n".join(parts) + "\n"


def write_tables(
    out: Path,
    tables: Sequence[Table],
    corpora: Sequence[str],
    seeds: Sequence[int],
    *,
    notes: Sequence[str] = (),
    num_resamples: int = 2000,
) -> str:
    """Writes paper.md, paper.html and paper.png to ``out``; returns the markdown."""
    results = Results(out, corpora, seeds)
    built = [(t, build_table(t, results, num_resamples=num_resamples)) for t in tables]
    notes = [
        f"Corpora: {', '.join(corpora)}; training seeds: {', '.join(map(str, seeds))}. "
        "Balanced accuracy on each corpus's test split; checkpoints chosen (and training "
        "stopped, where train.patience is set) on the validation split carved out of the "
        "training videos.",
        "Δ: the row minus the first row of its table, averaged over seeds and corpora, with "
        "a 95% paired bootstrap interval over test videos; resolved when it excludes 0. "
        "McNemar: exact test on each video's majority prediction over seeds.",
        *notes,
    ]
    text = markdown(built, notes)
    png = plot(built)
    atomic.write_bytes(out / "paper.png", png)
    atomic.write_text(out / "paper.md", text + "\n")
    atomic.write_text(out / "paper.html", html_page(built, notes, png))
    return text
