"""Encode throughput (images/s): hemo_jax's DINOv2-Base against transformers' PyTorch
Dinov2Model with the same weights, on the same batch, in one run.

Weights: DINOv2-Base at its real shape with random values, saved by transformers and
loaded by hemo_jax through the strict converter. The JAX side is ``hemo_jax.encode``'s
``Encoder`` (jitted, the batch split over the local devices, float16 features back on
the host); the PyTorch side is ``Dinov2Model`` under ``torch.inference_mode`` with the
pooled output copied back as float16. Both take the same normalised host batch, so
each timing includes the copy to the device. float32 means full float32 matmuls on
both (no TF32); bfloat16 casts weights and inputs on both. The two alternate, so load
from other processes hits both alike; medians are reported. A last row times the whole
``hemo_jax.encode`` pipeline (JPEG decode and DINOv2 preprocessing in threads,
overlapped with the forward) on real-picture 224² JPEG crops.

    .venv/bin/python benchmarks/encode.py                      # CPU, batch 16, 224²
    .venv/bin/python benchmarks/encode.py --device cuda        # GPU (JAX and PyTorch)
    .venv/bin/python benchmarks/encode.py --quick              # smoke sizes
"""

from __future__ import annotations

import argparse
import datetime
import io
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from hemo_jax.contract import atomic

RESULTS = Path(__file__).parent / "results" / "encode.json"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="batch 2, 1 repeat")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--dtypes", default="", help="comma-separated; default float32 on CPU, both on CUDA"
    )
    parser.add_argument("--pipeline-batches", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.batch, args.repeats, args.pipeline_batches = 2, 1, 2
    dtypes = args.dtypes or ("float32" if args.device == "cpu" else "float32,bfloat16")
    args.dtypes = dtypes.split(",")
    return args


def random_hf_model(model_cls, cfg, seed: int):
    """Every parameter random (norms around 1), skipping HF's slow init."""
    import torch
    from transformers.initialization import no_init_weights

    with no_init_weights():
        model = model_cls(cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.05, generator=gen)
            if "norm" in name.lower() and name.endswith(".weight"):
                p.add_(1.0)
    return model


def real_crops(n: int, size: int) -> list[bytes]:
    """size² JPEG windows of the real test pictures, as the person cropper writes them."""
    import importlib.util

    import numpy as np
    from PIL import Image

    assets = Path(importlib.util.find_spec("ultralytics").submodule_search_locations[0]) / "assets"
    pictures = [Image.open(assets / n).convert("RGB") for n in ("bus.jpg", "zidane.jpg")]
    rng = np.random.default_rng(0)
    out = []
    for k in range(n):
        picture = pictures[k % 2]
        side = int(rng.integers(size, min(picture.size)))
        x, y = (int(rng.integers(0, d - side + 1)) for d in picture.size)
        crop = picture.crop((x, y, x + side, y + side)).resize((size, size))
        buffer = io.BytesIO()
        crop.save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def main() -> None:
    args = parse_args()
    if args.device == "cpu":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")  # before jax is imported
    import jax
    import numpy as np
    import torch
    import transformers

    from hemo_jax import encode
    from hemo_jax.contract.schema import VideoRecord
    from hemo_jax.models import dinov2

    if args.device == "cuda" and jax.default_backend() != "gpu":
        sys.exit(f"--device cuda: JAX's backend is {jax.default_backend()!r}, not gpu")
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: PyTorch sees no CUDA device")
    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(cores)
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32, as in JAX
    torch.backends.cudnn.allow_tf32 = False
    device = torch.device(args.device)

    load_before = os.getloadavg()
    hf_cfg = transformers.Dinov2Config(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, image_size=518
    )
    hf = random_hf_model(transformers.Dinov2Model, hf_cfg, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours = dinov2.load_dinov2(tmp)
    hf = hf.to(device)

    # HF's DINOv2 processing scaled to the image size: shorter side 256 → centre crop 224.
    settings = encode.ImageSettings(
        crop_size=args.image_size, shortest_edge=args.image_size * 256 // 224
    )
    crops = real_crops(args.batch, args.image_size)
    pixels = np.stack([settings.decode(c) for c in crops])  # [B, H, W, 3], normalised
    pixels_nchw = torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy())

    rows = []
    for dtype in args.dtypes:
        encoder = encode.Encoder(ours, features="cls", compute_dtype=dtype, batch_size=args.batch)
        torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
        model = hf.to(torch_dtype)

        def jax_fn(encoder=encoder):
            return np.asarray(encoder(pixels))

        def torch_fn(model=model, torch_dtype=torch_dtype):
            with torch.inference_mode():
                x = pixels_nchw.to(device, torch_dtype)
                return model(x).pooler_output.to(torch.float16).cpu().numpy()

        start = time.perf_counter()
        jax_out = jax_fn()
        compile_s = time.perf_counter() - start
        torch_out = torch_fn()  # warm-up
        diff = float(np.abs(jax_out.astype(np.float32) - torch_out.astype(np.float32)).max())
        # Wall time, and the CPU time of the process (all threads): on a shared machine
        # the second shows the work done when other processes stretch the first.
        jax_times, torch_times, jax_cpu, torch_cpu = [], [], [], []
        for _ in range(args.repeats):
            for fn, wall, cpu in ((jax_fn, jax_times, jax_cpu), (torch_fn, torch_times, torch_cpu)):
                start, start_cpu = time.perf_counter(), time.process_time()
                fn()
                wall.append(time.perf_counter() - start)
                cpu.append(time.process_time() - start_cpu)
        jax_s, torch_s = statistics.median(jax_times), statistics.median(torch_times)
        rows.append(
            {
                "what": "forward",
                "dtype": dtype,
                "batch": encoder.batch_size,
                "jax_images_per_s": args.batch / jax_s,
                "torch_images_per_s": args.batch / torch_s,
                "jax_over_torch": torch_s / jax_s,
                "jax_times_s": jax_times,
                "torch_times_s": torch_times,
                "jax_cpu_s_per_image": statistics.median(jax_cpu) / args.batch,
                "torch_cpu_s_per_image": statistics.median(torch_cpu) / args.batch,
                "jax_compile_s": compile_s,
                "max_abs_diff_pooled": diff,
            }
        )

        # The whole pipeline on the warm encoder: JPEG → features, overlapped.
        per_record = args.batch
        records = [
            VideoRecord(
                video_id=f"v{i}",
                subject_id="s",
                source="synthetic",
                split="train",
                fps=25.0,
                frame_size=(720, 1280),
                keypoints=np.zeros((1, 137, 3), np.float32),
                keypoint_frames=np.zeros((1,), np.int32),
                crops=crops,
                crop_frames=np.arange(per_record, dtype=np.int32),
                boxes=np.zeros((per_record, 4), np.float32),
            )
            for i in range(args.pipeline_batches)
        ]
        start = time.perf_counter()
        n = 0
        for _, features in encode.encode_records(
            records, encoder, settings.decode, threads=cores, source="benchmark"
        ):
            n += len(features)
        pipeline_s = time.perf_counter() - start
        rows.append(
            {
                "what": "pipeline (JPEG decode + preprocess + forward)",
                "dtype": dtype,
                "batch": encoder.batch_size,
                "images": n,
                "jax_images_per_s": n / pipeline_s,
                "jax_seconds": pipeline_s,
            }
        )

    result = {
        "benchmark": "encode",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "model": f"DINOv2-Base (random weights), {args.image_size}² images, CLS features",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "cores_used": cores,
            "device": args.device,
            "jax_devices": [str(d) for d in jax.devices()],
            "torch_device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
            "torch_threads": torch.get_num_threads(),
            "load_average_before": list(load_before),
            "load_average_after": list(os.getloadavg()),
        },
        "versions": {
            "python": platform.python_version(),
            "jax": jax.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "repeats": args.repeats,
        "rows": rows,
    }
    atomic.write_json(args.out, result)

    print(
        f"{result['model']}; device {args.device}, {cores} cores, "
        f"load average {load_before[0]:.1f} before the run"
    )
    print(
        "| what | dtype | batch | JAX (hemo_jax) | PyTorch (transformers) | JAX / PyTorch "
        "| CPU s/image JAX, PyTorch |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        torch_col = f"{r['torch_images_per_s']:.2f} img/s" if "torch_images_per_s" in r else "-"
        ratio = f"{r['jax_over_torch']:.2f}x" if "jax_over_torch" in r else "-"
        cpu = (
            f"{r['jax_cpu_s_per_image']:.2f}, {r['torch_cpu_s_per_image']:.2f}"
            if "jax_cpu_s_per_image" in r
            else "-"
        )
        print(
            f"| {r['what']} | {r['dtype']} | {r['batch']} | {r['jax_images_per_s']:.2f} img/s | "
            f"{torch_col} | {ratio} | {cpu} |"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
