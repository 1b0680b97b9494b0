"""The paper's research questions, regenerated: ``python -m hemo_jax.ablate
--shards=seed0=DIR0,seed1=DIR1,seed2=DIR2 --out=OUT``.

Takes prepared feature shard sets (the output of ``hemo_jax.encode``; one per corpus,
e.g. one per seed of the synthetic generator), runs the grid of ``hemo_jax.ablation.grid``
over every corpus and training seed (``hemo_jax.train`` + ``hemo_jax.evaluate``
subprocesses, ``--jobs`` side by side), and writes OUT/paper.md, OUT/paper.html and
OUT/paper.png: RQ1-RQ5 and the fusion, each cell mean ± sd over the runs, each row a
paired test against its table's first row. Rerunning the same command resumes: runs
with a report are skipped. ``--smoke`` uses the tiny configs (``configs/paper.py:*,smoke``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from absl import app, flags

from hemo_jax.ablation import grid, runner, tables

_SHARDS = flags.DEFINE_list(
    "shards", None, "NAME=DIR,...: feature shard sets, one per corpus.", required=True
)
_OUT = flags.DEFINE_string("out", None, "Output folder (runs, logs, tables).", required=True)
_SEEDS = flags.DEFINE_integer("seeds", 3, "Training seeds per corpus (0, 1, ...).", lower_bound=1)
_JOBS = flags.DEFINE_integer("jobs", os.cpu_count() or 1, "Runs at once.", lower_bound=1)
_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny configs that run in seconds.")
_SET = flags.DEFINE_multi_string(
    "set", [], "KEY=VALUE override for every training run, e.g. --set=model.dropout=0."
)
_TABLES = flags.DEFINE_list("tables", [], "Only these tables (rq1..rq5, fusion); all if empty.")
_RESAMPLES = flags.DEFINE_integer("resamples", 2000, "Paired-bootstrap resamples.", lower_bound=1)


def parse_shards(items: list[str]) -> dict[str, str]:
    """``["a=DIR", ...]`` -> ``{"a": "DIR"}``, each an existing folder, names unique."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise app.UsageError(f"--shards entry {item!r} is not NAME=DIR")
        if name in out:
            raise app.UsageError(f"--shards names corpus {name!r} twice")
        if not name.replace("_", "").replace("-", "").isalnum():
            raise app.UsageError(f"--shards name {name!r}: letters, digits, - and _ only")
        if not os.path.isdir(path):
            raise app.UsageError(f"--shards {name}: {path!r} is not a folder")
        out[name] = os.path.abspath(path)
    return out


def environment(out: Path) -> dict[str, str]:
    """The runs' environment: one compilation cache for the grid (runs of one config
    compile once), offline, huge pages for XLA:CPU's scratch memory (as scripts/demo.py)."""
    env = dict(os.environ)
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(out / "jax_cache"))
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
    return env


def ablate(
    shards: dict[str, str],
    out: Path,
    *,
    seeds: int = 3,
    jobs: int = 1,
    smoke: bool = False,
    extra: tuple[str, ...] = (),
    tables_wanted: tuple[str, ...] = (),
    resamples: int = 2000,
) -> str:
    """Runs what is missing of the grid and writes the tables; returns the markdown."""
    grid.check_grid()
    chosen, runs = grid.select(tables_wanted)
    out.mkdir(parents=True, exist_ok=True)
    settings = runner.Settings(
        out=out,
        variant=",smoke" if smoke else "",
        extra=tuple(f"--config.{kv}" for kv in extra),
        env=environment(out),
    )
    started = time.time()
    failures = runner.run_grid(runs, shards, range(seeds), settings, jobs=jobs)
    took = time.time() - started
    notes = [f"Grid wall time this invocation: {took:.0f} s with {jobs} jobs."]
    if failures:
        notes.append(f"{len(failures)} runs failed; their rows have fewer runs (n).")
    text = tables.write_tables(
        out, chosen, list(shards), list(range(seeds)), notes=notes, num_resamples=resamples
    )
    if failures:
        raise SystemExit("failed runs:\n" + "\n\n".join(failures))
    return text


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    text = ablate(
        parse_shards(_SHARDS.value),
        Path(_OUT.value),
        seeds=_SEEDS.value,
        jobs=_JOBS.value,
        smoke=_SMOKE.value,
        extra=tuple(_SET.value),
        tables_wanted=tuple(_TABLES.value),
        resamples=_RESAMPLES.value,
    )
    print(text)


if __name__ == "__main__":
    app.run(main)
