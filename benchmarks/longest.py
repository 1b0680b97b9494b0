"""The longest keypoint sequence one device trains in bf16, without and with remat.

Each probe is one train step of the GPU benchmark's fused model
(``flops.gpu_config``) at a number of frames, in its own process (an out-of-memory
error leaves nothing behind, and the device's peak memory is that length's alone):
compile, read XLA's memory analysis of the compiled step, run the step once. A length
fits when the step runs (with ``--limit-bytes``, also when the compiled step's
arguments, outputs and temporaries stay under it: how the CPU smoke run stands in for
a device's memory). The search starts at the length the analytic memory model
(``flops.memory_bytes``) predicts for the device's memory, grows by half or halves
until it has a fitting and a failing length, then bisects to ``--precision`` of the
length, within ``--budget-s`` shared by the two settings. Results (every probe, the
bracket per setting, the analytic prediction beside it) go to ``--out``.

    python benchmarks/longest.py --out /tmp/out/longest.json --budget-s 120
    JAX_PLATFORMS=cpu python benchmarks/longest.py --smoke --out /tmp/longest.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]

import flops  # noqa: E402

from hemo_jax.contract import atomic  # noqa: E402

QUANTUM = 1024  # frames: lengths probed are multiples of this (of 8 in the smoke run)


def _config(args: argparse.Namespace, frames: int, remat: bool):
    c = flops.gpu_config(
        frames, batch=args.batch, width=args.width, heads=args.heads, depth=args.depth
    )
    if args.smoke:
        c.data.max_images, c.data.max_text_tokens = 8, 16
    c.model.remat = remat
    return c


def probe(args: argparse.Namespace) -> dict[str, Any]:
    """One length, in this process: compile, memory analysis, one step."""
    import jax
    import train_step

    row: dict[str, Any] = {"frames": args.one, "remat": args.remat}
    device = jax.devices()[0]
    row["bytes_limit"] = (device.memory_stats() or {}).get("bytes_limit") or args.limit_bytes
    if args.one == 0:  # only the device's memory was asked for
        return row
    start = time.perf_counter()
    try:
        config = _config(args, args.one, args.remat)
        step = train_step.JaxStep(config, train_step.synthetic_batch(config))
        rng = jax.random.key(0)
        compiled = step.step_fn.lower(step.state, step.batch, rng).compile()
        mem = compiled.memory_analysis()
        if mem is not None:
            row["compiled_bytes"] = int(
                mem.argument_size_in_bytes
                + mem.output_size_in_bytes
                + mem.temp_size_in_bytes
                - mem.alias_size_in_bytes
            )
            row["compiled_temp_bytes"] = int(mem.temp_size_in_bytes)
        row["compile_s"] = time.perf_counter() - start
        if args.limit_bytes and row.get("compiled_bytes", 0) > args.limit_bytes:
            row.update(fits=False, error=f"compiled step needs more than {args.limit_bytes} B")
        else:
            state, out = compiled(step.state, step.batch, rng)
            jax.block_until_ready(out)
            row.update(fits=True, loss_sum=float(out["loss_sum"]))
    except Exception as err:  # out of memory, at compile time or at run time
        row.update(fits=False, error=f"{type(err).__name__}: {str(err)[:300]}")
    row["seconds"] = time.perf_counter() - start
    stats = device.memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        row["device_peak_bytes"] = stats["peak_bytes_in_use"]
    return row


def _child(args: argparse.Namespace, frames: int, remat: bool, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--one", str(frames)]
    cmd += ["--batch", str(args.batch), "--width", str(args.width)]
    cmd += ["--heads", str(args.heads), "--depth", str(args.depth)]
    cmd += ["--remat"] * remat + ["--smoke"] * args.smoke
    if args.limit_bytes:
        cmd += ["--limit-bytes", str(args.limit_bytes)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
        return {"frames": frames, "remat": remat, "fits": None, "error": "timed out"}
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        tail = (done.stderr or done.stdout)[-400:]
        error = f"exit {done.returncode}: {tail}"
        return {"frames": frames, "remat": remat, "fits": False, "error": error}
    return json.loads(lines[-1])


def _round(frames: float, quantum: int) -> int:
    return max(quantum, int(round(frames / quantum)) * quantum)


def search(args: argparse.Namespace, remat: bool, memory: float, deadline: float, probes: list):
    """Grow or shrink from the analytic prediction until a length fits and one fails,
    then bisect; returns (largest fitting, smallest failing, prediction)."""
    quantum = 8 if args.smoke else QUANTUM
    config = _config(args, quantum, remat)
    predicted = flops.longest_frames(config, 0.9 * memory, remat=remat, quantum=quantum)
    frames = _round(predicted or quantum, quantum)
    lo, hi = 0, None
    while time.monotonic() < deadline:
        row = _child(args, frames, remat, deadline - time.monotonic())
        probes.append(row)
        print(json.dumps(row), flush=True)
        if row.get("fits") is None:
            break
        if row["fits"]:
            lo = frames
        else:
            hi = frames
        if hi is None:
            nxt = _round(frames * 1.5, quantum)
        elif lo == 0:
            nxt = _round(frames / 2, quantum) if frames > quantum else 0
        else:
            nxt = _round((lo + hi) / 2, quantum)
        if nxt in (0, lo, hi) or (hi is not None and lo and hi - lo <= args.precision * lo):
            break
        frames = nxt
    return lo, hi, predicted


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--budget-s", type=float, default=120.0, help="for both settings together")
    p.add_argument("--precision", type=float, default=0.1, help="stop at this relative bracket")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--limit-bytes", type=int, default=0, help="a memory limit to probe against")
    p.add_argument("--smoke", action="store_true", help="tiny model and lengths (CPU)")
    p.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # a child probe
    p.add_argument("--remat", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.smoke:
        args.batch, args.width, args.heads, args.depth = 1, 16, 2, 1
        args.limit_bytes = args.limit_bytes or 16 * 2**20
    if args.one is not None:
        print(json.dumps(probe(args)), flush=True)
        return
    if args.out is None:
        p.error("--out is required")
    deadline = time.monotonic() + args.budget_s
    if args.limit_bytes:
        device: dict[str, Any] = {"bytes_limit": args.limit_bytes, "from": "--limit-bytes"}
    else:  # a child sees the device; this process does not, so as to take none of it
        device = _child(args, 0, False, 120)
    memory = device.get("bytes_limit")
    result: dict[str, Any] = {"device": device, "settings": vars(args) | {"out": str(args.out)}}
    result["probes"], result["longest"] = [], {}
    if not memory:
        result["error"] = f"no device memory limit known: {device}"
    else:
        for i, remat in enumerate((False, True)):
            share = time.monotonic() + (deadline - time.monotonic()) / (2 - i)  # half, then all
            lo, hi, predicted = search(args, remat, memory, share, result["probes"])
            result["longest"]["remat" if remat else "no_remat"] = {
                "largest_fitting": lo,
                "smallest_failing": hi,
                "analytic_prediction_90pct": predicted,
            }
            atomic.write_json(args.out, result)
    atomic.write_json(args.out, result)
    print(json.dumps(result["longest"]))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
