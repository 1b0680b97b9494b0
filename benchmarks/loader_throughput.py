"""Loader throughput at a realistic record size.

Writes N records (5,000 keypoint frames [5000, 137, 3] float32 and 1,000
image-feature rows of width 768, no crops) into a temporary shard set, then
measures records/s and batches/s of the training pipeline with 0 and 2 worker
processes, plus the raw read+decode rate of the shard set.

    python benchmarks/loader_throughput.py            # 240 records
    python benchmarks/loader_throughput.py --quick    # smoke size
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hemo_jax.contract.keypoint_layout import NUM_KEYPOINTS
from hemo_jax.contract.schema import VideoRecord  # noqa: E402
from hemo_jax.contract.shards import ShardWriter, open_shards  # noqa: E402
from hemo_jax.data.pipeline import PipelineConfig, make_loader  # noqa: E402

FRAMES, IMAGES, DIM = 5000, 1000, 768


def realistic_record(i: int, rng: np.random.Generator) -> VideoRecord:
    """Smooth trajectories plus jitter, so compression sees what real poses give it."""
    base = rng.uniform(200, 900, (1, NUM_KEYPOINTS, 2))
    drift = np.cumsum(rng.normal(0, 0.5, (FRAMES, NUM_KEYPOINTS, 2)), axis=0)
    xy = base + drift + rng.normal(0, 1.5, (FRAMES, NUM_KEYPOINTS, 2))
    conf = rng.uniform(0.2, 1.0, (FRAMES, NUM_KEYPOINTS, 1))
    conf[:, 19:25] = 0  # seated players: feet missing
    kp = np.concatenate([xy * (conf > 0), conf], axis=-1).astype(np.float32)
    crop_frames = np.arange(0, FRAMES * 5, 25, dtype=np.int32)[:IMAGES]
    return VideoRecord(
        video_id=f"bench{i:04d}",
        subject_id=f"s{i % 72}",
        source="synthetic",
        split="train",
        fps=25.0,
        frame_size=(720, 1280),
        keypoints=kp,
        keypoint_frames=np.arange(0, FRAMES * 5, 5, dtype=np.int32),
        label=i % 2,
        crop_frames=crop_frames,
        boxes=np.tile(np.float32([400, 100, 880, 700]), (IMAGES, 1)),
        image_features=rng.standard_normal((IMAGES, DIM)).astype(np.float16),
    )


def write_set(out: Path, n: int) -> dict:
    rng = np.random.default_rng(0)
    records = [realistic_record(i, rng) for i in range(min(n, 16))]
    t0 = time.perf_counter()
    with ShardWriter(out, records_per_shard=32) as w:
        for i in range(n):  # 16 distinct payloads, reused under new ids
            w.add(dataclasses.replace(records[i % len(records)], video_id=f"bench{i:04d}"))
    secs = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in out.glob("*.array_record"))
    return {"records": n, "seconds": secs, "records_per_s": n / secs, "bytes": size}


def read_rate(out: Path, n: int) -> float:
    shards = open_shards(out)
    order = np.random.default_rng(1).permutation(len(shards))[:n]
    t0 = time.perf_counter()
    for i in order:
        shards.read(int(i), skip=("crops",))
    return n / (time.perf_counter() - t0)


def loader_rate(out: Path, cfg: PipelineConfig, batches: int, warmup: int) -> dict:
    with make_loader(out, cfg, train=True, process_index=0, process_count=1) as loader:
        t_start = time.perf_counter()
        for _ in range(warmup):
            next(loader)
        first = time.perf_counter() - t_start
        t0 = time.perf_counter()
        for _ in range(batches):
            batch = next(loader)
        secs = time.perf_counter() - t0
    nbytes = sum(v.nbytes for v in batch.values())
    return {
        "workers": cfg.num_workers,
        "batches_per_s": batches / secs,
        "records_per_s": batches * cfg.batch_size / secs,
        "startup_s": first,
        "batch_mib": nbytes / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=240)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-frames", type=int, default=2048)
    parser.add_argument("--image-max", type=int, default=256)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--quick", action="store_true", help="smoke size: 24 records, 5 batches")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    if args.quick:
        args.records, args.batches = 24, 5
    cfg = PipelineConfig(
        batch_size=args.batch_size,
        max_frames=args.max_frames,
        image_dim=DIM,
        image_max=args.image_max,
        read_threads=2,
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "shards"
        write = write_set(out, args.records)
        read = read_rate(out, min(args.records, 100))
        runs = [
            loader_rate(out, dataclasses.replace(cfg, num_workers=w), args.batches, 3)
            for w in args.workers
        ]
    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = None
    result = {
        "benchmark": "loader_throughput",
        "command": " ".join([sys.executable.split("/")[-1], *sys.argv]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
        },
        "versions": {
            "jax": importlib.metadata.version("jax"),
            "grain": importlib.metadata.version("grain"),
            "torch": torch_version,
        },
        "record": {"keypoint_frames": FRAMES, "image_rows": IMAGES, "feature_dim": DIM},
        "config": dataclasses.asdict(cfg),
        "write": write,
        "read_decode_records_per_s": read,
        "training": runs,
    }
    mib = write["bytes"] / 2**20
    print(
        f"shard set: {args.records} records, {mib:.0f} MiB, written at "
        f"{write['records_per_s']:.1f} records/s; read+decode {read:.1f} records/s\n"
    )
    print(
        f"training iteration (batch {cfg.batch_size}, window {cfg.max_frames} frames, "
        f"{cfg.image_max} image rows):\n"
    )
    print("| workers | records/s | batches/s | MiB/batch | first 3 batches (s) |")
    print("|---|---|---|---|---|")
    for r in runs:
        print(
            f"| {r['workers']} | {r['records_per_s']:.1f} | {r['batches_per_s']:.2f} | "
            f"{r['batch_mib']:.1f} | {r['startup_s']:.1f} |"
        )
    Path(args.out).mkdir(parents=True, exist_ok=True)
    path = Path(args.out) / "loader_throughput.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
