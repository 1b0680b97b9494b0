"""Preprocessing at iMiGUE's size: how time, memory and shard bytes grow with the corpus.

For each corpus size N (``--sizes``), every step a fresh process, as a user runs it:

1. ``preprocess synth``: a skeleton-only corpus (no mp4) of N videos with iMiGUE's lengths
   (``--lengths imigue --fps 25``, 1280×720: about 20,000 frames a video), its bytes and
   files on disk;
2. ``preprocess run`` and ``preprocess beam`` (DirectRunner, multi_processing,
   ``--beam-workers`` processes) on it, labeler off: wall time, peak memory (the sum of
   the resident sets of the command and all its child processes, sampled every 0.1 s, and
   the largest single process), the shard bytes; the two sets must hold the same records;
3. the training loader over the run's set with the stage-1 keypoint config
   (``configs/pretrain.py:keypoints``: batch 16, windows of 512 frames): records/s after
   ``--warmup`` batches;
4. at the largest size only (a step's cost depends on the window, not on the corpus):
   ``hemo_jax.train`` stage 1, keypoints, on the same set for ``--train-steps`` steps
   (every split ``train``, evaluated on ``train``): steady steps/s between step 5 and the
   last (the first steps compile; the loader runs inside the step's time), its wall time
   and peak memory.

Each size's row is rewritten into the results file as soon as it is measured. Before
anything is written the disk it needs is estimated (each skeleton frame file takes a 4 KiB
block; shards take 1,644 bytes a frame, twice) and a run that would leave less than
``--keep-free`` GiB free is refused.

    python benchmarks/preprocess_scale.py --work /tmp/scale              # 4, 8, 16 videos
    python benchmarks/preprocess_scale.py --work /tmp/scale --sizes 1    # smoke
    python benchmarks/preprocess_scale.py --work /big/scale --sizes 45 90 180 359 \\
        --beam-workers 16 --jobs 16                                       # the full run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from hemo_jax.contract import atomic  # noqa: E402
from hemo_jax.contract.shards import open_shards  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "preprocess_scale.json"
FPS, WIDTH, HEIGHT, MIN_S, MAX_S = 25, 1280, 720, 30, 1500  # iMiGUE's rate, size and range
MEAN_FRAMES = 20_000  # iMiGUE's mean, for the disk estimate
FILE_BYTES = 4096  # one skeleton JSON (about 3 KB) in one block
RECORD_BYTES_PER_FRAME = 137 * 3 * 4  # float32 keypoints, before snappy


def measure(cmd: list[str]) -> dict[str, Any]:
    """Runs ``cmd`` from the repository root with ``PYTHONPATH`` on it; its wall time, the
    peak memory of its process tree and the tail of its output."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    peak = {"tree": 0, "largest": 0}
    done = threading.Event()

    def sample() -> None:
        top = psutil.Process(proc.pid)
        while not done.wait(0.1):
            try:
                rss = [p.memory_info().rss for p in (top, *top.children(recursive=True))]
            except psutil.Error:
                continue  # a process ended between listing and reading it
            peak["tree"] = max(peak["tree"], sum(rss))
            peak["largest"] = max(peak["largest"], max(rss))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{out[-4000:]}")
    return {
        "wall_s": round(wall, 2),
        "peak_tree_mib": round(peak["tree"] / 2**20, 1),
        "peak_process_mib": round(peak["largest"] / 2**20, 1),
        "tail": out[-300:],
    }


def disk_use(folder: Path) -> dict[str, int]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return {
        "files": len(files),
        "bytes": sum(p.stat().st_size for p in files),
        "disk_bytes": sum(p.stat().st_blocks * 512 for p in files),
    }


def shard_records(out: Path) -> dict[str, bytes]:
    shards = open_shards(out)
    try:
        return {info.video_id: shards[i] for i, info in enumerate(shards.infos)}
    finally:
        shards.close()


def shard_bytes(out: Path) -> int:
    shards = open_shards(out)
    try:
        return sum(s.num_bytes for s in shards.shards)
    finally:
        shards.close()


def loader_rate(shards: Path, batches: int, warmup: int) -> dict[str, Any]:
    """Records/s of the stage-1 keypoint training loader over ``shards``."""
    from hemo_jax.training.inputs import pipeline_config

    from configs import pretrain
    from hemo_jax.data.pipeline import make_loader

    config = pretrain.get_config("keypoints")
    cfg = pipeline_config(config, train=True)
    with make_loader(shards, cfg, train=True, process_index=0, process_count=1) as loader:
        for _ in range(warmup):
            next(loader)
        t0 = time.perf_counter()
        for _ in range(batches):
            next(loader)
        secs = time.perf_counter() - t0
    return {
        "batch_size": cfg.batch_size,
        "max_frames": cfg.max_frames,
        "records_per_s": round(batches * cfg.batch_size / secs, 2),
    }


def train_rate(shards: Path, workdir: Path, steps: int) -> dict[str, Any]:
    """Stage 1, keypoints, on ``shards``: steady steps/s from the trainer's own log."""
    cmd = [sys.executable, "-m", "hemo_jax.train", "--config", "configs/pretrain.py:keypoints"]
    cmd += [f"--workdir={workdir}", f"--config.data.shards={shards}"]
    cmd += [f"--config.train.steps={steps}", "--config.train.log_every=1"]
    cmd += ["--config.data.eval_split=train", f"--config.train.eval_every={steps}"]
    cmd += [f"--config.train.checkpoint_every={steps}", "--config.train.progress=False"]
    run = measure(cmd)
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r for r in rows if r["kind"] == "train"}
    first = min(5, steps - 1)
    # steps_per_s is cumulative from the first step: its time at step s is s / rate.
    t_first = first / train[first]["steps_per_s"]
    t_last = steps / train[steps]["steps_per_s"]
    return {
        "steps": steps,
        "steady_steps_per_s": round((steps - first) / (t_last - t_first), 3),
        "wall_s": run["wall_s"],
        "peak_tree_mib": run["peak_tree_mib"],
    }


def estimate_bytes(videos: int) -> int:
    frames = videos * MEAN_FRAMES
    return frames * FILE_BYTES + 2 * frames * RECORD_BYTES_PER_FRAME


def one_size(n: int, args: argparse.Namespace) -> dict[str, Any]:
    py = [sys.executable, "-m", "preprocess"]
    corpus, run_out, beam_out = (args.work / f"{k}-{n}" for k in ("corpus", "run", "beam"))
    for folder in (corpus, run_out, beam_out, args.work / f"train-{n}"):
        shutil.rmtree(folder, ignore_errors=True)
    synth = measure(
        [*py, "synth", "--out", str(corpus), "--videos", str(n), "--seed", str(args.seed)]
        + ["--fps", str(FPS), "--width", str(WIDTH), "--height", str(HEIGHT)]
        + ["--min-seconds", str(MIN_S), "--max-seconds", str(MAX_S), "--lengths", "imigue"]
        + ["--no-video", "--jobs", str(args.jobs)]
    )
    synth.update(disk_use(corpus))
    frames = sum(1 for _ in (corpus / "Data" / "skeleton" / "raw").rglob("*.json"))
    common = ["--corpus", "synthetic", "--root", str(corpus), "--labeler", "none"]
    common += ["--split", "all", "--records-per-shard", str(args.records_per_shard)]
    run = measure([*py, "run", *common, "--out", str(run_out), "--no-progress"])
    beam = measure(
        [*py, "beam", *common, "--out", str(beam_out), "--runner", "DirectRunner"]
        + ["--direct_running_mode", "multi_processing"]
        + ["--direct_num_workers", str(args.beam_workers)]
    )
    run["shard_bytes"], beam["shard_bytes"] = shard_bytes(run_out), shard_bytes(beam_out)
    same = shard_records(run_out) == shard_records(beam_out)
    if not same:
        raise RuntimeError(f"{run_out} and {beam_out} hold different records")
    row = {
        "videos": n,
        "keypoint_frames": frames,
        "synth": synth,
        "run": run,
        "beam": {**beam, "workers": args.beam_workers},
        "same_records": same,
        "loader": loader_rate(run_out, args.loader_batches, args.warmup),
        # A step's cost depends on the window, not on the corpus: measured at one size.
        "train": train_rate(run_out, args.work / f"train-{n}", args.train_steps)
        if n == max(args.sizes)
        else None,
    }
    if not args.keep:
        for folder in (corpus, beam_out, args.work / f"train-{n}"):
            shutil.rmtree(folder, ignore_errors=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for corpora and shards")
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="synth processes")
    parser.add_argument("--beam-workers", type=int, default=2)
    parser.add_argument(
        "--records-per-shard",
        type=int,
        default=2,
        help="both engines; a Beam worker builds one shard's videos, so keep shards >= workers",
    )
    parser.add_argument("--loader-batches", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--keep-free", type=float, default=20.0, help="GiB to leave free")
    parser.add_argument("--keep", action="store_true", help="keep corpora and shard sets")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    need = (
        max(estimate_bytes(n) for n in args.sizes)
        if not args.keep
        else sum(estimate_bytes(n) for n in args.sizes)
    )
    free = shutil.disk_usage(args.work).free
    if free - need < args.keep_free * 2**30:
        sys.exit(
            f"{args.work}: the largest size needs about {need / 2**30:.1f} GiB and "
            f"{free / 2**30:.1f} GiB are free; keep {args.keep_free} GiB free (--keep-free)"
        )
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in lines if "model name" in ln), "unknown")
    result: dict[str, Any] = {
        "benchmark": "preprocess_scale",
        "command": " ".join([sys.executable, *sys.argv]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "loadavg_before": os.getloadavg(),
        "rows": [],
    }
    for n in args.sizes:
        print(f"{n} videos ...", file=sys.stderr, flush=True)
        row = one_size(n, args)
        result["rows"].append(row)
        result["loadavg_after"] = os.getloadavg()
        atomic.write_json(args.out, result)
        brief = {k: row[k] for k in ("videos", "keypoint_frames")}
        brief |= {e: (row[e]["wall_s"], row[e]["peak_tree_mib"]) for e in ("synth", "run", "beam")}
        print(json.dumps(brief), file=sys.stderr, flush=True)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
