"""Train-step throughput of the fused multimodal model: hemo_jax against PyTorch.

The JAX step is the real trainer's (``hemo_jax.training.trainer``: ``create_train_state``
and ``make_train_step`` with the optimizer, loss and ``StepOptions`` that
``hemo_jax.experiment`` makes of the config, on a one-device mesh from
``sharding.make_mesh``), over the model it builds from ``configs/demo.py:fused``
(stage 2: keypoint, image and text branches, concat fusion, dropout on, aux loss
weight 0.3). The PyTorch step runs the same architecture (``benchmarks/torch_multimodal.py``, with
``F.scaled_dot_product_attention``), the same loss, AdamW with the same weight-decay
mask and schedule, and global-norm clipping, on the same synthetic batch.

Method. Both run in this one process, float32, on the CPU. Each framework's step
runs ``--warmup`` untimed times first (JAX compiles there), then ``--rounds`` rounds
alternate JAX and PyTorch, ``--steps`` timed steps each, so load from other users of
a shared machine falls on both alike; every step ends with ``block_until_ready`` (JAX)
or a synchronous ``.item()`` (PyTorch, eager on CPU) and the median step time is
reported. PyTorch runs with ``torch.set_num_threads(os.cpu_count())``; XLA uses all
cores by default. The load average before and after is recorded, and per side the
minor page faults and system CPU time per step: XLA:CPU takes each step's scratch
memory (one block of ~200 MB at the demo's shapes) fresh from the kernel, page by page,
unless glibc's malloc is told to back it with huge pages
(``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``, recorded in the results). The JAX side
runs with the trainer's XLA:CPU setting (``hemo_jax.training.xla_cpu``, which
``hemo_jax.train`` applies too; the resulting XLA_FLAGS are recorded).

``--gpu``: the JAX step alone at keypoint sequence lengths 4k..64k frames, bf16
compute, on the GPU (``--quick``: the same path at tiny sizes on the CPU). Per length:
steps/s, samples/s, the device's peak memory in use (cumulative over the lengths run so
far in this process), and MFU: the analytic model FLOPs of ``flops.py`` (matrix
products, forward x 3) over the step time, against the card's data-sheet dense bf16
peak (chosen by jax's ``device_kind``; ``--peak-tflops`` overrides it) and against the
bf16 matmul rate measured at the start of the run. Then attention alone at the step's
shapes (``step_profile.attention_seconds``: its share of the step, and the target
floor, attention time + dense FLOPs at the measured rate, with the step over it), a
``jax.profiler`` trace of ``--profile-steps`` steps parsed into device time by kind of
kernel, and from the lowered step XLA's own FLOP count (it omits custom calls such as
cuDNN attention) and the number of cuDNN attention calls (0: attention did not take
cuDNN). ``--gpu-remat`` rematerialises the Transformer blocks and keypoint streams.
The results file is rewritten as each part of each length finishes, and no new length
starts after ``--budget-s``, so a run cut short keeps what it measured.

    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 .venv/bin/python benchmarks/train_step.py
                                                         # CPU: demo + long settings
    .venv/bin/python benchmarks/train_step.py --quick    # smoke sizes
    .venv/bin/python benchmarks/train_step.py --gpu      # GPU: 4k..64k frames
    .venv/bin/python benchmarks/train_step.py --gpu --quick   # the GPU path on CPU
    .venv/bin/python benchmarks/train_step.py --gpu --gpu-lengths 4096 32768
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

import flops  # noqa: E402
import jax  # noqa: E402
import jaxlib  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import step_profile  # noqa: E402
from flax import nnx  # noqa: E402
from run_info import interpreter  # noqa: E402

from configs import demo  # noqa: E402
from hemo_jax.contract import atomic  # noqa: E402
from hemo_jax.experiment import model as experiment_model  # noqa: E402
from hemo_jax.experiment.experiment import Experiment  # noqa: E402
from hemo_jax.training import sharding, trainer, xla_cpu  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
NUM_KEYPOINTS = 137
# (name, batch, max_frames, max_images, max_text_tokens)
CPU_SETTINGS = (("demo", 16, 64, 24, 192), ("long", 16, 512, 128, 192))
QUICK_SETTINGS = (("quick", 4, 32, 8, 32),)
GPU_LENGTHS = (4096, 16384, 32768, 65536)
# Dense bf16 peak of a card (data sheet, without sparsity), FLOP/s, by a substring of
# jax's device_kind; the first match wins, so the specific names come first.
PEAK_BF16 = {
    "H200": 989.4e12,
    "H100 PCIe": 756.5e12,
    "H100 NVL": 835.5e12,
    "H100": 989.4e12,  # SXM ("NVIDIA H100 80GB HBM3")
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
}


def make_config(batch: int, frames: int, images: int, tokens: int) -> ml_collections.ConfigDict:
    c = demo.get_config("fused")
    c.data.batch_size = batch
    c.data.max_frames = frames
    c.data.max_images = images
    c.data.max_text_tokens = tokens
    return c


def synthetic_batch(config: ml_collections.ConfigDict, seed: int = 0) -> dict[str, np.ndarray]:
    """A batch with every key the pipeline yields; real-looking masks (a valid prefix
    of random length) and keypoints with some missing joints (confidence 0)."""
    rng = np.random.default_rng(seed)
    d = config.data
    b, f, fi, lt = d.batch_size, d.max_frames, d.max_images, d.max_text_tokens

    def prefix_mask(length: int) -> np.ndarray:
        lengths = rng.integers(max(length // 2, 1), length + 1, size=b)
        return np.arange(length)[None, :] < lengths[:, None]

    kp = rng.normal(size=(b, f, NUM_KEYPOINTS, 3)).astype(np.float32)
    kp[..., 2] = rng.uniform(size=(b, f, NUM_KEYPOINTS)) * (rng.uniform(size=(b, f, 137)) > 0.2)
    kmask, imask, tmask = prefix_mask(f), prefix_mask(fi), prefix_mask(lt)
    kp *= kmask[:, :, None, None]
    vocab = experiment_model.HASH_VOCAB
    label = rng.integers(0, 2, size=b).astype(np.int32)
    return {
        "keypoints": kp,
        "keypoint_offsets": rng.normal(size=(b, f, NUM_KEYPOINTS, 2)).astype(np.float32) * 0.05,
        "keypoint_mask": kmask,
        "image_features": rng.normal(size=(b, fi, config.model.image_feature_dim)).astype(
            np.float32
        )
        * imask[..., None],
        "image_mask": imask,
        "text_ids": (rng.integers(1, vocab, size=(b, lt)) * tmask).astype(np.int32),
        "text_mask": tmask,
        "label": label,
        "pseudo_label": np.full(b, -1, np.int32),
        "pseudo_confidence": np.zeros(b, np.float32),
        "target": label,
        "sample_weight": rng.uniform(0.5, 1.5, size=b).astype(np.float32),
        "valid": np.ones(b, bool),
        "video_index": np.arange(b, dtype=np.int32),
        "window_index": np.zeros(b, np.int32),
    }


class JaxStep:
    """The real trainer's jitted step over the model of ``config``, on one device."""

    def __init__(self, config: ml_collections.ConfigDict, batch: dict[str, np.ndarray]):
        self.mesh = sharding.make_mesh(data=1, devices=jax.devices()[:1])
        exp = Experiment.from_config(config)
        self.train_state = trainer.create_train_state(
            exp.model_fn, exp.optimizer, self.mesh, seed=config.seed, trainable=exp.trainable
        )
        self.step_fn = trainer.make_train_step(
            self.train_state, self.mesh, batch, loss_fn=exp.loss_fn, options=exp.step_options
        )
        # On device once, as the data pipeline delivers it: the step times no host copy.
        self.batch = {
            k: jax.device_put(v, sharding.batch_sharding(self.mesh, np.ndim(v)))
            for k, v in batch.items()
        }
        self.state = self.train_state.state
        self.rng = jax.random.key(config.seed)
        self.count = 0
        self.params = sum(
            x.size for x in jax.tree.leaves(nnx.state(self.train_state.model(), nnx.Param))
        )

    def __call__(self) -> float:
        self.count += 1
        self.state, out = self.step_fn(
            self.state, self.batch, jax.random.fold_in(self.rng, self.count)
        )
        jax.block_until_ready((self.state, out))
        return float(out["loss_sum"]) / float(out["weight_sum"])


class TorchStep:
    def __init__(self, config: ml_collections.ConfigDict, batch: dict[str, np.ndarray]):
        import torch
        import torch_multimodal as tm

        torch.manual_seed(config.seed)
        m, c = config.model, config.optim
        cfg = tm.TorchModelConfig(
            width=m.width,
            depth=m.depth,
            heads=m.heads,
            mlp_ratio=m.mlp_ratio,
            dropout=m.dropout,
            keypoint_channels=m.keypoint_channels,
            keypoint_depth=m.keypoint_depth,
            keypoint_stream_width=m.keypoint_stream_width,
            image_feature_dim=m.image_feature_dim,
            vocab_size=experiment_model.HASH_VOCAB,
        )
        if m.keypoint_backbone != "mlp" or m.fusion != "concat" or m.text_encoder:
            raise ValueError(
                "the PyTorch model mirrors the mlp backbone, concat fusion and "
                "the hashing-token text encoder only"
            )
        self.model = tm.MultimodalClassifier(cfg).train()
        opt, sched = tm.make_optimizer(
            self.model,
            lr=c.lr,
            warmup_steps=c.warmup_steps,
            total_steps=config.train.steps,
            weight_decay=c.weight_decay,
            b1=c.b1,
            b2=c.b2,
        )
        self.step_fn = tm.make_train_step(
            self.model,
            opt,
            sched,
            clip_norm=c.clip_norm,
            aux_loss_weight=config.train.aux_loss_weight,
        )
        self.batch = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}
        self.params = tm.param_count(self.model)

    def __call__(self) -> float:
        loss, _ = self.step_fn(self.batch)
        return float(loss.item())


def time_pair(steps: dict[str, Any], warmup: int, rounds: int, per_round: int):
    """Warm-up (compile) each, then alternate rounds; per-step times in seconds, and
    per side the process's minor page faults and system CPU seconds per timed step."""
    compile_s, times, losses = {}, {k: [] for k in steps}, {}
    kernel = {k: {"minor_faults": 0.0, "system_cpu_s": 0.0} for k in steps}
    for name, fn in steps.items():
        t0 = time.perf_counter()
        for _ in range(warmup):
            losses[name] = fn()
        compile_s[name] = time.perf_counter() - t0
        print(f"  {name}: warm-up {compile_s[name]:.1f} s", file=sys.stderr, flush=True)
    for _ in range(rounds):
        for name, fn in steps.items():
            before = resource.getrusage(resource.RUSAGE_SELF)
            for _ in range(per_round):
                t0 = time.perf_counter()
                losses[name] = fn()
                times[name].append(time.perf_counter() - t0)
            after = resource.getrusage(resource.RUSAGE_SELF)
            kernel[name]["minor_faults"] += after.ru_minflt - before.ru_minflt
            kernel[name]["system_cpu_s"] += after.ru_stime - before.ru_stime
    per_step = {k: {m: v / (rounds * per_round) for m, v in d.items()} for k, d in kernel.items()}
    return compile_s, times, losses, per_step


def run_cpu(args) -> list[dict[str, Any]]:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    settings = QUICK_SETTINGS if args.quick else CPU_SETTINGS
    for name, b, f, fi, lt in [s for s in settings if args.quick or s[0] in args.settings]:
        config = make_config(b, f, fi, lt)
        batch = synthetic_batch(config)
        steps = {"jax": JaxStep(config, batch), "torch": TorchStep(config, batch)}
        compile_s, times, losses, kernel = time_pair(steps, args.warmup, args.rounds, args.steps)
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {
            "setting": name,
            "batch": b,
            "frames": f,
            "images": fi,
            "text_tokens": lt,
            "params": {k: s.params for k, s in steps.items()},
            "warmup_s": compile_s,
            "step_s": {k: sorted(v) for k, v in times.items()},
            "median_step_s": med,
            "samples_per_s": {k: b / v for k, v in med.items()},
            "speedup_jax_over_torch": med["torch"] / med["jax"],
            "last_loss": losses,
            "per_step_kernel": kernel,
        }
        rows.append(row)
        print(
            f"[{name}] jax {med['jax'] * 1e3:.1f} ms, torch {med['torch'] * 1e3:.1f} ms, "
            f"x{row['speedup_jax_over_torch']:.2f}; page faults per step jax "
            f"{kernel['jax']['minor_faults']:.0f}, torch {kernel['torch']['minor_faults']:.0f}",
            flush=True,
        )
    return rows


def run_gpu(args, on_row: Any = None) -> list[dict[str, Any]]:
    """Per length: warm-up, timed steps, attention alone at the step's shapes, a kernel
    profile, and the step against the floor of its kernels (``step_profile``)."""
    gpu = [dv for dv in jax.devices() if dv.platform == "gpu"]
    if not gpu and not args.quick:
        raise SystemExit("--gpu needs a GPU (jax.devices() has none); --quick runs the path on CPU")
    device = (gpu or jax.devices())[0]
    kind = device.device_kind
    peak = args.peak_tflops * 1e12 if args.peak_tflops else None
    source = "--peak-tflops" if peak else None
    if peak is None:
        match = next((k for k in PEAK_BF16 if k in kind), None)
        peak = PEAK_BF16.get(match) if match else None
        source = f"data sheet dense bf16, device_kind matched {match!r}" if match else None
    rate = step_profile.matmul_rate(args.matmul_size)
    lengths = args.gpu_lengths or ((64, 128) if args.quick else GPU_LENGTHS)
    deadline = time.monotonic() + args.budget_s
    result = {
        "device_kind": kind,
        "peak_flops": peak,
        "peak_flops_source": source,
        "measured_bf16_matmul": rate,
        "remat": args.gpu_remat,
        "rows": [],
    }
    rows = result["rows"]

    def publish(row: dict[str, Any]) -> None:
        print(json.dumps({k: v for k, v in row.items() if k != "profile"}), flush=True)
        if on_row is not None:
            on_row(result)

    for length in lengths:
        row: dict[str, Any] = {"frames": length, "batch": args.gpu_batch}
        rows.append(row)
        if time.monotonic() > deadline:
            row["error"] = f"skipped: the --budget-s of {args.budget_s} s is spent"
            publish(row)
            continue
        config = flops.gpu_config(
            length,
            batch=args.gpu_batch,
            width=args.gpu_width,
            heads=args.gpu_heads,
            depth=args.gpu_depth,
        )
        if args.quick:
            config.data.max_images, config.data.max_text_tokens = 8, 16
        config.model.remat = args.gpu_remat
        shapes = flops.Shapes.of(config)
        cost = flops.train_flops(
            shapes, attention_backward=args.attention_backward, remat=args.gpu_remat
        )
        row["analytic"] = {
            "flops": cost,
            "memory": flops.memory_bytes(shapes),
            "params": flops.param_count(shapes)["total"],
        }
        try:
            step = JaxStep(config, synthetic_batch(config))
            t0 = time.perf_counter()
            for _ in range(args.warmup):
                step()
            row["warmup_s"] = time.perf_counter() - t0
            times = []
            for _ in range(args.rounds * args.steps):
                t0 = time.perf_counter()
                step()
                times.append(time.perf_counter() - t0)
            med = statistics.median(times)
            model = cost["model"]["total"]
            row.update(
                params=step.params,
                step_s=times,
                median_step_s=med,
                steps_per_s=1 / med,
                samples_per_s=args.gpu_batch / med,
                model_flops_per_step=model,
                achieved_tflops=model / med / 1e12,
                mfu=(model / med / peak) if peak else None,
                mfu_vs_measured_matmul=model / med / rate["flops_per_s"],
                **lowered_facts(step),
            )
            publish(row)
            attn = step_profile.attention_seconds(config, repeats=args.attention_repeats)
            row["attention_alone"] = attn
            row["attention_share"] = attn["per_step_s"] / med
            row["bound"] = step_profile.bound(
                med, attn["per_step_s"], cost["executed"]["dense"], rate["flops_per_s"]
            )
            publish(row)
            if args.profile_steps:
                with tempfile.TemporaryDirectory() as trace_dir:
                    profile = step_profile.kernel_profile(step, args.profile_steps, Path(trace_dir))
                profile.pop("trace")
                row["profile"] = profile
                kernels = profile["per_step_s"]
                row["profiled_attention_share"] = kernels["attention"] / med
        except Exception as err:  # an out-of-memory length is a result, not a crash
            row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
        stats = device.memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            row["device_peak_bytes_so_far"] = stats["peak_bytes_in_use"]
        publish(row)
    return [result]


def lowered_facts(step: JaxStep) -> dict[str, Any]:
    """From the lowered (not compiled) step: XLA's FLOP count, which misses custom calls
    such as cuDNN attention, and how many cuDNN attention kernels (forward and backward)
    it calls, which says whether the Transformers' attention took cuDNN."""
    lowered = step.step_fn.lower(step.state, step.batch, jax.random.key(0))
    cost = lowered.cost_analysis()
    if isinstance(cost, list):
        cost = cost[0] if cost else {}
    return {
        "xla_cost_analysis_flops": float((cost or {}).get("flops", 0.0)) or None,
        "cudnn_attention_calls": lowered.as_text().count("__cudnn$fmha"),
    }


def _torch_name(path: tuple[str, ...]) -> str:
    """The PyTorch parameter name of a hemo_jax parameter path."""
    names = list(path)
    if names[:4] == ["branches", "text", "encoder", "embed"]:
        names = ["branches", "text", "embed", *names[4:]]
    elif names[:4] == ["branches", "text", "encoder", "encoder"]:
        names = ["branches", "text", "encoder", *names[4:]]
    if "streams" in names and "blocks" in names:
        i = names.index("blocks") + 2  # blocks/N/<mix|up|down>
        if names[i] in ("up", "down"):
            names.insert(i, "mlp")
        elif names[i] == "mix":
            names.insert(i + 1, "mlp")
    leaf = {"kernel": "weight", "scale": "weight", "embedding": "weight"}.get(names[-1])
    return ".".join(names[:-1] + [leaf or names[-1]])


def _torch_value(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
    if path[-1] == "kernel":
        split_out = path[-2] in ("query", "key", "value")  # [W, H, D]
        rows = value.shape[0] if split_out else -1
        return value.reshape(rows, -1 if split_out else value.shape[-1]).T
    if path[-1] == "bias":
        return value.reshape(-1)
    return value


def check_equivalence(seed: int = 0) -> dict[str, float]:
    """Same weights in both models (random, heads included), dropout off: the largest
    differences of the logits and of the loss, and the gradient norms."""
    import torch
    import torch_multimodal as tm

    config = make_config(4, 32, 8, 32)
    batch = synthetic_batch(config, seed)
    jax_model = Experiment.from_config(config).model_fn(jax.random.key(config.seed))
    params = nnx.state(jax_model, nnx.Param)
    rng = np.random.default_rng(seed)
    pure = jax.tree.map(
        lambda x: np.asarray(x) + 0.05 * rng.normal(size=x.shape).astype(np.float32),
        params.to_pure_dict(),
    )
    params.replace_by_pure_dict(pure)
    nnx.update(jax_model, params)
    torch_step = TorchStep(config, batch)
    model = torch_step.model.eval()
    own = dict(model.named_parameters())
    with torch.no_grad():
        for path, value in jax.tree_util.tree_flatten_with_path(pure)[0]:
            names = tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
            target = own.pop(_torch_name(names))
            target.copy_(torch.from_numpy(np.ascontiguousarray(_torch_value(names, value))))
    if own:
        raise AssertionError(f"PyTorch parameters without a JAX counterpart: {sorted(own)}")
    aux_w = config.train.aux_loss_weight
    jbatch = {k: jax.numpy.asarray(v) for k, v in batch.items()}

    def jax_loss(model):
        logits, aux = model(jbatch, deterministic=True)
        w = jbatch["sample_weight"] * jbatch["valid"]

        def ce(lg):
            logp = jax.nn.log_softmax(lg)
            picked = jax.numpy.take_along_axis(logp, jbatch["target"][:, None], 1)[:, 0]
            return jax.numpy.sum(-w * picked)

        total = ce(logits) + aux_w * sum(ce(v) for v in aux["branch_logits"].values())
        return total / jax.numpy.sum(w), (logits, aux["branch_logits"])

    (jloss, (jlogits, jbranch)), grads = nnx.value_and_grad(jax_loss, has_aux=True)(jax_model)
    tloss, tlogits = tm.loss_sums(model, torch_step.batch, aux_w)
    tloss.backward()
    _, tbranch = model(torch_step.batch)
    diffs = {"fused": float(np.max(np.abs(np.asarray(jlogits) - tlogits.detach().numpy())))}
    for name, lg in jbranch.items():
        diffs[name] = float(np.max(np.abs(np.asarray(lg) - tbranch[name].detach().numpy())))
    tgrad = torch.sqrt(sum((p.grad**2).sum() for p in model.parameters() if p.grad is not None))
    return {
        "max_abs_logit_diff": diffs,
        "loss": {"jax": float(jloss), "torch": float(tloss.detach())},
        "grad_norm": {"jax": float(optax_norm(grads)), "torch": float(tgrad)},
    }


def optax_norm(tree: Any) -> float:
    return float(np.sqrt(sum(np.sum(np.square(np.asarray(x))) for x in jax.tree.leaves(tree))))


def versions() -> dict[str, str]:
    import flax
    import torch

    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "torch": torch.__version__,
    }


def print_cpu_table(rows: list[dict[str, Any]]) -> None:
    print(
        "\n| setting | batch | frames / images / tokens | params jax / torch | "
        "jax samples/s | torch samples/s | jax / torch |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        s = r["samples_per_s"]
        print(
            f"| {r['setting']} | {r['batch']} | {r['frames']} / {r['images']} / "
            f"{r['text_tokens']} | {r['params']['jax']:,} / {r['params']['torch']:,} | "
            f"{s['jax']:.1f} | {s['torch']:.1f} | {r['speedup_jax_over_torch']:.2f}x |"
        )


def print_gpu_table(result: dict[str, Any]) -> None:
    import gpu_summary

    print("\n" + "\n".join(gpu_summary.train_steps(result)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke sizes")
    p.add_argument("--gpu", action="store_true", help="JAX on the GPU: steps/s and MFU, 4k..64k")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps (compilation) each")
    p.add_argument("--rounds", type=int, default=3, help="alternating timing rounds")
    p.add_argument("--steps", type=int, default=3, help="timed steps per round")
    p.add_argument(
        "--settings", nargs="+", default=[s[0] for s in CPU_SETTINGS], help="CPU settings to run"
    )
    p.add_argument("--gpu-batch", type=int, default=4)
    p.add_argument("--gpu-lengths", type=int, nargs="+", help="keypoint frames (default 4k..64k)")
    p.add_argument("--gpu-width", type=int, default=256)
    p.add_argument("--gpu-heads", type=int, default=4)
    p.add_argument("--gpu-depth", type=int, default=4)
    p.add_argument("--peak-tflops", type=float, default=None, help="the card's bf16 peak")
    p.add_argument("--gpu-remat", action="store_true", help="rematerialise blocks and streams")
    p.add_argument("--matmul-size", type=int, default=8192, help="n of the n^3 rate check")
    p.add_argument("--attention-repeats", type=int, default=5)
    p.add_argument("--profile-steps", type=int, default=3, help="traced steps; 0: no trace")
    p.add_argument(
        "--attention-backward",
        choices=("recompute", "autodiff"),
        default="recompute",
        help="how the executed FLOPs count attention's backward (cuDNN: recompute)",
    )
    p.add_argument("--budget-s", type=float, default=1e9, help="no new length after this")
    p.add_argument(
        "--check", action="store_true", help="same weights in both models: compare outputs"
    )
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    # The step as hemo_jax.train runs it: with the trainer's XLA:CPU setting.
    xla_cpu.prefer_xla_reductions()

    load_before = os.getloadavg()
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    if args.check:
        print(json.dumps(check_equivalence(), indent=2))
        return

    def save(payload: dict[str, Any], out: Path) -> None:
        payload.update(
            command=" ".join([interpreter(), *sys.argv]),
            date=started,
            machine={
                "platform": platform.platform(),
                "processor": platform.processor() or platform.machine(),
                "cpu_count": os.cpu_count(),
                "jax_devices": [str(dv) for dv in jax.devices()],
            },
            versions=versions(),
            loadavg_before=load_before,
            loadavg_after=os.getloadavg(),
            settings={"warmup": args.warmup, "rounds": args.rounds, "steps_per_round": args.steps},
            glibc_tunables=os.environ.get("GLIBC_TUNABLES"),
            xla_flags=os.environ.get("XLA_FLAGS"),
        )
        atomic.write_json(out, payload)

    if args.gpu:
        out = args.out or RESULTS / "train_step_gpu.json"
        result = run_gpu(args, on_row=lambda partial: save({"mode": "gpu", **partial}, out))[0]
        print_gpu_table(result)
        save({"mode": "gpu", **result}, out)
    else:
        rows = run_cpu(args)
        print_cpu_table(rows)
        out = args.out or RESULTS / ("train_step_quick.json" if args.quick else "train_step.json")
        save({"mode": "cpu", "rows": rows}, out)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
