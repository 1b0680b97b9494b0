"""Runs the grid: each run is ``hemo_jax.train`` then ``hemo_jax.evaluate`` (on the test
split, at the checkpoint the validation split chose), as subprocesses, side by side.

A run whose report exists (``report/metrics.json``, written last) is skipped, so a
killed grid resumes where it stopped: a half-trained run resumes from its checkpoint
(``hemo_jax.train`` does), a trained but unevaluated one is only evaluated. Stage-1
runs go first, then the stage-2 runs that start from them.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from hemo_jax.ablation.grid import RunSpec

ROOT = Path(__file__).resolve().parents[2]  # the repository: configs/ lives there


@dataclasses.dataclass(frozen=True)
class Job:
    spec: RunSpec
    corpus: str
    shards: str
    seed: int

    def workdir(self, out: Path) -> Path:
        return out / "runs" / self.corpus / f"seed{self.seed}" / self.spec.name

    def log(self, out: Path) -> Path:
        return out / "logs" / self.corpus / f"seed{self.seed}" / f"{self.spec.name}.log"


def is_done(workdir: Path) -> bool:
    return (workdir / "report" / "metrics.json").exists()


@dataclasses.dataclass(frozen=True)
class Settings:
    out: Path
    variant: str = ""  # ",smoke" for the tiny configs
    extra: tuple[str, ...] = ()  # overrides for every training run
    bootstrap: int = 200  # resamples of each run's own report (the tables do their own)
    env: dict[str, str] | None = None


def commands(job: Job, s: Settings) -> list[list[str]]:
    workdir = job.workdir(s.out)
    train = [sys.executable, "-m", "hemo_jax.train"]
    train += [f"--config=configs/paper.py:{job.spec.stage}{s.variant}", f"--workdir={workdir}"]
    train += [f"--config.data.shards={job.shards}", f"--config.seed={job.seed}"]
    train += list(job.spec.overrides)
    for branch, run in job.spec.init:
        source = dataclasses.replace(job, spec=dataclasses.replace(job.spec, name=run))
        train.append(f"--config.init_from.{branch}={source.workdir(s.out)}")
    train += list(s.extra)
    evaluate = [sys.executable, "-m", "hemo_jax.evaluate", f"--workdir={workdir}"]
    evaluate += ["--checkpoint=best", f"--bootstrap={s.bootstrap}"]
    return [train, evaluate]


def run_job(job: Job, s: Settings) -> float:
    """Trains and evaluates one run (output to its log); its wall time in seconds."""
    log = job.log(s.out)
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with open(log, "w") as f:
        for cmd in commands(job, s):
            f.write("$ " + " ".join(cmd) + "\n")
            f.flush()
            done = subprocess.run(cmd, cwd=ROOT, env=s.env, stdout=f, stderr=subprocess.STDOUT)
            if done.returncode:
                tail = "\n".join(log.read_text().splitlines()[-25:])
                raise RuntimeError(f"{job.corpus}/seed{job.seed}/{job.spec.name} failed:\n{tail}")
    return time.time() - started


def run_grid(
    runs: Sequence[RunSpec],
    shards: dict[str, str],
    seeds: Sequence[int],
    s: Settings,
    *,
    jobs: int,
    report: Callable[[str], None] = print,
) -> list[str]:
    """Runs every missing run; returns the failures (empty when every run has a report)."""
    failures: list[str] = []
    failed: set[tuple[str, int, str]] = set()
    waves = [[r for r in runs if not r.init], [r for r in runs if r.init]]
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        for number, wave in enumerate(waves, start=1):
            todo, skipped = [], 0
            # Seed-major: a config's first run compiles, its other seeds and corpora
            # find the programs in the persistent compilation cache.
            for seed in seeds:
                for corpus, path in shards.items():
                    for spec in wave:
                        job = Job(spec, corpus, path, seed)
                        if is_done(job.workdir(s.out)):
                            skipped += 1
                        elif any((corpus, seed, n) in failed for n in spec.needs):
                            failures.append(f"{corpus}/seed{seed}/{spec.name}: a start failed")
                        else:
                            todo.append(job)
            report(f"wave {number}: {len(todo)} runs to do, {skipped} done before")
            futures = {pool.submit(run_job, job, s): job for job in todo}
            for future in concurrent.futures.as_completed(futures):
                job = futures[future]
                try:
                    took = future.result()
                    report(f"  {job.corpus}/seed{job.seed}/{job.spec.name}: {took:.0f} s")
                except RuntimeError as e:
                    failed.add((job.corpus, job.seed, job.spec.name))
                    failures.append(str(e))
                    report(f"  FAILED {e}")
    return failures
