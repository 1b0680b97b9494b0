"""Dropout masks on CPU: ``hemo_jax.models.dropout.Dropout`` against ``nnx.Dropout``.

Both modules drop 10% of a [16, 64, 70, 8] float32 activation (the face stream of the
demo's keypoint branch: batch 16, 64 frames, 70 joints, 8 channels) inside one jitted
function, forward alone and forward + backward (gradient of the sum), reseeded on every
call as the trainer does. A plain scaling of the input (no mask) is timed beside them:
the floor for a kernel that reads and writes the activation once. Each function runs
once to compile, then ``--repeats`` interleaved rounds of 10 calls; the median call
counts. Results go to benchmarks/results/dropout.json.

    .venv/bin/python benchmarks/dropout.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from run_info import run_info  # noqa: E402

from hemo_jax.contract import atomic  # noqa: E402
from hemo_jax.models.dropout import Dropout  # noqa: E402

SHAPE = (16, 64, 70, 8)
RATE = 0.1


def candidates() -> dict[str, nnx.Module | None]:
    return {
        "scale only (floor)": None,
        "nnx.Dropout (jax.random)": nnx.Dropout(RATE, rngs=nnx.Rngs(dropout=0)),
        "hemo_jax Dropout (hashed)": Dropout(RATE, rngs=nnx.Rngs(dropout=0)),
    }


def make_fns(module: nnx.Module | None):
    """Jitted forward and forward + backward of ``(x, key)``; the module is an argument
    of the jitted functions (NNX state may not be closed over)."""

    def forward(module: nnx.Module | None, x: jax.Array, key: jax.Array) -> jax.Array:
        if module is None:
            return x * (1.0 / (1.0 - RATE))
        nnx.reseed(module, dropout=key)
        return module(x, deterministic=False)

    fwd = nnx.jit(forward, static_argnums=0 if module is None else ())
    grad = nnx.jit(
        nnx.grad(lambda m, x, key: jnp.sum(forward(m, x, key)), argnums=1),
        static_argnums=0 if module is None else (),
    )
    return {
        "forward": lambda x, key: fwd(module, x, key),
        "forward+backward": lambda x, key: grad(module, x, key),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    load_before = os.getloadavg()
    x = jax.random.normal(jax.random.key(0), SHAPE)
    fns = {(name, mode): fn for name, m in candidates().items() for mode, fn in make_fns(m).items()}
    for fn in fns.values():
        jax.block_until_ready(fn(x, jax.random.key(0)))
    times: dict[tuple[str, str], list[float]] = {k: [] for k in fns}
    calls = 0
    for _ in range(args.repeats):
        for k, fn in fns.items():
            for _ in range(10):
                calls += 1
                t0 = time.perf_counter()
                jax.block_until_ready(fn(x, jax.random.key(calls)))
                times[k].append(time.perf_counter() - t0)
    rows = [
        {"module": name, "mode": mode, "median_ms": statistics.median(v) * 1e3}
        for (name, mode), v in times.items()
    ]
    print(f"| module | mode | median ms ({'x'.join(map(str, SHAPE))}, rate {RATE}) |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r['module']} | {r['mode']} | {r['median_ms']:.2f} |")
    out = ROOT / "benchmarks" / "results" / "dropout.json"
    payload = {
        **run_info(load_before),
        "shape": SHAPE,
        "rate": RATE,
        "rows": rows,
    }
    atomic.write_json(out, payload)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
