"""What every small CPU benchmark records beside its rows: the command, the date, the
machine, jax's version and the load average before and after the run."""

from __future__ import annotations

import datetime
import os
import platform
import sys
from typing import Any

import jax


def interpreter() -> str:
    """The Python that runs this benchmark, relative to the working directory if inside."""
    path = os.path.relpath(sys.executable)
    return sys.executable if path.startswith("..") else path


def run_info(loadavg_before: tuple[float, float, float]) -> dict[str, Any]:
    """Call at the end of the run, with ``os.getloadavg()`` taken at its start."""
    return {
        "command": " ".join([interpreter(), *sys.argv]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "versions": {"jax": jax.__version__},
        "loadavg_before": loadavg_before,
        "loadavg_after": os.getloadavg(),
    }
