"""DINOv2-Base and BERT-base forward in bf16: hemo_jax against transformers' PyTorch
models with the same (random, real-shaped) weights, on one device.

Parity: both sides run in bf16 and are compared with PyTorch in float32 (TF32 off) on
the same inputs, by max |a - b| / max |ref| of the pooled output. JAX passes when its
error is at most twice PyTorch's own bf16 error, or 1e-2, whichever is larger: bf16
rounding differs between the two, the size of that error must not. The direct
JAX-to-PyTorch bf16 difference is recorded beside it. Throughput: jitted JAX and
PyTorch under ``inference_mode``, each synchronised, alternating, median of
``--repeats`` calls after warm-up; images/s and sequences/s.

    python benchmarks/encoders_gpu.py --out /tmp/out/encoders_gpu.json
    JAX_PLATFORMS=cpu python benchmarks/encoders_gpu.py --smoke --out /tmp/e.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # PyTorch shares the device
sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from encoders import jit_forward, random_hf_model  # noqa: E402

from hemo_jax.contract import atomic  # noqa: E402
from hemo_jax.models import attention, bert, dinov2  # noqa: E402


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def compare(name: str, unit: str, batch: int, jax_fn, torch_fn, ref, repeats, device) -> dict:
    """Parity against the float32 reference ``ref`` and alternating timings."""
    ours = np.asarray(jax_fn(), np.float32)
    theirs = torch_fn().float().cpu().numpy()
    errors = {
        "jax_bf16_vs_torch_f32": rel(ours, ref),
        "torch_bf16_vs_torch_f32": rel(theirs, ref),
        "jax_bf16_vs_torch_bf16": rel(ours, theirs),
    }
    tolerance = max(2 * errors["torch_bf16_vs_torch_f32"], 1e-2)
    jax_fn(), torch_fn()
    times: dict[str, list[float]] = {"jax": [], "torch": []}
    for i in range(repeats):
        order = (("jax", jax_fn), ("torch", torch_fn))
        for side, fn in order if i % 2 == 0 else order[::-1]:
            times[side].append(_timed(fn, device))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "model": name,
        "unit": unit,
        "batch": batch,
        **errors,
        "tolerance": tolerance,
        "parity_ok": errors["jax_bf16_vs_torch_f32"] <= tolerance,
        "median_s": med,
        "per_s": {k: batch / v for k, v in med.items()},
        "jax_over_torch_speed": med["torch"] / med["jax"],
        "times": times,
    }


def dinov2_row(args, device: torch.device, workdir: Path) -> dict[str, Any]:
    shape = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4) if args.smoke else {}
    cfg = transformers.Dinov2Config(**shape, image_size=224)  # defaults: Base, 768 x 12
    hf = random_hf_model(transformers.Dinov2Model, cfg, seed=0)
    hf.save_pretrained(workdir / "dinov2")
    ours = dinov2.load_dinov2(workdir / "dinov2", dtype=jnp.bfloat16)
    size = 56 if args.smoke else 224
    pixels = np.random.default_rng(0).normal(size=(args.image_batch, 3, size, size))
    pixels = pixels.astype(np.float32)
    x32 = torch.from_numpy(pixels).to(device)
    with torch.inference_mode():
        ref = hf.to(device).float()(x32).pooler_output.float().cpu().numpy()
    hf = hf.to(torch.bfloat16)
    x16 = x32.to(torch.bfloat16)
    xj = jax.device_put(jnp.asarray(pixels.transpose(0, 2, 3, 1), jnp.bfloat16))
    fwd = jit_forward(ours)

    def torch_fn():
        with torch.inference_mode():
            return hf(x16).pooler_output

    name = f"DINOv2-{'tiny' if args.smoke else 'Base'} {size}px bf16"
    row = compare(name, "images/s", args.image_batch, lambda: fwd(xj), torch_fn, ref,
                  args.repeats, device)  # fmt: skip
    tokens = (size // 14) ** 2 + 1
    q = jax.ShapeDtypeStruct((1, tokens, ours.cfg.num_heads, 64), jnp.bfloat16)
    return row | {"jax_attention": attention.select_implementation(q, q)}


def bert_row(args, device: torch.device, workdir: Path) -> dict[str, Any]:
    shape = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                 vocab_size=1000) if args.smoke else {}  # fmt: skip
    cfg = transformers.BertConfig(**shape)  # defaults: BERT-base, 768 x 12, vocab 30522
    hf = random_hf_model(transformers.BertModel, cfg, seed=1)
    hf.save_pretrained(workdir / "bert")
    ours = bert.load_bert(workdir / "bert", dtype=jnp.bfloat16)
    rng = np.random.default_rng(1)
    batch, seq = args.text_batch, 32 if args.smoke else args.seq_len
    ids = rng.integers(1, cfg.vocab_size, size=(batch, seq))
    lengths = rng.integers(seq // 2, seq + 1, size=batch)
    mask = (np.arange(seq)[None] < lengths[:, None]).astype(np.int64)
    types = np.zeros_like(ids)
    inputs = {
        "input_ids": torch.from_numpy(ids).to(device),
        "attention_mask": torch.from_numpy(mask).to(device),
        "token_type_ids": torch.from_numpy(types).to(device),
    }
    with torch.inference_mode():
        ref = hf.to(device).float()(**inputs).pooler_output.float().cpu().numpy()
    hf = hf.to(torch.bfloat16)
    jax_inputs = [jax.device_put(x.astype(np.int32)) for x in (ids, mask, types)]
    fwd = jit_forward(ours)

    def torch_fn():
        with torch.inference_mode():
            return hf(**inputs).pooler_output

    name = f"BERT-{'tiny' if args.smoke else 'base'} seq {seq} bf16"
    return compare(name, "sequences/s", batch, lambda: fwd(*jax_inputs), torch_fn, ref,
                   args.repeats, device)  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--smoke", action="store_true", help="tiny models (CPU)")
    p.add_argument("--image-batch", type=int, default=64)
    p.add_argument("--text-batch", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args()
    if args.smoke:
        args.image_batch, args.text_batch, args.repeats = 2, 2, 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result: dict[str, Any] = {
        "jax_device": jax.devices()[0].device_kind,
        "torch_device": str(device),
        "versions": {
            "jax": jax.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },  # fmt: skip
        "rows": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for make in (dinov2_row, bert_row):
            try:
                row = make(args, device, Path(tmp))
            except Exception as err:  # the other model still runs
                row = {"model": make.__name__, "error": f"{type(err).__name__}: {err}"[:500]}
            result["rows"].append(row)
            shown = {k: v for k, v in row.items() if k != "times"}
            print(shown, flush=True)
            atomic.write_json(args.out, result)


if __name__ == "__main__":
    main()
