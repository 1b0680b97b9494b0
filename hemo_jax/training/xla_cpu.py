"""XLA:CPU options the trainer sets for itself, before JAX opens a backend.

XLA:CPU hands matmuls, reductions and elementwise chains to YNNPACK. At this
project's shapes (per-joint features 8 channels wide, softmax rows of a few
hundred keys) YNNPACK's fused reductions ran slower than XLA's own loops; with
them left to XLA the fused model's train step gained most at long sequences on the
2-core benchmark machine (BENCHMARKS.md, train step). Matmuls stay with YNNPACK.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

import jaxlib

YNN_FUSION_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
YNN_FUSION_VALUE = "-reduce,-eltwise"
# XLA aborts the process on a flag it does not know, so only jaxlib versions known to
# have this one get it.
JAXLIB_WITH_FLAG = ((0, 10), (0, 11))


def jaxlib_version() -> tuple[int, int]:
    major, minor = jaxlib.__version__.split(".")[:2]
    return int(major), int(minor)


def prefer_xla_reductions(
    environ: MutableMapping[str, str] = os.environ, version: tuple[int, int] | None = None
) -> bool:
    """Adds the YNNPACK setting to XLA_FLAGS; True if it did.

    Leaves a user's own setting of the flag alone, and jaxlib versions without it.
    It takes effect only if no JAX backend has started yet in this process (only
    the CPU backend reads it; GPU and TPU compilation is unchanged).
    """
    flags = environ.get("XLA_FLAGS", "")
    if YNN_FUSION_FLAG in flags or (version or jaxlib_version()) not in JAXLIB_WITH_FLAG:
        return False
    environ["XLA_FLAGS"] = f"{flags} {YNN_FUSION_FLAG}={YNN_FUSION_VALUE}".strip()
    return True
