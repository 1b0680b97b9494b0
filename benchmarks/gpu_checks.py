"""Correctness on the accelerator: what the CPU test suite cannot see.

- ``attention``: each implementation (the reference too in bf16; ring on a one-device
  ``seq`` mesh; cudnn on GPU only) against the float32 reference on the same
  (rounded) inputs: outputs and gradients of a randomly weighted sum, float32 and bf16,
  ``kv_lengths`` padding with one row without keys. Errors are max |a - b| / max |ref|;
  padded keys and key-less rows must get exactly zero output and gradient.
- ``parity``: DINOv2 (S/14 shapes) and BERT (MiniLM-L6 shapes) against transformers'
  PyTorch models on the same device and the same saved random weights; float32, TF32 off.
- ``train``: ten steps of the real trainer over the demo config's fused model on one
  fixed synthetic batch, bf16 and float32 compute: finite, and the loss goes down.

A check that raises is a FAIL with its error; the others still run. ``--out`` is
rewritten after every check, so a run cut short keeps what it finished.

    python benchmarks/gpu_checks.py --out /tmp/out/gpu_checks.json
    JAX_PLATFORMS=cpu .venv/bin/python benchmarks/gpu_checks.py --cpu-smoke  # tiny sizes
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import tempfile
import traceback
from pathlib import Path

# JAX and PyTorch share the device in this process: JAX takes memory as it goes.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from hemo_jax.contract import atomic  # noqa: E402
from hemo_jax.models.attention import IMPLEMENTATIONS, attention  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")  # no TF32 in the ground truth
TOL = {"float32": (1e-4, 1e-4), "bfloat16": (2e-2, 2e-2)}  # (output, gradient) relative
PARITY_TOL = 1e-4  # relative to the largest value


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def failed(name: str, err: Exception) -> dict:
    return dict(name=name, ok=False, error=f"{type(err).__name__}: {err}"[:500])


def _out_and_grads(impl, q, k, v, w, lengths):
    def loss(q, k, v):
        out = attention(q, k, v, kv_lengths=lengths, implementation=impl)
        return jnp.sum(out.astype(jnp.float32) * w), out

    (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
    return out, grads


def attention_checks(smoke: bool):
    run = jax.jit(_out_and_grads, static_argnums=0)
    auto = (jax.sharding.AxisType.Auto,)
    mesh = jax.make_mesh((1,), ("seq",), axis_types=auto, devices=jax.devices()[:1])
    gpu = jax.default_backend() == "gpu"
    impls = [i for i in IMPLEMENTATIONS if i != "reference" and (gpu or i != "cudnn")]
    for t in (7, 128) if smoke else (7, 128, 1000):
        rng = np.random.default_rng(t)
        q, k, v, w = (rng.standard_normal((3, t, 4, 64), np.float32) for _ in range(4))
        lengths = jnp.asarray([t, max(1, t // 3), 0], jnp.int32)  # row 2 has no key at all
        padded = np.arange(t)[None, :] >= np.asarray(lengths)[:, None]
        for dtype in ("float32", "bfloat16"):
            inputs = [jnp.asarray(x, dtype) for x in (q, k, v)]
            ref_out, ref_grads = run(
                "reference", *(x.astype(jnp.float32) for x in inputs), w, lengths
            )
            # cuDNN's kernel takes half precision only; the reference is exact in float32.
            f32 = [i for i in impls if i != "cudnn"]
            for impl in f32 if dtype == "float32" else ["reference", *impls]:
                name = f"T={t} {dtype} {impl}"
                try:
                    with jax.set_mesh(mesh) if impl == "ring" else contextlib.nullcontext():
                        out, grads = run(impl, *inputs, w, lengths)
                    out, grads = np.asarray(out, np.float32), [np.asarray(g) for g in grads]
                    leak = max(
                        float(np.max(np.abs(out[2]))),
                        float(np.max(np.abs(grads[0][2]))),
                        *(float(np.max(np.abs(g[padded]), initial=0)) for g in grads[1:]),
                    )
                    out_rel = rel(out, ref_out)
                    grad_rel = max(rel(g, r) for g, r in zip(grads, ref_grads, strict=True))
                    tol_out, tol_grad = TOL[dtype]
                    ok = out_rel <= tol_out and grad_rel <= tol_grad and leak == 0.0
                    yield dict(name=name, ok=ok, out_rel=out_rel, grad_rel=grad_rel, leak=leak)
                except Exception as err:
                    yield failed(name, err)


def _random_hf(model_cls, cfg, seed: int):
    """Every parameter random (norms around 1), so a mis-mapped tensor cannot hide."""
    import torch

    model = model_cls(cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
            if "norm" in name.lower() and name.endswith(".weight"):
                p.add_(1.0)
    return model


def _saved_and_loaded(hf, load):
    with tempfile.TemporaryDirectory() as directory:
        hf.save_pretrained(directory)
        return load(directory)


def parity_checks(smoke: bool):
    import torch
    import transformers

    from hemo_jax.models import bert, dinov2

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False  # convolutions: DINOv2's patch embedding
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rng = np.random.default_rng(0)

    def parity(name: str, pairs: dict) -> dict:
        errs = {k: rel(ours, theirs.cpu().numpy()) for k, (ours, theirs) in pairs.items()}
        return dict(
            name=f"{name} vs transformers on {device}", ok=max(errs.values()) <= PARITY_TOL, **errs
        )

    width, layers, heads, size = (64, 2, 4, 56) if smoke else (384, 12, 6, 224)
    name = f"dinov2 {width}x{layers} {size}px"
    try:  # image_size 518 as dinov2-small: the position table is resampled to 224 px
        shape = dict(hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads)
        cfg = transformers.Dinov2Config(**shape, patch_size=14, image_size=size if smoke else 518)
        hf = _random_hf(transformers.Dinov2Model, cfg, seed=1)
        ours = _saved_and_loaded(hf, dinov2.load_dinov2)
        pixels = rng.normal(size=(2, 3, size, size)).astype(np.float32)
        with torch.inference_mode():
            expected = hf.to(device)(torch.from_numpy(pixels).to(device))
        pooled, aux = jax.jit(lambda m, x: m(x))(ours, jnp.asarray(pixels.transpose(0, 2, 3, 1)))
        pairs = {"pooled_rel": (pooled, expected.pooler_output)}
        pairs["tokens_rel"] = (aux["tokens"], expected.last_hidden_state)
        yield parity(name, pairs)
    except Exception as err:
        yield failed(name, err)

    width, layers, heads, vocab, t = (64, 2, 4, 1000, 32) if smoke else (384, 6, 12, 30522, 128)
    name = f"bert {width}x{layers} T={t}"
    try:
        shape = dict(hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads)
        cfg = transformers.BertConfig(**shape, vocab_size=vocab, intermediate_size=4 * width)
        hf = _random_hf(transformers.BertModel, cfg, seed=2)
        ours = _saved_and_loaded(hf, bert.load_bert)
        ids = rng.integers(1, vocab, size=(4, t)).astype(np.int32)
        mask = np.arange(t)[None, :] < np.array([t, t * 3 // 4, t // 4, 3])[:, None]
        types = ((np.arange(t)[None, :] >= t // 2) & mask).astype(np.int32)
        to_torch = lambda x: torch.from_numpy(x.astype(np.int64)).to(device)
        with torch.inference_mode():
            hf = hf.to(device)
            expected = hf(
                input_ids=to_torch(ids),
                attention_mask=to_torch(mask),
                token_type_ids=to_torch(types),
            )
        pooled, aux = jax.jit(lambda m, *x: m(*x))(ours, ids, mask.astype(np.int32), types)
        pairs = {"pooled_rel": (pooled, expected.pooler_output)}
        # Padded positions are not part of the contract.
        pairs["tokens_rel"] = (
            np.asarray(aux["tokens"])[mask],
            expected.last_hidden_state.cpu()[mask],
        )
        yield parity(name, pairs)
    except Exception as err:
        yield failed(name, err)


def train_checks(smoke: bool):
    import train_step

    from configs import demo
    from hemo_jax.training import trainer

    for dtype in ("bfloat16", "float32"):
        name = f"demo fused train step {dtype}, 10 steps"
        try:
            config = demo.get_config("fused,smoke" if smoke else "fused")
            config.train.compute_dtype = dtype
            step = train_step.JaxStep(config, train_step.synthetic_batch(config))
            losses = []
            for i in range(10):
                rng = jax.random.fold_in(step.rng, i)
                step.state, out = step.step_fn(step.state, step.batch, rng)
                trainer.check_finite(i, out, step.step_fn.grad_names)  # raises NonFiniteError
                losses.append(float(out["loss_sum"]) / float(out["weight_sum"]))
            ok = all(map(math.isfinite, losses)) and losses[-1] < losses[0]
            yield dict(name=name, ok=ok, losses=losses)
        except Exception as err:
            yield failed(name, err)


# A run cut short loses the last part. Train and parity first: in the first GPU run
# the attention part alone used up its time limit.
PARTS = {"train": train_checks, "parity": parity_checks, "attention": attention_checks}


def _write(path: Path, payload: dict) -> None:
    passed = sum(c["ok"] for c in payload["checks"])
    payload["summary"] = {"passed": passed, "failed": len(payload["checks"]) - passed}
    atomic.write_json(path, payload, default=float)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes, for a CPU run")
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/gpu_checks.json")
    args = parser.parse_args()
    device = jax.devices()[0]
    payload = {"device": device.device_kind, "platform": device.platform, "checks": []}
    payload["versions"] = {"jax": jax.__version__, "python": sys.version.split()[0]}
    payload["tolerances"] = {"attention": TOL, "parity": PARITY_TOL}
    for part in args.parts:
        try:
            for check in PARTS[part](args.cpu_smoke):
                payload["checks"].append({"part": part, **check})
                shown = {k: v for k, v in check.items() if k not in ("name", "ok", "losses")}
                if "losses" in check:
                    shown["loss_first_last"] = (check["losses"][0], check["losses"][-1])
                fmt = {k: f"{v:.2e}" if isinstance(v, float) else v for k, v in shown.items()}
                print("PASS" if check["ok"] else "FAIL", part, check["name"], fmt, flush=True)
                _write(args.out, payload)
        except Exception as err:  # the rest of this part is lost; the other parts still run
            traceback.print_exc()
            payload["checks"].append({"part": part, **failed("error", err)})
            print("FAIL", part, payload["checks"][-1]["error"], flush=True)
            _write(args.out, payload)
    print(f"{payload['summary']['passed']} passed, {payload['summary']['failed']} failed")


if __name__ == "__main__":
    main()
