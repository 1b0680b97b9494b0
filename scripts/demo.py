"""The end-to-end demo on the embedded synthetic corpus (``make demo``), offline.

synthetic corpus → preprocessing (keypoint crops, pseudo labels from the
simulated VLM through the real google-genai client) → DINOv2 encoding (random
weights) → stage 1 for each branch, on all labelled videos and on two
subject-disjoint folds → stage 2: the stacked fusion of the branches and the
labeler's verdict (fitted out of fold), and the jointly fine-tuned fused model
with and without the pseudo-labelled pool over a few seeds → evaluation
reports → a final table. Every step is the project's own command, run as a
subprocess.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from hemo_jax.training import metrics
from preprocess.corpora import imigue
from preprocess.synthetic import vlm_oracle, vlm_sim

BRANCHES = ("keypoints", "image", "text")
FOLDS = 2  # out-of-fold runs per branch for the stacked fusion
# Runs whose evaluations along the way (on the validation split) are read by nothing: the
# fold runs, and the later seeds, which hemo_jax.evaluate scores on the test split.
ONLY_FINAL_EVAL = "--config.train.eval_every=1000000"


def run(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> None:
    """Runs one step, its output going to ``log``; a failure shows the log's tail."""
    started = time.time()
    with open(log, "w") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    if done.returncode:
        tail = log.read_text().splitlines()[-30:]
        raise SystemExit(f"step failed ({' '.join(cmd)}):\n" + "\n".join(tail))
    print(f"  {' '.join(cmd[2:5])[:150]} ... {time.time() - started:.0f} s", flush=True)


def metrics_of(workdir: Path) -> dict[str, dict]:
    return json.loads((workdir / "report" / "metrics.json").read_text())["metrics"]


def labeler_metrics(workdir: Path) -> dict[str, dict]:
    """The labeler's verdicts scored like a model, from a report's per-video CSV."""
    with open(workdir / "report" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    labels = np.array([int(r["label"]) for r in rows])
    verdicts = np.array([float(r["pseudo_label"]) for r in rows])
    intervals, _ = metrics.evaluate_with_intervals(labels, verdicts)
    return {k: {"value": v.value, "low": v.low, "high": v.high} for k, v in intervals.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="demo_out")
    p.add_argument("--videos", type=int, default=300)
    p.add_argument("--seeds", type=int, default=3, help="stage-2 seeds, with and without pool")
    p.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        help="processes at once (corpus videos, training runs)",
    )
    p.add_argument("--vlm-accuracy", type=float, default=0.8)
    p.add_argument("--smoke", action="store_true", help="a tiny corpus and few steps")
    args = p.parse_args()

    out = Path(args.out)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    py = [sys.executable, "-m"]
    env = dict(os.environ)
    # Identical programs across runs compile once: the cache keeps XLA executables.
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(out / "jax_cache"))
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    env.setdefault("HF_HUB_OFFLINE", "1")
    # XLA:CPU takes each step's scratch memory fresh from the kernel, page by page;
    # backed by huge pages, training runs take a fifth more steps a second here
    # (BENCHMARKS.md, train step).
    env.setdefault("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
    variant = ",smoke" if args.smoke else ""
    videos = 24 if args.smoke else args.videos
    t0 = time.time()

    print("1. synthetic corpus", flush=True)
    corpus = out / "corpus"
    synth = ["preprocess", "synth", "--out", str(corpus), "--videos", str(videos)]
    # Long, sparsely sampled interviews: as many frames as short dense ones, more gestures.
    synth += ["--seed", "0", "--fps", "5", "--min-seconds", "20", "--max-seconds", "40"]
    synth += ["--width", "256", "--height", "192", "--jobs", str(args.jobs)]
    if args.smoke:  # one video a subject: enough training subjects to carve a validation
        synth += ["--videos-per-subject", "1"]
    run(py + synth, logs / "synth.log", env)

    print("2. preprocessing with the simulated VLM (a noisy oracle, not Gemini)", flush=True)
    manifest = imigue.build_manifest(imigue.CorpusLayout(corpus))
    truth = vlm_oracle.truth_for_videos(
        (row.video_path, row.label) for row in manifest if row.video_path
    )
    raw = out / "raw"
    with vlm_sim.SimulatedVLM(truth, accuracy=args.vlm_accuracy, seed=0) as server:
        run(
            py
            + ["preprocess", "run", "--corpus", "synthetic", "--root", str(corpus)]
            + ["--out", str(raw), "--detector", "keypoints", "--image-fps", "1"]
            + ["--labeler", "gemini"]
            + ["--base-url", server.base_url],
            logs / "preprocess.log",
            {**env, "GEMINI_API_KEY": "simulated-key"},
        )

    print("3. DINOv2 features (random weights: the demo has no pretrained checkpoint)", flush=True)
    features = out / "features"
    run(
        py
        + ["hemo_jax.encode", f"--config=configs/encode.py:demo{variant}"]
        + [f"--config.input={raw}", f"--config.output={features}"],
        logs / "encode.log",
        env,
    )

    def train(name: str, config: str, *overrides: str, evaluate: bool = True) -> Path:
        workdir = out / "runs" / name
        cmd = py + ["hemo_jax.train", f"--config=configs/demo.py:{config}{variant}"]
        cmd += [f"--workdir={workdir}", f"--config.data.shards={features}", *overrides]
        run(cmd, logs / f"{name}.log", env)
        if evaluate:
            run(py + ["hemo_jax.evaluate", f"--workdir={workdir}"], logs / f"{name}.eval.log", env)
        return workdir

    def stack(name: str, runs: list[Path], *flags: str) -> Path:
        workdir = out / "runs" / name
        cmd = py + ["hemo_jax.stack", f"--workdir={workdir}", "--runs=" + ",".join(map(str, runs))]
        run(cmd + list(flags), logs / f"{name}.log", env)
        return workdir

    # The runs of a stage are independent: small models keep a process from using both
    # cores well, so they run side by side, one per core.
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs)

    print(f"4. stage 1: each branch alone, on all labelled videos and on {FOLDS} folds", flush=True)
    futures = {b: pool.submit(train, f"stage1_{b}", b) for b in BRANCHES}
    fold_futures = [
        pool.submit(
            train,
            f"stage1_{b}_fold{k}",
            b,
            f"--config.data.fold={k}/{FOLDS}",
            ONLY_FINAL_EVAL,
            evaluate=False,
        )
        for k in range(FOLDS)
        for b in BRANCHES
    ]
    stage1 = {b: f.result() for b, f in futures.items()}
    init = [f"--config.init_from.{b}={stage1[b]}" for b in BRANCHES]

    print("5. stage 2: fine-tuned, with and without the pool, and stacked", flush=True)
    pseudo_pools = {"with": "unlabeled", "without": "none"}
    runs = {
        (mode, seed): pool.submit(
            train,
            f"stage2_{mode}_pseudo_seed{seed}",
            "fused",
            *init,
            f"--config.seed={seed}",
            f"--config.pseudo.pool={pseudo_pool}",
            # Other seeds count only in the with/without comparison, on the test split:
            # their evaluations during training (on the validation split) are not needed.
            *([] if seed == 0 else [ONLY_FINAL_EVAL]),
        )
        for seed in range(args.seeds)
        for mode, pseudo_pool in pseudo_pools.items()
    }
    stage1_runs = [*stage1.values(), *(f.result() for f in fold_futures)]
    stacked = {
        "without": pool.submit(stack, "stage2_stacked", stage1_runs),
        "with": pool.submit(stack, "stage2_stacked_with_pool", stage1_runs, "--pool=unlabeled"),
    }
    stacked = {m: f.result() for m, f in stacked.items()}
    stage2 = {m: [runs[m, seed].result() for seed in range(args.seeds)] for m in pseudo_pools}
    pool.shutdown()

    print("6. results on the balanced test split", flush=True)
    rows = [(f"stage 1: {b}", metrics_of(stage1[b])) for b in BRANCHES]
    labeler_row = "the labeler's verdict alone (simulated VLM)"
    rows.append((labeler_row, labeler_metrics(stage1["text"])))
    rows += [
        ("stage 2: stacked fusion (branches + labeler)", metrics_of(stacked["without"])),
        ("stage 2: stacked fusion, pool rows in the fit", metrics_of(stacked["with"])),
    ]
    rows += [
        (f"stage 2: fine-tuned, {m} pseudo labels (seed 0)", metrics_of(stage2[m][0]))
        for m in stage2
    ]
    keys = ("balanced_accuracy", "accuracy", "macro_f1", "auroc")
    lines = ["| model | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, m in rows:
        cells = [f"{m[k]['value']:.3f} [{m[k]['low']:.2f}, {m[k]['high']:.2f}]" for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    bal = {
        mode: np.array([metrics_of(w)["balanced_accuracy"]["value"] for w in dirs])
        for mode, dirs in stage2.items()
    }
    diff = bal["with"] - bal["without"]
    spread = diff.std()
    if abs(diff.mean()) <= spread:
        outcome = "No difference beyond the spread between seeds."
    elif diff.mean() > 0:
        outcome = "They helped."
    else:
        outcome = "They hurt."
    verdict = (
        f"Pseudo-labelled pool in the fine-tuned model, balanced accuracy over {args.seeds} "
        f"seeds: with "
        f"{bal['with'].mean():.3f} ± {bal['with'].std():.3f}, without "
        f"{bal['without'].mean():.3f} ± {bal['without'].std():.3f}; per-seed difference "
        f"{', '.join(f'{d:+.3f}' for d in diff)} (mean {diff.mean():+.3f}). {outcome}"
    )
    bal_of = {name: m["balanced_accuracy"]["value"] for name, m in rows}
    best_single = max(bal_of[f"stage 1: {b}"] for b in BRANCHES)
    stacked_bal = {m: metrics_of(w)["balanced_accuracy"]["value"] for m, w in stacked.items()}
    summary = "\n".join(
        lines
        + [
            "",
            verdict,
            f"In the stacked fusion's fit: {stacked_bal['with']:.3f} with the pool's rows, "
            f"{stacked_bal['without']:.3f} without.",
            f"Stacked fusion {stacked_bal['without']:.3f} vs best single branch "
            f"{best_single:.3f} and the labeler alone "
            f"{bal_of[labeler_row]:.3f}.",
            f"Total time {time.time() - t0:.0f} s. Reports: {out}/runs/*/report/report.html",
        ]
    )
    (out / "summary.md").write_text(summary + "\n")
    print(summary)


if __name__ == "__main__":
    main()
