"""Evaluate a trained workdir: ``python -m hemo_jax.evaluate --workdir W``.

Writes ``W/report/``: metrics.json (each metric with a bootstrap 95% interval),
predictions.csv (per video: id, true label, pseudo label, prediction,
probability, the labeler's reasoning), PNG plots and report.html.
"""

from __future__ import annotations

import os

from absl import app, flags

from hemo_jax.contract.shards import open_shards
from hemo_jax.experiment.experiment import load_trained
from hemo_jax.experiment.selection import selection_note
from hemo_jax.training import metrics, report

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir.", required=True)
_SPLIT = flags.DEFINE_string("split", None, "Split to evaluate (default: the config's test split).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "latest", "latest, best or a step number.")
_OUT = flags.DEFINE_string("out", None, "Report folder (default: WORKDIR/report).")
_BOOTSTRAP = flags.DEFINE_integer(
    "bootstrap", 1000, "Bootstrap resamples for the intervals.", lower_bound=1
)


def evaluate_workdir(
    workdir: str,
    *,
    split: str | None = None,
    checkpoint_step: str = "latest",
    out_dir: str | None = None,
    num_bootstrap: int = 1000,
) -> dict[str, metrics.Interval]:
    trained = load_trained(workdir, checkpoint_step=checkpoint_step)
    config, step = trained.config, trained.step
    split = split or config.data.get("test_split", "test")
    shards = open_shards(config.data.shards)
    pred = trained.experiment.evaluator(shards, trained.mesh, split).predict(trained.model)
    rows = report.video_predictions(shards, pred.record_index, pred.probability)
    rows = [r for r in rows if r.label >= 0]  # evaluation uses true labels only
    if not rows:
        raise ValueError(f"split {split!r} of {config.data.shards} has no labelled videos")
    notes = [
        f"Workdir {workdir}, checkpoint step {step} ({checkpoint_step}); split {split!r}; "
        f"branches {', '.join(config.branches)}; stage {config.stage}.",
        selection_note(config, split),
    ]
    if config.stage == 2 and config.pseudo.pool == "test":
        notes.append(
            "Transductive: the test videos were in training with their pseudo labels (as the "
            "published method did); these metrics use only their true labels."
        )
    elif config.stage == 2 and config.pseudo.pool != "none":
        notes.append(
            f"Pseudo-labelled pool merged into training: the {config.pseudo.pool!r} videos."
        )
    return report.write_report(
        out_dir or os.path.join(workdir, "report"),
        rows,
        title=f"hemo_jax evaluation: {os.path.basename(os.path.abspath(workdir))}",
        notes=notes,
        log=report.read_metrics_log(os.path.join(workdir, "metrics.jsonl")),
        num_bootstrap=num_bootstrap,
    )


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    intervals = evaluate_workdir(
        _WORKDIR.value,
        split=_SPLIT.value,
        checkpoint_step=_CHECKPOINT.value,
        out_dir=_OUT.value,
        num_bootstrap=_BOOTSTRAP.value,
    )
    print(metrics.format_intervals(intervals))


if __name__ == "__main__":
    app.run(main)
