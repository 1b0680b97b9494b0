"""OpenPose reader throughput: `read_openpose_dir` against a plain `json.load` loop.

Writes a temporary directory of synthetic OpenPose frames (iMiGUE naming, 1-2 people per frame,
numbers formatted as OpenPose writes them: C++ stream default, 6 significant digits, e.g.
582.349,507.866,0.845918), then times, in the same run and on the same files:
  json.load loop      open + json.load + numpy per file (what a simple reader does)
  strict parser       `parse_openpose_frame` per file (json + checks, the reference path)
  read_openpose_dir   the reader as the pipeline uses it (msgspec + pysimdjson batches, subject
                      choice)
Each runs `--repeats` times, interleaved, after one warm-up pass (page cache warm for all);
the best wall time and the best CPU time count (CPU time is steadier on a shared machine).
Results go to benchmarks/results/openpose_reader.json and a markdown table.

    .venv/bin/python benchmarks/openpose_reader.py            # 20,000 frames
    .venv/bin/python benchmarks/openpose_reader.py --quick    # 2,000 frames, smoke run
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from hemo_jax.contract import atomic  # noqa: E402
from preprocess.keypoints.openpose import SECTIONS, parse_openpose_frame, read_openpose_dir  # noqa: E402


def _number(value: float) -> str:
    return f"{value:.6g}"  # what `std::ostream << float` writes by default


def _person(rng: np.random.Generator, centre: np.ndarray, scale: float) -> dict:
    person: dict = {"person_id": [-1]}
    for key, rows in SECTIONS:
        n = rows.stop - rows.start
        xy = centre + rng.normal(0, scale, (n, 2))
        conf = rng.beta(5, 2, n)
        missing = rng.random(n) < (0.3 if key == "pose_keypoints_2d" else 0.1)
        if key.startswith("hand") and rng.random() < 0.3:  # hand not found at all
            missing[:] = True
        values = np.column_stack([xy, conf])
        values[missing] = 0
        person[key] = values.ravel().tolist()
    for key, _ in SECTIONS:
        person[key.replace("_2d", "_3d")] = []  # written empty unless OpenPose runs with --3d
    return person


def _frame_text(people: list[dict]) -> str:
    parts = []
    for p in people:
        fields = [f'"{k}":[' + ",".join(map(_number, vals)) + "]" for k, vals in p.items()]
        parts.append("{" + ",".join(fields) + "}")
    return '{"version":1.3,"people":[' + ",".join(parts) + "]}"


def write_frames(directory: str, frames: int, seed: int) -> int:
    """Write `frames` files (every 500th frame number skipped, as a gap); return bytes written."""
    rng = np.random.default_rng(seed)
    total = 0
    main, other = np.array([640.0, 300.0]), np.array([1000.0, 350.0])
    for i in range(frames):
        people = [_person(rng, main + rng.normal(0, 5, 2), 60)]
        if rng.random() < 0.3:
            people.append(_person(rng, other + rng.normal(0, 40, 2), 35))
        text = _frame_text(people)
        number = i + i // 500  # a gap after every 500 frames
        with open(os.path.join(directory, f"bench_{number:012d}_keypoints.json"), "w") as f:
            f.write(text)
        total += len(text)
    return total


def json_load_loop(directory: str) -> int:
    names = sorted(n for n in os.listdir(directory) if n.endswith("_keypoints.json"))
    count = 0
    for name in names:
        with open(os.path.join(directory, name)) as f:
            data = json.load(f)
        for p in data["people"]:
            values = [v for key, _ in SECTIONS for v in p[key]]
            np.asarray(values, np.float32).reshape(-1, 3)
        count += 1
    return count


def strict_loop(directory: str) -> int:
    names = sorted(n for n in os.listdir(directory) if n.endswith("_keypoints.json"))
    for name in names:
        path = os.path.join(directory, name)
        with open(path, "rb") as f:
            parse_openpose_frame(f.read(), source=path)
    return len(names)


def reader(directory: str) -> int:
    return len(read_openpose_dir(directory).frames)


def best_times(methods: dict, directory: str, repeats: int) -> dict[str, dict[str, float]]:
    """Best wall and CPU time of each method; runs interleave so a busy spell hits all alike."""
    for fn in methods.values():
        fn(directory)  # warm-up: page cache, imports, allocator
    best: dict[str, dict[str, float]] = {name: {} for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            wall, cpu = time.perf_counter(), time.process_time()
            count = fn(directory)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            assert count == len(os.listdir(directory)), (name, count)
            best[name]["seconds"] = min(wall, best[name].get("seconds", wall))
            best[name]["cpu_seconds"] = min(cpu, best[name].get("cpu_seconds", cpu))
    return best


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="2,000 frames, 1 repeat")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args()
    if args.quick:
        args.frames, args.repeats = 2_000, 1
    load_before = os.getloadavg()
    directory = tempfile.mkdtemp(prefix="openpose_bench_")
    try:
        size = write_frames(directory, args.frames, args.seed)
        methods = {
            "json.load loop": json_load_loop,
            "strict parser": strict_loop,
            "read_openpose_dir": reader,
        }
        rows = [
            {"method": name, **t, "frames_per_s": args.frames / t["seconds"]}
            for name, t in best_times(methods, directory, args.repeats).items()
        ]
    finally:
        shutil.rmtree(directory)
    for row in rows:
        row["speedup_vs_json_load"] = rows[0]["seconds"] / row["seconds"]
        row["cpu_speedup_vs_json_load"] = rows[0]["cpu_seconds"] / row["cpu_seconds"]
    result = {
        "benchmark": "openpose_reader",
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            **{name: _version(name) for name in ("jax", "torch", "msgspec", "pysimdjson")},
            "load_average_before": load_before,  # 2 cores shared with other jobs: see CPU s
            "load_average_after": os.getloadavg(),
        },
        "frames": args.frames,
        "mean_file_bytes": size / args.frames,
        "repeats": args.repeats,
        "rows": rows,
    }
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "openpose_reader.json")
    atomic.write_json(Path(path), result)
    before, after = (", ".join(f"{x:.1f}" for x in load) for load in (load_before, os.getloadavg()))
    per_file = size / args.frames
    print(f"{args.frames} frames, {per_file:.0f} B/file, best of {args.repeats}")
    print(f"load average before {before}, after {after} ({os.cpu_count()} CPUs)")
    print("| method | wall s | frames/s | vs json.load | CPU s | CPU vs json.load |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['method']} | {r['seconds']:.3f} | {r['frames_per_s']:,.0f} "
            f"| {r['speedup_vs_json_load']:.2f}x | {r['cpu_seconds']:.3f} "
            f"| {r['cpu_speedup_vs_json_load']:.2f}x |"
        )


if __name__ == "__main__":
    main()
