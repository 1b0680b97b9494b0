"""Attention time and peak memory against length, for every implementation and for
PyTorch's ``scaled_dot_product_attention`` on the same shapes, in the same run.

Shapes: batch 1, 8 heads, head_dim 64, lengths 1k..64k (float32 on CPU) or 8k..128k
(bf16, ``--gpu``, with ``cudnn``; PyTorch then runs bf16 on the CUDA device, where its
SDPA picks FlashAttention). Two modes: ``fwd`` (the output) and ``fwd+bwd`` (gradient
of sum(out) with respect to q, k and v).

Method. Every (implementation, length, mode) runs in a fresh subprocess, so one
config's memory never shows up in another's. In it: inputs are made, then JAX
compiles ahead of time (``jit(...).lower(...).compile()``; the compile time is
reported apart), then ``--repeats`` calls are timed with ``block_until_ready`` (one
call at 32k and above, where a call takes minutes) after one untimed warm-up call
below that; the median is reported. On GPU every length gets the warm-up and the
repeats, and one timed sample is as many back-to-back calls as fill about 50 ms (the
count measured from one extra call), divided by that count, so that kernels of
microseconds are not timed as host dispatch. Peak memory on CPU is the process's peak
resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) at the end, i.e.
libraries + inputs + compilation + the calls; ``baseline`` is the same figure
just before compiling (libraries + inputs), so ``peak - baseline`` is what running
the attention cost. On GPU: the device's ``peak_bytes_in_use``, and ``bytes_in_use``
before compiling as the baseline (PyTorch: ``torch.cuda.max_memory_allocated`` and
``memory_allocated``). PyTorch runs with ``torch.set_num_threads(os.cpu_count())``, as
many threads as XLA's CPU pool. Configs whose [T, T] logits would not fit
(``reference``/``xla`` at long lengths) are not run and are marked "skipped: O(T^2)
memory". The results file is rewritten after every config, so a run cut short keeps
what it measured.

    .venv/bin/python benchmarks/attention.py                # CPU table, 1k..64k
    .venv/bin/python benchmarks/attention.py --quick        # smoke sizes
    .venv/bin/python benchmarks/attention.py --gpu          # GPU table, bf16, with cudnn
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from hemo_jax.contract import atomic

RESULTS = Path(__file__).parent / "results"
BATCH, HEADS, HEAD_DIM = 1, 8, 64
CPU_LENGTHS = (1024, 4096, 16384, 65536)
GPU_LENGTHS = (8192, 16384, 32768, 65536, 131072)
CPU_IMPLS = ("reference", "xla", "blockwise", "torch")
GPU_IMPLS = ("reference", "xla", "cudnn", "blockwise", "torch")
MODES = ("fwd", "fwd+bwd")
# Peak memory over baseline, in [B, H, T, T] float32 logits, of the implementations
# that materialise them; measured with this script at T=4096 on CPU (2026-11-26).
_LOGIT_BUFFERS = {
    ("reference", "fwd"): 2.2,
    ("reference", "fwd+bwd"): 9.3,
    ("xla", "fwd"): 2.2,
    ("xla", "fwd+bwd"): 5.3,
}


def _quadratic_bytes(impl: str, mode: str, length: int) -> float:
    return _LOGIT_BUFFERS.get((impl, mode), 0.0) * BATCH * HEADS * length * length * 4


def _mem_available() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def _gpu_bytes_limit() -> int | None:
    """Asked in a child process: a GPU client in this one would hold memory the
    workers need. None where the device reports no memory (a CPU-only smoke run)."""
    probe = "import jax; print((jax.devices()[0].memory_stats() or {}).get('bytes_limit', -1))"
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cuda")}
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env
    )
    limit = int(out.stdout.strip().splitlines()[-1])
    return limit if limit > 0 else None


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


# ---------------------------------------------------------------------- worker side


def _time_calls(run, repeats: int, warmup: bool, min_sample_s: float = 0.0):
    """``run(n)`` makes n back-to-back calls and waits for the last. Returns the
    per-call times of ``repeats`` samples and the calls per sample."""
    if warmup:
        run(1)
    calls = 1
    if min_sample_s > 0:
        start = time.perf_counter()
        run(1)
        calls = max(1, min(1000, round(min_sample_s / max(time.perf_counter() - start, 1e-6))))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(calls)
        times.append((time.perf_counter() - start) / calls)
    return times, calls


def _run_jax(cfg: dict) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from hemo_jax.models.attention import BlockSizes, attention

    dtype = jnp.bfloat16 if cfg["dtype"] == "bfloat16" else jnp.float32
    rng = np.random.default_rng(0)
    shape = (BATCH, cfg["length"], HEADS, HEAD_DIM)
    q, k, v = (jax.device_put(rng.standard_normal(shape, np.float32).astype(dtype)) for _ in "qkv")
    blocks = None
    if cfg["impl"] == "blockwise" and cfg.get("block_q"):
        blocks = BlockSizes(block_q=cfg["block_q"], block_k=cfg["block_k"])

    def fwd(q, k, v):
        return attention(q, k, v, implementation=cfg["impl"], block_sizes=blocks)

    def loss(q, k, v):
        return jnp.sum(fwd(q, k, v).astype(jnp.float32))

    fn = fwd if cfg["mode"] == "fwd" else jax.grad(loss, argnums=(0, 1, 2))
    jax.block_until_ready((q, k, v))
    device = jax.devices()[0]
    on_gpu = device.platform == "gpu"
    baseline = device.memory_stats()["bytes_in_use"] if on_gpu else _peak_rss()
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(q, k, v).compile()
    compile_s = time.perf_counter() - start

    def run(n: int) -> None:
        out = None
        for _ in range(n):  # dispatch is asynchronous: the calls queue up on the device
            out = compiled(q, k, v)
        jax.block_until_ready(out)

    times, calls = _time_calls(run, cfg["repeats"], cfg["warmup"], cfg.get("min_sample_s", 0.0))
    result = {
        "times_s": times,
        "calls_per_sample": calls,
        "compile_s": compile_s,
        "baseline_bytes": baseline,
    }
    if on_gpu:
        result["peak_bytes"] = device.memory_stats()["peak_bytes_in_use"]
        result["device"] = device.device_kind
    else:
        result["peak_bytes"] = _peak_rss()
    return result


def _run_torch(cfg: dict) -> dict:
    import torch

    torch.set_num_threads(os.cpu_count())
    # bf16 runs are the GPU table's: on the CUDA device when there is one.
    half = cfg["dtype"] == "bfloat16"
    cuda = half and torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if half else torch.float32
    gen = torch.Generator().manual_seed(0)
    # torch's layout is [B, H, T, D]; same numbers of heads, length and head_dim.
    shape = (BATCH, HEADS, cfg["length"], HEAD_DIM)
    grad = cfg["mode"] == "fwd+bwd"
    q, k, v = (
        torch.randn(shape, generator=gen).to(device, dtype).requires_grad_(grad) for _ in "qkv"
    )
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def call():
        if grad:
            sdpa(q, k, v).sum().backward()
            q.grad = k.grad = v.grad = None
        else:
            with torch.no_grad():
                sdpa(q, k, v)

    def run(n: int) -> None:
        for _ in range(n):
            call()
        if cuda:
            torch.cuda.synchronize()

    baseline = torch.cuda.memory_allocated() if cuda else _peak_rss()
    times, calls = _time_calls(run, cfg["repeats"], cfg["warmup"], cfg.get("min_sample_s", 0.0))
    result = {
        "times_s": times,
        "calls_per_sample": calls,
        "compile_s": 0.0,
        "baseline_bytes": baseline,
        "peak_bytes": torch.cuda.max_memory_allocated() if cuda else _peak_rss(),
        "torch_threads": torch.get_num_threads(),
        "torch_device": str(device),
    }
    if cuda:
        result["device"] = torch.cuda.get_device_name()
    return result


def worker(cfg: dict) -> None:
    cpu0 = time.process_time()
    result = _run_torch(cfg) if cfg["impl"] == "torch" else _run_jax(cfg)
    result["process_cpu_s"] = time.process_time() - cpu0
    print(json.dumps(result))


# ---------------------------------------------------------------------- driver side


def run_config(cfg: dict, timeout_s: float) -> dict:
    cmd = [sys.executable, __file__, "--worker", json.dumps(cfg)]
    env = dict(os.environ)
    env.setdefault("JAX_PLATFORMS", "cuda" if cfg["dtype"] == "bfloat16" else "cpu")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {**cfg, "status": f"failed: over {timeout_s:.0f} s"}
    if proc.returncode != 0:
        return {**cfg, "status": f"failed: exit {proc.returncode}: {_error_line(proc)[:200]}"}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**cfg, **result, "status": "ok", "median_s": statistics.median(result["times_s"])}


def _error_line(proc: subprocess.CompletedProcess) -> str:
    """The exception line of a worker's traceback (JAX appends notes after it)."""
    lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b", ln)]
    return (errors or lines or ["no output"])[-1]


def _cell_time(row: dict | None) -> str:
    if row is None:
        return "-"
    return f"{row['median_s']:.3g}" if row["status"] == "ok" else row["status"][:90]


def _cell_mem(row: dict | None) -> str:
    if row is None or row["status"] != "ok":
        return "-"
    return (
        f"{row['peak_bytes'] / 1e9:.2f} ({(row['peak_bytes'] - row['baseline_bytes']) / 1e9:.2f})"
    )


def markdown(rows: list[dict], gpu: bool) -> str:
    by_key = {(r["length"], r["impl"], r["mode"]): r for r in rows}
    lengths = sorted({r["length"] for r in rows})
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    mem = "peak GB (device)" if gpu else "peak RSS GB (over baseline)"
    lines = [
        f"| T | impl | fwd s | fwd+bwd s | fwd {mem} | fwd+bwd {mem} | fwd+bwd vs torch |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in lengths:
        for impl in impls:
            fwd, both = by_key.get((t, impl, "fwd")), by_key.get((t, impl, "fwd+bwd"))
            ref = by_key.get((t, "torch", "fwd+bwd"))
            ratio = "-"
            if both and ref and both["status"] == ref["status"] == "ok" and impl != "torch":
                ratio = f"{both['median_s'] / ref['median_s']:.2f}x"
            lines.append(
                f"| {t:,} | {impl} | {_cell_time(fwd)} | {_cell_time(both)} | "
                f"{_cell_mem(fwd)} | {_cell_mem(both)} | {ratio} |"
            )
    return "\n".join(lines)


def _versions(with_torch: bool) -> dict:
    import jax

    versions = {"python": platform.python_version(), "jax": jax.__version__}
    if with_torch:
        import torch

        versions["torch"] = torch.__version__
    return versions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action="store_true", help="bf16, 8k..128k, with cudnn")
    parser.add_argument("--quick", action="store_true", help="smoke sizes (1k, 2k)")
    parser.add_argument("--lengths", type=int, nargs="+", help="override the lengths")
    parser.add_argument("--impls", nargs="+", help="subset of implementations (torch = PyTorch)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--repeats", type=int, default=3, help="timed calls below 32k")
    parser.add_argument("--block-q", type=int, help="blockwise BlockSizes.block_q")
    parser.add_argument("--block-k", type=int, help="blockwise BlockSizes.block_k")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per config")
    parser.add_argument("--out", type=Path, help="results JSON (default results/attention*.json)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    if (args.block_q is None) != (args.block_k is None):
        parser.error("give --block-q and --block-k together")

    lengths = args.lengths or (
        (1024, 2048) if args.quick else GPU_LENGTHS if args.gpu else CPU_LENGTHS
    )
    impls = args.impls or (GPU_IMPLS if args.gpu else CPU_IMPLS)
    dtype = "bfloat16" if args.gpu else "float32"
    gpu_limit = _gpu_bytes_limit() if args.gpu else None
    budget = gpu_limit * 0.9 if gpu_limit else _mem_available() * 0.75
    command = " ".join([Path(sys.executable).name, *sys.argv])
    started = datetime.datetime.now().astimezone()
    load_start = os.getloadavg()
    out = args.out or RESULTS / ("attention_gpu.json" if args.gpu else "attention.json")
    rows, table = [], ""
    for length in lengths:
        for impl in impls:
            for mode in args.modes:
                # A call at 32k+ takes minutes on CPU; milliseconds on a GPU.
                slow = length >= 32768 and not args.gpu
                cfg = {
                    "impl": impl,
                    "length": length,
                    "mode": mode,
                    "dtype": dtype,
                    "repeats": 1 if slow else args.repeats,
                    "warmup": not slow,
                    "min_sample_s": 0.05 if args.gpu else 0.0,
                    "block_q": args.block_q,
                    "block_k": args.block_k,
                }
                if _quadratic_bytes(impl, mode, length) > budget:
                    need = _quadratic_bytes(impl, mode, length) / 1e9
                    row = {**cfg, "status": f"skipped: O(T^2) memory (~{need:.0f} GB)"}
                else:
                    row = run_config(cfg, args.timeout)
                rows.append(row)
                shown = f"{row['median_s']:.3g} s" if row["status"] == "ok" else row["status"]
                print(f"T={length} {impl} {mode}: {shown}", file=sys.stderr, flush=True)
                table = markdown(rows, args.gpu)
                write_results(out, command, started, load_start, rows, table, dtype, impls)
    print(table)


def write_results(out, command, started, load_start, rows, table, dtype, impls) -> None:
    machine = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "mem_total_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1),
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
    }
    gpu_rows = [r for r in rows if r.get("device")]
    if gpu_rows:
        machine["gpu"] = gpu_rows[0]["device"]
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "attention",
        "command": command,
        "date": started.isoformat(timespec="seconds"),
        "machine": machine,
        "versions": _versions("torch" in impls),
        "shape": {"batch": BATCH, "heads": HEADS, "head_dim": HEAD_DIM, "dtype": dtype},
        "rows": rows,
        "table": table,
    }
    atomic.write_json(out, payload)


if __name__ == "__main__":
    main()
