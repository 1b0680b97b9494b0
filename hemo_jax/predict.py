"""Run a trained model on shards: ``python -m hemo_jax.predict --workdir W --shards S --out F.csv``.

Writes one row per video (id, true label if known, pseudo label, prediction,
P(win), the labeler's reasoning) for every record of the chosen splits. A
workdir of ``hemo_jax.stack`` predicts with its full stage-1 runs and the
fitted stacked fusion.
"""

from __future__ import annotations

from absl import app, flags

from hemo_jax.contract.schema import SPLITS
from hemo_jax.contract.shards import open_shards
from hemo_jax.experiment import stack
from hemo_jax.experiment.experiment import load_trained
from hemo_jax.training import report

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "A training workdir or a stacked one.", required=True
)
_SHARDS = flags.DEFINE_string("shards", None, "Shard set to predict on (default: the config's).")
_SPLITS = flags.DEFINE_list("splits", list(SPLITS), "Splits to predict.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "latest", "latest, best or a step number.")
_OUT = flags.DEFINE_string("out", None, "Output CSV.", required=True)


def predict(
    workdir: str, out: str, *, shards: str | None, splits: list[str], checkpoint_step: str
) -> list[report.VideoPrediction]:
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown splits {unknown}; expected some of {SPLITS}")
    if stack.is_stacked(workdir):
        shard_set = open_shards(shards or stack.load(workdir)["shards"])
        rows = stack.predict(workdir, shard_set, splits, checkpoint_step=checkpoint_step)
        report.write_predictions_csv(out, rows)
        return rows
    trained = load_trained(workdir, checkpoint_step=checkpoint_step, shards=shards)
    shard_set = open_shards(trained.config.data.shards)
    rows = []
    for split in splits:
        if not any(info.split == split for info in shard_set.infos):
            continue
        evaluator = trained.experiment.evaluator(shard_set, trained.mesh, split)
        pred = evaluator.predict(trained.model)
        rows += report.video_predictions(shard_set, pred.record_index, pred.probability)
    report.write_predictions_csv(out, rows)
    return rows


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    rows = predict(
        _WORKDIR.value,
        _OUT.value,
        shards=_SHARDS.value,
        splits=_SPLITS.value,
        checkpoint_step=_CHECKPOINT.value,
    )
    print(f"wrote {len(rows)} predictions to {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
