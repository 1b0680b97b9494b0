"""One short markdown summary of a GPU suite run, from the results in its folder:
step outcomes, the environment, the correctness checks, the attention table and the
train-step table. Reads only JSON (no JAX), so it works whatever else broke.

    python benchmarks/gpu_summary.py OUT_DIR env:0:12 checks:0:80 ...   # step:exit:seconds
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any


def _load(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _outcome(rc: str) -> str:
    known = {"0": "ok", "124": "TIMED OUT", "137": "KILLED", "skipped": "SKIPPED (budget)"}
    return known.get(rc, f"exit {rc}")


def environment(env: dict[str, Any] | None) -> list[str]:
    if env is None:
        return ["environment: no env.json"]
    v = env.get("versions", {})
    jax_info, torch_info = env.get("jax", {}), env.get("torch", {})
    mm = jax_info.get("bf16_matmul", {})
    return [
        f"GPU (nvidia-smi): {env.get('nvidia_smi')}",
        f"JAX device_kind: {jax_info.get('device_kind', jax_info.get('error'))}; "
        f"backend {jax_info.get('backend')}; bytes_limit {jax_info.get('bytes_limit')}",
        f"python {env.get('python')}, jax {v.get('jax')} (plugin {v.get('jax-cuda13-plugin')}), "
        f"flax {v.get('flax')}, torch {v.get('torch')} (cuda {torch_info.get('cuda')}, "
        f"cudnn {torch_info.get('cudnn')}), transformers {v.get('transformers')}",
        f"bf16 matmul {mm.get('n')}^3 in JAX: {mm.get('tflops', float('nan')):.4g} TFLOP/s",
    ]


def checks(result: dict[str, Any] | None) -> list[str]:
    if result is None:
        return ["no gpu_checks.json"]
    items = result.get("checks", [])
    passed = sum(c["ok"] for c in items)
    lines = [f"{passed} passed, {len(items) - passed} failed (on {result.get('device')})", ""]
    # Attention: one row per (implementation, dtype), worst case over the lengths.
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for c in items:
        if c["part"] == "attention" and c["name"].startswith("T="):
            _, dtype, impl = c["name"].split()
            groups[(impl, dtype)].append(c)
    if groups:
        lines += [
            "| attention impl | dtype | passed | max out rel err | max grad rel err | leak |",
            "|---|---|---|---|---|---|",
        ]
        for (impl, dtype), cs in groups.items():
            worst = {}
            for key in ("out_rel", "grad_rel", "leak"):
                values = [c[key] for c in cs if key in c]  # checks that raised have none
                worst[key] = max(values) if values else float("nan")
            lines.append(
                f"| {impl} | {dtype} | {sum(c['ok'] for c in cs)}/{len(cs)} | "
                f"{worst['out_rel']:.1e} | {worst['grad_rel']:.1e} | {worst['leak']:.0e} |"
            )
        lines.append("")
    for c in items:
        if c["part"] == "attention" and c["name"].startswith("T=") and "error" not in c:
            continue
        shown = {k: v for k, v in c.items() if k not in ("part", "name", "ok", "losses")}
        if "losses" in c:
            shown["loss first/last"] = f"{c['losses'][0]:.4f}/{c['losses'][-1]:.4f}"
        text = ", ".join(f"{k}={v:.1e}" if isinstance(v, float) else f"{k}={v}" for k, v in
                         shown.items())  # fmt: skip
        lines.append(f"- {'PASS' if c['ok'] else 'FAIL'} {c['part']}: {c['name']}: {text[:300]}")
    return lines


def _fmt(value: Any, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, spec)


def train_steps(result: dict[str, Any] | None) -> list[str]:
    if result is None:
        return ["no train-step results"]
    rate = (result.get("measured_bf16_matmul") or {}).get("flops_per_s")
    lines = [
        f"{result.get('device_kind')}; remat {result.get('remat')}; MFU against "
        f"{(result.get('peak_flops') or 0) / 1e12:.1f} TFLOP/s ({result.get('peak_flops_source')})"
        f" and against the measured bf16 matmul rate, {_fmt(rate, '.1f', 1e-12)} TFLOP/s",
        "",
        "| frames | batch | warm-up s | step ms | steps/s | model TFLOP | MFU sheet / measured "
        "| mem GB | attention share (alone / profile) | step / floor | cuDNN calls |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result.get("rows", []):
        mem = _fmt(r.get("device_peak_bytes_so_far"), ".1f", 1e-9)
        if "median_step_s" not in r:
            lines.append(f"| {r['frames']} | {r['batch']} | {r.get('error', '')[:90]} "
                         f"||||| {mem} ||||")  # fmt: skip
            continue
        bound = r.get("bound") or {}
        ok = "" if not bound else (" ok" if bound["within_1_25"] else " OVER")
        lines.append(
            f"| {r['frames']} | {r['batch']} | {r['warmup_s']:.1f} | "
            f"{1e3 * r['median_step_s']:.1f} | {r['steps_per_s']:.2f} | "
            f"{r['model_flops_per_step'] / 1e12:.2f} | {_fmt(r.get('mfu'), '.1%')} / "
            f"{_fmt(r.get('mfu_vs_measured_matmul'), '.1%')} | {mem} | "
            f"{_fmt(r.get('attention_share'), '.0%')} / "
            f"{_fmt(r.get('profiled_attention_share'), '.0%')} | "
            f"{_fmt(bound.get('step_over_floor'), '.2f')}{ok} | "
            f"{r.get('cudnn_attention_calls', '-')} |"
            + (f" {r['error'][:80]}" if "error" in r else "")
        )
    for r in result.get("rows", []):
        profile = r.get("profile")
        if profile:
            kinds = ", ".join(f"{k} {1e3 * v:.1f} ms" for k, v in profile["per_step_s"].items())
            lines.append(f"- {r['frames']} frames, kernels per step ({profile['source']}): {kinds}")
            for k in profile["slowest"][:5]:
                lines.append(f"  - {1e3 * k['s_per_step']:.2f} ms {k['name'][:110]}")
    return lines


def main() -> None:
    out = Path(sys.argv[1])
    steps = [s.split(":") for s in sys.argv[2:]]
    lines = ["## GPU suite summary", ""]
    lines.append("steps: " + " | ".join(f"{n} {_outcome(rc)} ({s} s)" for n, rc, s in steps))
    lines += ["", *environment(_load(out / "env.json"))]
    lines += ["", "### Correctness checks", *checks(_load(out / "gpu_checks.json"))]
    attention = _load(out / "attention_gpu.json")
    lines += ["", "### Attention (bf16, batch 1, 8 heads, head_dim 64; seconds per call)"]
    lines.append(attention["table"] if attention else "no attention_gpu.json")
    lines += [
        "",
        "### Train step (bf16, fused model)",
        *train_steps(_load(out / "train_step_gpu.json")),
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
