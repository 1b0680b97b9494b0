"""What a run reports: metrics.jsonl, TensorBoard events, a progress bar, log lines.

Only process 0 writes; the others keep quiet so a multi-host job logs once.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from absl import logging
from tqdm import tqdm

from hemo_jax.training.tensorboard import ScalarWriter


class _NoProgress:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


class MetricLogger:
    def __init__(self, workdir: str, *, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._writer = None
        if enabled:
            self._writer = ScalarWriter(os.path.join(workdir, "tensorboard"))

    def text(self, message: str) -> None:
        if self.enabled:
            logging.info("%s", message)
            print(message, flush=True)

    def write(self, kind: str, row: dict[str, Any]) -> None:
        """Appends one JSON line ({"kind", "step", "time", ...}) and TensorBoard scalars."""
        if not self.enabled:
            return
        row = {"kind": kind, **row, "time": time.time()}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        step = int(row["step"])
        scalars = {
            f"{kind}/{key}": float(value)
            for key, value in row.items()
            if key not in ("kind", "step", "time") and isinstance(value, int | float)
        }
        self._writer.add_scalars(step, scalars)
        self._writer.flush()
        if kind == "eval":
            shown = " ".join(
                f"{k}={v:.3f}" for k, v in row.items() if isinstance(v, float) and k != "time"
            )
            self.text(f"eval step {step}: {shown}")

    def progress(self, start: int, total: int, *, enabled: bool = True) -> Any:
        """A tqdm bar with steps/s and ETA (process 0 only)."""
        if not (self.enabled and enabled):
            return _NoProgress()
        return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
