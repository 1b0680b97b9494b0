"""The paper's research questions on the synthetic generator (``make paper``), offline.

For each corpus seed: synthetic corpus → preprocessing with the simulated VLM → DINOv2
features (random weights), exactly as scripts/demo.py makes its corpus; then
``python -m hemo_jax.ablate`` over the feature shard sets, which writes
OUT/paper.md, OUT/paper.html and OUT/paper.png. Every step is the project's own
command, run as a subprocess; a step whose output is complete is skipped, so a killed
run resumes with the same command. This script is the only place that imports
preprocess: the JAX side reads the shard sets alone.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import subprocess
import sys
import time
from pathlib import Path

from hemo_jax.contract import atomic
from preprocess.corpora import imigue
from preprocess.synthetic import vlm_oracle, vlm_sim


def run(cmd: list[str], log: Path, env: dict[str, str]) -> None:
    """Runs one step, its output going to ``log``; a failure shows the log's tail."""
    started = time.time()
    with open(log, "w") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    if done.returncode:
        tail = log.read_text().splitlines()[-30:]
        raise SystemExit(f"step failed ({' '.join(cmd)}):\n" + "\n".join(tail))
    print(f"  {' '.join(cmd[2:4])} ... {time.time() - started:.0f} s", flush=True)


def step(marker: Path, cmd: list[str], log: Path, env: dict[str, str]) -> None:
    """``run`` unless ``marker`` says the step finished before; then marks it."""
    if marker.exists():
        print(f"  {marker.name.removesuffix('.done')}: done before", flush=True)
        return
    run(cmd, log, env)
    atomic.write_text(marker, "")


def build_corpus(seed: int, out: Path, args: argparse.Namespace, env: dict[str, str]) -> Path:
    """synth → preprocess run (simulated VLM) → encode for one corpus seed; its features."""
    root = out / "corpora" / f"seed{seed}"
    logs = out / "logs" / "corpora" / f"seed{seed}"
    logs.mkdir(parents=True, exist_ok=True)
    py = [sys.executable, "-m"]
    corpus, raw, features = root / "corpus", root / "raw", root / "features"
    synth = ["preprocess", "synth", "--out", str(corpus), "--videos", str(args.videos)]
    synth += ["--seed", str(seed), "--fps", "5", "--min-seconds", "16", "--max-seconds", "32"]
    synth += ["--width", "256", "--height", "192", "--jobs", str(args.jobs)]
    if args.smoke:  # one video a subject: enough training subjects to carve a validation
        synth += ["--videos-per-subject", "1"]
    step(root / "synth.done", py + synth, logs / "synth.log", env)

    if not (root / "preprocess.done").exists():
        manifest = imigue.build_manifest(imigue.CorpusLayout(corpus))
        truth = vlm_oracle.truth_for_videos(
            (row.video_path, row.label) for row in manifest if row.video_path
        )
        with vlm_sim.SimulatedVLM(truth, accuracy=args.vlm_accuracy, seed=seed) as server:
            cmd = ["preprocess", "run", "--corpus", "synthetic", "--root", str(corpus)]
            cmd += ["--out", str(raw), "--detector", "keypoints", "--image-fps", "1"]
            cmd += ["--labeler", "gemini", "--base-url", server.base_url]
            vlm_env = {**env, "GEMINI_API_KEY": "simulated-key"}
            step(root / "preprocess.done", py + cmd, logs / "preprocess.log", vlm_env)

    variant = ",smoke" if args.smoke else ""
    encode = ["hemo_jax.encode", f"--config=configs/encode.py:demo{variant}"]
    encode += [f"--config.input={raw}", f"--config.output={features}"]
    step(root / "encode.done", py + encode, logs / "encode.log", env)
    return features


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="paper_out")
    p.add_argument("--corpus-seeds", type=int, default=3, help="synthetic corpora (seeds 0..)")
    p.add_argument("--seeds", type=int, default=3, help="training seeds per corpus")
    p.add_argument("--videos", type=int, default=160, help="videos per corpus")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes at once")
    p.add_argument("--vlm-accuracy", type=float, default=0.8)
    p.add_argument("--tables", default="", help="only these tables, e.g. rq1,rq5")
    p.add_argument("--smoke", action="store_true", help="tiny corpora and configs")
    args = p.parse_args()
    if args.smoke:
        args.videos = 24

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(out / "jax_cache"))
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
    t0 = time.time()

    print(f"1. {args.corpus_seeds} synthetic corpora of {args.videos} videos", flush=True)
    # Corpora side by side: each step is mostly one process (synth spreads itself).
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {
            seed: pool.submit(build_corpus, seed, out, args, env)
            for seed in range(args.corpus_seeds)
        }
        features = {f"corpus{seed}": f.result() for seed, f in futures.items()}
    print(f"   corpora ready after {time.time() - t0:.0f} s", flush=True)

    print("2. the research-question grid (hemo_jax.ablate)", flush=True)
    cmd = [sys.executable, "-m", "hemo_jax.ablate", f"--out={out}"]
    cmd += ["--shards=" + ",".join(f"{k}={v}" for k, v in features.items())]
    cmd += [f"--seeds={args.seeds}", f"--jobs={args.jobs}"]
    cmd += ["--smoke"] * args.smoke + ([f"--tables={args.tables}"] if args.tables else [])
    done = subprocess.run(cmd, env=env)
    if done.returncode:
        raise SystemExit(f"hemo_jax.ablate failed (logs in {out}/logs)")
    print(f"Total time {time.time() - t0:.0f} s. Tables: {out}/paper.md, {out}/paper.html")


if __name__ == "__main__":
    main()
