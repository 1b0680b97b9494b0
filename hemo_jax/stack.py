"""Stage 2 by stacking: ``python -m hemo_jax.stack --workdir W --runs R1,R2,...``.

``--runs`` names stage-1 workdirs: for every branch one run on all labelled
training videos and K runs trained with ``--config.data.fold=k/K`` for k = 0..K-1
(the same K for every branch). The fold runs predict the videos they left out;
a logistic regression over those out-of-fold log-odds (and the labeler's
verdict, ``--labeler``) is fitted with the true labels, then applied to the
full runs' predictions on the eval split (``hemo_jax.training.stack_fit`` says why).
``--pool`` adds pseudo-labelled videos to the fit, predicted by the full runs.

Writes ``W/stack.json`` (coefficients and the runs they came from),
``W/fit_rows.csv`` (every row of the fit) and the evaluation report ``W/report/``.
"""

from __future__ import annotations

from absl import app, flags

from hemo_jax.experiment import stack
from hemo_jax.training import metrics

_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder.", required=True)
_RUNS = flags.DEFINE_list("runs", None, "Stage-1 workdirs: full and fold runs.", required=True)
_POOL = flags.DEFINE_enum(
    "pool", "none", ["none", "unlabeled"], "Pseudo-labelled videos added to the fit."
)
_LABELER = flags.DEFINE_bool("labeler", True, "Use the labeler's verdict as a feature.")
_L2 = flags.DEFINE_float("l2", 1.0, "L2 penalty on the coefficients (1 / C).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "latest", "latest, best or a step number.")
_BOOTSTRAP = flags.DEFINE_integer(
    "bootstrap", 1000, "Bootstrap resamples for the intervals.", lower_bound=1
)
# Checked as the flags are parsed: the fit comes after every run has predicted.
flags.register_validator("l2", lambda v: v > 0, message="--l2 must be > 0")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    intervals = stack.stack(
        _WORKDIR.value,
        _RUNS.value,
        pool=_POOL.value,
        use_labeler=_LABELER.value,
        l2=_L2.value,
        checkpoint_step=_CHECKPOINT.value,
        num_bootstrap=_BOOTSTRAP.value,
    )
    print(metrics.format_intervals(intervals))


if __name__ == "__main__":
    app.run(main)
