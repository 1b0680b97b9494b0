"""The GPU suite's CPU-side parts: the trace parser, the bundling into three files, and
the suite itself in its CPU smoke mode (train step and longest-sequence probe)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_summary  # noqa: E402
import step_profile  # noqa: E402

RESULT_FILES = {"results.json", "logs.txt", "summary.md"}


def test_trace_time_is_split_by_kernel_kind_on_device_streams_only(tmp_path):
    events = [
        {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
        {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/host:CPU"}},
        {"ph": "X", "pid": 1, "name": "cudnn_generated_fort_native_sdpa_sm90", "dur": 3000},
        {"ph": "X", "pid": 1, "name": "sm90_xmma_gemm_bf16bf16_bf16f32", "dur": 1000},
        {"ph": "X", "pid": 1, "name": "loop_add_fusion", "dur": 500},
        {"ph": "X", "pid": 2, "name": "PjitFunction(step)", "dur": 9000},  # host: ignored
    ]
    path = tmp_path / "perfetto_trace.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": events}, f)
    parsed = step_profile.parse_trace(path, steps=2)
    assert parsed["source"] == "device streams"
    assert parsed["per_step_s"] == pytest.approx(
        {"attention": 1.5e-3, "matmul": 0.5e-3, "other": 0.25e-3}
    )
    assert parsed["slowest"][0]["name"].startswith("cudnn")


def test_bundle_is_three_files_whatever_ran(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    row = {"frames": 4096, "batch": 4, "warmup_s": 30.0, "median_step_s": 0.01,
           "steps_per_s": 100.0, "model_flops_per_step": 1.2e12, "mfu": 0.12,
           "mfu_vs_measured_matmul": 0.16, "attention_share": 0.4,
           "bound": {"step_over_floor": 1.5, "within_1_25": False}}  # fmt: skip
    failed = {"frames": 65536, "batch": 4, "error": "XlaRuntimeError: RESOURCE_EXHAUSTED"}
    (work / "train_step.json").write_text(json.dumps({"rows": [row, failed]}))
    (work / "checks.json").write_text("{ cut off")  # a write cut short
    (work / "train_step.log").write_text("line\n" * 1000)
    summary = gpu_summary.bundle(work, out, [["train_step", "124", "200"]])
    assert set(os.listdir(out)) == RESULT_FILES
    results = json.loads((out / "results.json").read_text())
    assert results["train_step"]["rows"][0]["mfu"] == 0.12
    assert results["checks"] is None
    assert "| 4096 | 4 | 30.0 | 10.0 | 100.00 | 1.20 | 12.0% / 16.0% |" in summary
    assert "1.50 OVER" in summary and "RESOURCE_EXHAUSTED" in summary
    assert "train_step TIMED OUT" in summary and "no encoder results" in summary
    assert (out / "logs.txt").read_text().count("line\n") == 400


def run_smoke(tmp_path: Path, steps: str) -> dict:
    env = {
        **os.environ,
        "OUT": str(tmp_path / "out"),
        "HEMO_GPU_SUITE_WORK": str(tmp_path / "work"),
        "HEMO_GPU_SUITE_SMOKE": "1",
        "HEMO_GPU_SUITE_STEPS": steps,
        "PYTHON": sys.executable,
    }
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks/gpu_suite.sh")],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert set(os.listdir(tmp_path / "out")) == RESULT_FILES
    assert f"{steps} ok" in (tmp_path / "out/summary.md").read_text(), done.stdout[-3000:]
    return json.loads((tmp_path / "out/results.json").read_text())


@pytest.mark.slow
def test_suite_smoke_train_step_on_the_cpu(tmp_path):
    (row,) = run_smoke(tmp_path, "train_step")["train_step"]["rows"]
    assert "error" not in row, row
    assert row["median_step_s"] > 0 and row["bound"]["floor_s"] > 0
    assert row["analytic"]["params"] == row["params"]
    assert row["profile"]["kernel_s_per_step"] > 0


@pytest.mark.slow
def test_suite_smoke_longest_sequence_on_the_cpu(tmp_path):
    result = run_smoke(tmp_path, "longest")["longest"]
    probes = result["probes"]
    # A probe cut off by the step's deadline is unknown (fits None); every other one
    # compiled and says how much memory the step takes.
    measured = [p for p in probes if p["fits"] is not None]
    assert measured and all(p["compiled_bytes"] > 0 for p in measured), probes
    assert all(p["fits"] == (p["compiled_bytes"] <= 16 * 2**20) for p in measured), probes
    # The first probe is at the analytic model's length for the 16 MiB stand-in limit.
    assert probes[0]["frames"] == result["longest"]["no_remat"]["analytic_prediction_90pct"]


def test_projection_per_video_hour():
    crops = {"rows": [
        {"video": "carphone 1280x720", "detector": "decode only", "frames_per_s": 250.0},
        {"video": "carphone 1280x720", "detector": "yolo yolo11n-seg @640", "frames_per_s": 100.0},
        {"video": "carphone 176x144", "detector": "decode only", "frames_per_s": 5000.0},
    ]}  # fmt: skip
    encode = {"rows": [{"what": "pipeline (JPEG decode + preprocess + forward)",
                        "jax_images_per_s": 200.0}]}  # fmt: skip
    (line,) = gpu_summary.projection(encode, crops)
    # 25 fps x 3600 s decoded at 250/s, 2 fps x 3600 s detected at 100/s, encoded at 200/s.
    assert "decode every frame 360 s" in line and "total 468 s" in line, line
    assert gpu_summary.projection(encode, None)[0].startswith("not enough")
