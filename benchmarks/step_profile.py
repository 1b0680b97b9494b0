"""Where a train step's time goes on the device, and how far it is from its kernels' floor.

- ``matmul_rate``: the bf16 matrix-product rate JAX reaches on the device (an n^3
  product, median of repeats), the practical ceiling beside the data sheet's peak.
- ``attention_seconds``: attention alone, forward and backward, at every shape the
  step's Transformers run it (batch, length, heads, head size, the same key-padding
  prefix lengths as the benchmark's batch), with the implementation the step picks
  (cuDNN for bf16 on a GPU), times the number of layers at that shape. This is the
  measurement of the attention share the bound below uses: it needs no kernel names.
- ``kernel_profile``: a ``jax.profiler`` trace of a few steps, written as a Perfetto
  (Chrome JSON) trace and parsed here: device time per kernel, summed into attention
  (names with fmha/flash/sdpa/attention), matrix products (gemm/cublas/cutlass/
  nvjet/xmma/dot/matmul) and the rest, with the slowest kernels by name, so a first
  GPU run shows what the names are even where the classification misses.
- ``bound``: the target floor, attention's kernel time plus the dense layers'
  executed FLOPs at the measured matmul rate, and the step's time over it (target
  <= 1.25).
"""

from __future__ import annotations

import collections
import gzip
import json
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hemo_jax.models.attention import attention, select_implementation

ATTENTION_KERNEL = re.compile(r"fmha|flash|sdpa|attention|softmax_stats", re.IGNORECASE)
MATMUL_KERNEL = re.compile(r"gemm|cublas|cutlass|nvjet|xmma|matmul|\bdot", re.IGNORECASE)


def _median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    jax.block_until_ready(fn())  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_rate(n: int, repeats: int = 10) -> dict[str, float]:
    """FLOP/s of one bf16 n x n x n product on the default device (random operands)."""
    a, b = (jax.random.normal(jax.random.key(i), (n, n), jnp.bfloat16) for i in range(2))
    product = jax.jit(lambda a, b: a @ b)
    seconds = _median_seconds(lambda: product(a, b), repeats)
    return {"n": n, "seconds": seconds, "flops_per_s": 2 * n**3 / seconds}


def attention_shapes(config) -> list[dict[str, int]]:
    """Each (batch, length, heads, head size) the fused model's Transformers attend
    over, and in how many layers."""
    m, d = config.model, config.data
    lengths = {"keypoints": d.max_frames, "image": d.max_images, "text": d.max_text_tokens}
    return [
        {
            "branch": name,
            "batch": d.batch_size,
            "length": t,
            "heads": m.heads,
            "head_dim": m.width // m.heads,
            "layers": m.depth,
        }  # fmt: skip
        for name, t in lengths.items()
    ]


def attention_seconds(config, repeats: int = 5, seed: int = 0) -> dict[str, Any]:
    """Forward + backward of attention alone at the step's shapes, in the step's compute
    dtype; seconds per step (times the layers at each shape) and per shape."""
    dtype = jnp.dtype(config.train.compute_dtype)
    rng = np.random.default_rng(seed)
    rows, total = [], 0.0
    for shape in attention_shapes(config):
        b, t, h, dh = shape["batch"], shape["length"], shape["heads"], shape["head_dim"]
        q, k, v, w = (jnp.asarray(rng.standard_normal((b, t, h, dh)), dtype) for _ in range(4))
        lengths = jnp.asarray(rng.integers(max(t // 2, 1), t + 1, size=b), jnp.int32)

        def loss(q, k, v, w=w, lengths=lengths):
            out = attention(q, k, v, kv_lengths=lengths)
            return jnp.sum(out.astype(jnp.float32) * w.astype(jnp.float32))

        grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
        seconds = _median_seconds(lambda grad=grad, q=q, k=k, v=v: grad(q, k, v), repeats)
        rows.append({**shape, "implementation": select_implementation(q, k), "fwd_bwd_s": seconds})
        total += seconds * shape["layers"]
    return {"per_step_s": total, "shapes": rows, "dtype": str(dtype)}


def _trace_file(log_dir: Path) -> Path:
    found = sorted(log_dir.rglob("perfetto_trace.json.gz")) or sorted(
        log_dir.rglob("*.trace.json.gz")
    )
    if not found:
        raise FileNotFoundError(f"no Perfetto/Chrome trace under {log_dir}")
    return found[-1]


def parse_trace(path: Path, steps: int, top: int = 15) -> dict[str, Any]:
    """Device time per step by kind of kernel, from a Chrome-JSON trace. Device events
    are those of processes named like a device ("/device:GPU:0" ...); a trace with none
    (the CPU) falls back to the XLA ops of every thread, named like HLO ops."""
    with gzip.open(path, "rt") as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    process_names = {
        e["pid"]: e.get("args", {}).get("name", "")
        for e in events
        if e.get("ph") == "M" and e.get("name") == "process_name"
    }
    devices = {pid for pid, name in process_names.items() if "/device:" in name}
    complete = [e for e in events if e.get("ph") == "X" and "dur" in e]
    if devices:
        kernels = [e for e in complete if e.get("pid") in devices]
    else:  # host threads: XLA's ops, not the Python frames ("$file:line name") around them
        kernels = [e for e in complete if not e.get("name", "$").startswith("$")]
    per_name: dict[str, float] = collections.defaultdict(float)
    for e in kernels:
        per_name[e.get("name", "?")] += float(e["dur"]) * 1e-6  # microseconds
    kinds = {"attention": 0.0, "matmul": 0.0, "other": 0.0}
    for name, seconds in per_name.items():
        kind = "attention" if ATTENTION_KERNEL.search(name) else (
            "matmul" if MATMUL_KERNEL.search(name) else "other")  # fmt: skip
        kinds[kind] += seconds / steps
    slowest = sorted(per_name.items(), key=lambda kv: -kv[1])[:top]
    return {
        "source": "device streams" if devices else "all threads (no device process)",
        "per_step_s": kinds,
        "kernel_s_per_step": sum(kinds.values()),
        "slowest": [{"name": n[:160], "s_per_step": s / steps} for n, s in slowest],
    }


def kernel_profile(step: Callable[[], Any], steps: int, log_dir: Path) -> dict[str, Any]:
    """Trace ``steps`` calls of ``step`` (already compiled) and parse the trace."""
    with jax.profiler.trace(str(log_dir), create_perfetto_trace=True):
        for _ in range(steps):
            step()
    return {"trace": str(_trace_file(log_dir)), **parse_trace(_trace_file(log_dir), steps)}


def bound(step_s: float, attention_s: float, dense_flops: float, rate: float) -> dict[str, Any]:
    """The step against attention's kernel time plus its dense FLOPs at ``rate``."""
    floor = attention_s + dense_flops / rate
    return {
        "attention_s": attention_s,
        "dense_s_at_measured_rate": dense_flops / rate,
        "floor_s": floor,
        "step_over_floor": step_s / floor,
        "within_1_25": step_s <= 1.25 * floor,
    }
