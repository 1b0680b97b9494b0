"""The GPU suite's results in three files, and one short markdown summary of them.

From the suite's work folder (one JSON and one log per step) it writes into OUT:
``results.json`` (every step's JSON under its name, and the step outcomes),
``logs.txt`` (the last lines of every log) and ``summary.md`` (step outcomes, the
environment, the correctness checks, the train-step table and profile, the longest
sequences, the encoders, encode and crops, and the GPU time per hour of video they
imply), and prints the summary. Reads only JSON and text (no JAX), so it works whatever
else broke.

    python benchmarks/gpu_summary.py WORK OUT env:0:12 checks:0:80 ...   # step:exit:seconds
"""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from hemo_jax.contract import atomic


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
        return ["no correctness-check results"]
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


def longest(result: dict[str, Any] | None) -> list[str]:
    if result is None:
        return ["no longest-sequence results"]
    limit = (result.get("device") or {}).get("bytes_limit")
    lines = [f"device memory limit {_fmt(limit, '.1f', 1e-9)} GB", ""]
    lines += ["| remat | largest that trained | smallest that failed | analytic (90%) |",
              "|---|---|---|---|"]  # fmt: skip
    for name, r in (result.get("longest") or {}).items():
        lines.append(
            f"| {name} | {r['largest_fitting']:,} | {r['smallest_failing'] or '-'} | "
            f"{r['analytic_prediction_90pct']:,} |"
        )
    for p in result.get("probes", []):
        lines.append(
            f"- {p['frames']:,} frames, remat {p['remat']}: fits {p.get('fits')}, compiled "
            f"{_fmt(p.get('compiled_bytes'), '.2f', 1e-9)} GB, device peak "
            f"{_fmt(p.get('device_peak_bytes'), '.2f', 1e-9)} GB, "
            f"{_fmt(p.get('seconds'), '.0f')} s {p.get('error', '')[:100]}"
        )
    return lines


def encoders(result: dict[str, Any] | None) -> list[str]:
    if result is None:
        return ["no encoder results"]
    lines = [
        f"JAX on {result.get('jax_device')}, PyTorch on {result.get('torch_device')}",
        "",
        "| model | batch | parity | JAX bf16 vs f32 | torch bf16 vs f32 | JAX vs torch bf16 "
        "| JAX /s | torch /s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result.get("rows", []):
        if "error" in r:
            lines.append(f"| {r['model']} | {r['error'][:120]} |||||||")
            continue
        lines.append(
            f"| {r['model']} | {r['batch']} | {'ok' if r['parity_ok'] else 'FAIL'} | "
            f"{r['jax_bf16_vs_torch_f32']:.1e} | {r['torch_bf16_vs_torch_f32']:.1e} | "
            f"{r['jax_bf16_vs_torch_bf16']:.1e} | {r['per_s']['jax']:.1f} {r['unit']} | "
            f"{r['per_s']['torch']:.1f} |"
        )
    return lines


def encode_and_crops(encode: dict | None, crops: dict | None) -> list[str]:
    lines = []
    for r in (encode or {}).get("rows", []):
        torch_rate = r.get("torch_images_per_s")
        lines.append(
            f"- encode {r['what']} ({r['dtype']}, batch {r['batch']}): JAX "
            f"{r['jax_images_per_s']:.1f} images/s"
            + (f", PyTorch {torch_rate:.1f}" if torch_rate else "")
        )
    for r in (crops or {}).get("rows", []):
        lines.append(f"- crops {r['video']}, {r['detector']} on {r['device']}: "
                     f"{r['frames_per_s']:.1f} frames/s")  # fmt: skip
    return lines or ["no encode or crops results"]


# iMiGUE's videos are 25 fps; the pipeline crops and encodes at preprocess's default
# image rate (preprocess.video.DEFAULT_IMAGE_FPS) and decodes every frame to get there.
VIDEO_FPS, IMAGE_FPS = 25.0, 2.0


def projection(encode: dict | None, crops: dict | None) -> list[str]:
    """GPU seconds per hour of 25-fps 720p video: decoding every frame, detecting and
    cropping at the image rate, encoding the crops (JPEG to features)."""
    rows = (crops or {}).get("rows", [])
    decode = next((r for r in rows if "720" in r["video"] and r["detector"] == "decode only"), None)
    yolo = next((r for r in rows if "720" in r["video"] and r["detector"].startswith("yolo")), None)
    pipeline = next((r for r in (encode or {}).get("rows", []) if r["what"].startswith("pipe")),
                    None)  # fmt: skip
    if not (decode and yolo and pipeline):
        return ["not enough results for a projection (720p decode, 720p yolo, encode pipeline)"]
    frames, images = 3600 * VIDEO_FPS, 3600 * IMAGE_FPS
    seconds = {
        "decode every frame": frames / decode["frames_per_s"],
        "detect + crop at the image rate": images / yolo["frames_per_s"],
        "encode crops": images / pipeline["jax_images_per_s"],
    }
    total = sum(seconds.values())
    return [
        "per hour of 25-fps 720p video, one after another (an upper bound: the suite runs "
        "them apart): "
        + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
        + f"; total {total:.0f} s, i.e. {total / 3600:.3f} GPU-hours per video-hour. "
        "iMiGUE's total is this times its hours of video.",
    ]


def bundle(work: Path, out: Path, steps: list[list[str]]) -> str:
    results = {p.stem: _load(p) for p in sorted(work.glob("*.json"))}
    results["steps"] = [{"name": n, "exit": rc, "seconds": s} for n, rc, s in steps]
    logs = []
    for log in sorted(work.glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()
        logs += [f"===== {log.name} ({len(lines)} lines, the last 400)", *lines[-400:], ""]
    lines = ["## GPU suite summary", "", time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())]
    lines.append("steps: " + " | ".join(f"{n} {_outcome(rc)} ({s} s)" for n, rc, s in steps))
    lines += ["", *environment(results.get("env"))]
    lines += ["", "### Train step (bf16, fused model)", *train_steps(results.get("train_step"))]
    lines += ["", "### Longest sequence on one GPU", *longest(results.get("longest"))]
    lines += ["", "### Correctness checks", *checks(results.get("checks"))]
    lines += ["", "### Encoders in bf16 against transformers", *encoders(results.get("encoders"))]
    lines += ["", "### Encode and crops", *encode_and_crops(results.get("encode"),
                                                            results.get("crops"))]  # fmt: skip
    lines += ["", "### Projection", *projection(results.get("encode"), results.get("crops"))]
    if results.get("attention"):
        lines += ["", "### Attention (bf16, batch 1, 8 heads, head_dim 64)"]
        lines.append(results["attention"].get("table", ""))
    summary = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / "results.json", json.dumps(results, indent=1, default=str))
    atomic.write_text(out / "logs.txt", "\n".join(logs)[-8_000_000:])
    atomic.write_text(out / "summary.md", summary)
    return summary


def main() -> None:
    work, out = Path(sys.argv[1]), Path(sys.argv[2])
    print(bundle(work, out, [s.split(":") for s in sys.argv[3:]]))


if __name__ == "__main__":
    main()
