"""Early stopping on the evaluation split: stop after ``patience`` evaluations without a
better metric.

The history of evaluations lives in ``WORKDIR/early_stopping.json`` (written atomically
at each evaluation), keyed by step: a run resumed from an older checkpoint drops the
evaluations after it and repeats them, so the decision is the one an uninterrupted run
makes, and a run that already stopped stays stopped when its command is run again.
"""

from __future__ import annotations

import json
import os

from hemo_jax.contract import atomic

FILENAME = "early_stopping.json"


class EarlyStopping:
    """``update(step, metrics)`` after each evaluation; ``stopped`` once it says stop."""

    def __init__(
        self, workdir: str, metric: str, patience: int, *, mode: str = "max", writer: bool = True
    ):
        if patience < 0:
            raise ValueError(f"config.train.patience must be >= 0, got {patience}")
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.path = os.path.join(workdir, FILENAME)
        # Every process decides (their evaluations agree); one writes the history.
        self.metric, self.patience, self.mode, self.writer = metric, patience, mode, writer
        self.history: dict[int, float] = {}
        self.stopped_at: int | None = None
        if patience and os.path.exists(self.path):
            with open(self.path) as f:
                saved = json.load(f)
            self.history = {int(k): float(v) for k, v in saved["history"].items()}
            self.stopped_at = saved["stopped_at"]

    @property
    def stopped(self) -> bool:
        return self.stopped_at is not None

    def update(self, step: int, metrics: dict[str, float]) -> bool:
        """Records one evaluation; True when training should stop at this step."""
        if not self.patience or self.metric not in metrics:
            return False
        self.history = {s: v for s, v in self.history.items() if s < step}
        self.history[step] = float(metrics[self.metric])
        best = self.best_step()
        if sum(s > best for s in self.history) >= self.patience:
            self.stopped_at = step
        if self.writer:
            state = {"history": self.history, "stopped_at": self.stopped_at}
            atomic.write_json(self.path, state)
        return self.stopped

    def best_step(self) -> int:
        """The step of the best evaluation so far; the earliest of equals."""
        sign = 1.0 if self.mode == "max" else -1.0
        return max(self.history, key=lambda s: (sign * self.history[s], -s))

    @property
    def reason(self) -> str:
        best = self.best_step()
        return (
            f"early stop at step {self.stopped_at}: {self.metric} {self.history[best]:.4f} at "
            f"step {best}, not bettered in {self.patience} evaluations"
        )
