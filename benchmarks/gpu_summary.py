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


def train_steps(result: dict[str, Any] | None) -> list[str]:
    if result is None:
        return ["no train_step_gpu.json"]
    lines = [
        f"{result.get('device_kind')}; MFU against {(result.get('peak_flops') or 0) / 1e12:.1f} "
        f"TFLOP/s ({result.get('peak_flops_source')})",
        "",
        "| frames | batch | warm-up s | step ms | steps/s | TFLOP/step | TFLOP/s | MFU | mem GB "
        "| cuDNN attention calls |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result.get("rows", []):
        mem = r.get("device_peak_bytes_so_far")
        mem = "-" if mem is None else f"{mem / 1e9:.1f}"
        if "error" in r:
            lines.append(f"| {r['frames']} | {r['batch']} | {r['error'][:80]} ||||||{mem} | |")
            continue
        mfu = "n/a" if r.get("mfu") is None else f"{100 * r['mfu']:.1f}%"
        lines.append(
            f"| {r['frames']} | {r['batch']} | {r['warmup_s']:.1f} | "
            f"{1e3 * r['median_step_s']:.1f} | {r['steps_per_s']:.2f} | "
            f"{r['model_flops_per_step'] / 1e12:.2f} | {r['achieved_tflops']:.1f} | {mfu} | "
            f"{mem} | {r.get('cudnn_attention_calls', '-')} |"
        )
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
