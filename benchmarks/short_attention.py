"""Short-sequence attention on CPU, forward + backward: how ``dense`` takes its gradient.

The automatic choice on CPU for short sequences is ``dense`` (a materialised softmax).
Its backward is either autodiff through that softmax or blockwise's recomputing
backward from the saved logsumexp; ``dense_attention`` picks by head size
(``_DENSE_TILED_BACKWARD_MAX_DIM``). This measures both, with ``blockwise`` beside
them, at the shapes of the models' short sequences ([16, T, H, D], T = 48..192, a
padding mask on every row), float32: the gradient of ``sum(out * w)`` for q, k and v,
jitted. Each case compiles once, then ``--repeats`` interleaved rounds of 5 calls;
the median call counts. Results go to benchmarks/results/short_attention.json.

    .venv/bin/python benchmarks/short_attention.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from run_info import run_info  # noqa: E402

from hemo_jax.contract import atomic  # noqa: E402
from hemo_jax.models import attention  # noqa: E402

SHAPES = ((16, 4, 16), (16, 4, 32), (16, 8, 64))  # (batch, heads, head_dim)
LENGTHS = (48, 96, 128, 192)


def _dense_autodiff(q, k, v, key_mask, scale):
    return attention._dense_forward(q, k, v, key_mask, scale, None)[0]


def _dense_tiled(q, k, v, key_mask, scale):
    return attention._dense_core(q, k, v, key_mask, scale, None)


def _blockwise(q, k, v, key_mask, scale):
    return attention.blockwise_attention(q, k, v, key_mask, scale)


VARIANTS: dict[str, Callable] = {
    "dense, autodiff backward": _dense_autodiff,
    "dense, tiled backward": _dense_tiled,
    "blockwise": _blockwise,
}


def make_case(batch: int, length: int, heads: int, dim: int):
    keys = jax.random.split(jax.random.key(0), 4)
    q, k, v, w = (jax.random.normal(x, (batch, length, heads, dim)) for x in keys)
    # Every row loses 0-6 keys to padding, as in a padded batch.
    key_mask = jnp.arange(length)[None, :] < length - jnp.arange(batch)[:, None] % 7
    fns = {}
    for name, fn in VARIANTS.items():

        def loss(q, k, v, fn=fn):
            return jnp.sum(fn(q, k, v, key_mask, dim**-0.5) * w)

        grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
        fns[name] = lambda grad=grad: jax.block_until_ready(grad(q, k, v))
    return fns


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    load_before = os.getloadavg()
    rows = []
    print("| [B, T, H, D] | " + " | ".join(f"{n} ms" for n in VARIANTS) + " | autodiff / tiled |")
    print("|---" * (len(VARIANTS) + 2) + "|")
    for batch, heads, dim in SHAPES:
        for length in LENGTHS:
            fns = make_case(batch, length, heads, dim)
            for fn in fns.values():
                fn()
            times: dict[str, list[float]] = {n: [] for n in fns}
            for _ in range(args.repeats):
                for name, fn in fns.items():
                    for _ in range(5):
                        t0 = time.perf_counter()
                        fn()
                        times[name].append(time.perf_counter() - t0)
            med = {n: statistics.median(t) * 1e3 for n, t in times.items()}
            ratio = med["dense, autodiff backward"] / med["dense, tiled backward"]
            shape = [batch, length, heads, dim]
            rows.append({"shape": shape, "median_ms": med, "autodiff_over_tiled": ratio})
            cells = " | ".join(f"{med[n]:.2f}" for n in VARIANTS)
            print(f"| {shape} | {cells} | {ratio:.2f} |", flush=True)
    out = ROOT / "benchmarks" / "results" / "short_attention.json"
    payload = {
        **run_info(load_before),
        "tiled_backward_max_dim": attention._DENSE_TILED_BACKWARD_MAX_DIM,
        "rows": rows,
    }
    atomic.write_json(out, payload)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
