"""Frames per second of the pip pose estimators (``preprocess.keypoints.wholebody``) on CPU.

Offline, so with random weights of the real shapes:

- ``dwpose``: RTMPose-l whole-body (DWPose-l's network: CSPNeXt-l backbone, RTMCC head
  with its GAU, 133 points) at 384×288, written here after mmpose's definitions,
  exported to ONNX with a dynamic batch axis and run by ``RtmposeEstimator`` (rtmlib's
  preprocessing, onnxruntime, SimCC decoding). RTMW-l (the ``rtmw`` default) shares the
  backbone and head but adds a neck, so it is somewhat slower than this.
- ``yolo11n-pose`` / ``yolo11x-pose``: ultralytics' own configs, random weights, run by
  ``YoloPoseEstimator`` on the region around the box. Random weights find no person, so
  this is the network and pre/post-processing time, not a real video's NMS.

Frames are 1280×720 (iMiGUE's size) with a 400×600 subject box; each figure is the
best of ``--repeats`` timed runs after a warm-up. Results go to
benchmarks/results/pose_estimators.json (with versions and load averages).

    PYTHONPATH=$PWD python benchmarks/pose_estimators.py --frames 16
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("YOLO_OFFLINE", "1")  # never reach the network for weights or checks

from run_info import run_info  # noqa: E402

from hemo_jax.contract import atomic  # noqa: E402
from preprocess.keypoints.wholebody import RtmposeEstimator, YoloPoseEstimator  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "pose_estimators.json"


def conv(cin: int, cout: int, k: int = 1, s: int = 1, groups: int = 1) -> nn.Sequential:
    """mmcv's ConvModule as CSPNeXt uses it: conv, batch norm, SiLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.SiLU(),
    )


class CSPNeXtBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1 = conv(c, c, 3)
        self.conv2 = nn.Sequential(conv(c, c, 5, groups=c), conv(c, c, 1))  # depthwise sep.

    def forward(self, x):
        return x + self.conv2(self.conv1(x))


class CSPLayer(nn.Module):
    def __init__(self, cin: int, cout: int, blocks: int):
        super().__init__()
        mid = cout // 2
        self.main, self.short = conv(cin, mid), conv(cin, mid)
        self.blocks = nn.Sequential(*[CSPNeXtBlock(mid) for _ in range(blocks)])
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(2 * mid, 2 * mid, 1), nn.Hardsigmoid()
        )
        self.final = conv(2 * mid, cout)

    def forward(self, x):
        y = torch.cat([self.blocks(self.main(x)), self.short(x)], 1)
        return self.final(y * self.attention(y))


class SPPF(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1, self.conv2 = conv(c, c // 2), conv(c // 2 * 4, c)
        self.pool = nn.MaxPool2d(5, 1, 2)

    def forward(self, x):
        x = self.conv1(x)
        a = self.pool(x)
        b = self.pool(a)
        return self.conv2(torch.cat([x, a, b, self.pool(b)], 1))


def cspnext_l() -> nn.Sequential:
    """CSPNeXt P5, deepen 1.0, widen 1.0 (the -l size), last stage's output only."""
    layers = [conv(3, 32, 3, 2), conv(32, 32, 3), conv(32, 64, 3)]
    for cin, cout, n, spp in ((64, 128, 3, False), (128, 256, 6, False), (256, 512, 6, False),
                              (512, 1024, 3, True)):  # fmt: skip
        layers += [conv(cin, cout, 3, 2), *([SPPF(cout)] if spp else []), CSPLayer(cout, cout, n)]
    return nn.Sequential(*layers)


class ScaleNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.scale, self.g = dim**-0.5, nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-5) * self.scale * self.g


class GAU(nn.Module):
    """RTMCC's gated attention unit over the keypoint tokens (expansion 2, s = 128)."""

    def __init__(self, dim: int = 256, s: int = 128):
        super().__init__()
        self.e, self.s = 2 * dim, s
        self.norm = ScaleNorm(dim)
        self.uv = nn.Linear(dim, 2 * self.e + s, bias=False)
        self.gamma, self.beta = nn.Parameter(torch.rand(2, s)), nn.Parameter(torch.rand(2, s))
        self.o = nn.Linear(self.e, dim, bias=False)
        self.res_scale = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        u, v, base = torch.split(
            nn.functional.silu(self.uv(self.norm(x))), [self.e, self.e, self.s], -1
        )
        q, k = (base[..., None, :] * self.gamma + self.beta).unbind(-2)
        kernel = torch.square(nn.functional.relu(q @ k.transpose(1, 2) / math.sqrt(self.s)))
        return x * self.res_scale + self.o(u * (kernel @ v))


class RtmposeWholebody(nn.Module):
    """RTMPose-l with the RTMCC head: [N, 3, H, W] → SimCC x [N, K, 2W], y [N, K, 2H]."""

    def __init__(self, input_size: tuple[int, int] = (288, 384), keypoints: int = 133):
        super().__init__()
        w, h = input_size
        self.backbone = cspnext_l()
        self.final = nn.Conv2d(1024, keypoints, 7, padding=3)
        self.mlp = nn.Sequential(
            ScaleNorm((w // 32) * (h // 32)), nn.Linear((w // 32) * (h // 32), 256)
        )
        self.gau = GAU()
        self.cls_x, self.cls_y = nn.Linear(256, 2 * w), nn.Linear(256, 2 * h)

    def forward(self, x):
        feats = self.final(self.backbone(x)).flatten(2)
        tokens = self.gau(self.mlp(feats))
        return self.cls_x(tokens), self.cls_y(tokens)


def export_onnx(path: Path, input_size: tuple[int, int]) -> Path:
    model = RtmposeWholebody(input_size).eval()
    w, h = input_size
    torch.onnx.export(
        model, (torch.zeros(1, 3, h, w),), str(path), dynamo=False, input_names=["input"],
        output_names=["simcc_x", "simcc_y"],
        dynamic_axes={n: {0: "batch"} for n in ("input", "simcc_x", "simcc_y")},
    )  # fmt: skip
    return path


def frames_per_second(estimator, frames: np.ndarray, boxes: np.ndarray, repeats: int) -> float:
    estimator.estimate(frames[:2], boxes[:2])  # warm up: sessions, allocations
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        estimator.estimate(frames, boxes)
        best = min(best, time.perf_counter() - start)
    return len(frames) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=["dwpose", "yolo11n-pose", "yolo11x-pose"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    load_before = os.getloadavg()
    rows = []
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (args.frames, 720, 1280, 3), dtype=np.uint8)
    boxes = np.tile(np.array([[440, 60, 840, 660]], np.float32), (args.frames, 1))
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}, torch threads {torch.get_num_threads()}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only:
            if name == "dwpose":
                onnx = export_onnx(Path(tmp) / "rtmpose-l-wholebody.onnx", (288, 384))
                for batch in (1, 8):
                    est = RtmposeEstimator("dwpose", weights=onnx, batch_size=batch)
                    fps = frames_per_second(est, frames, boxes, args.repeats)
                    rows.append({"estimator": "dwpose", "network": "RTMPose-l 384x288, 133 points",
                                 "batch": batch, "frames_per_s": round(fps, 3)})  # fmt: skip
                    print(rows[-1])
            else:
                from ultralytics import YOLO

                weights = Path(tmp) / f"{name}.pt"
                YOLO(f"{name}.yaml").save(weights)
                est = YoloPoseEstimator(weights, batch_size=8)
                fps = frames_per_second(est, frames, boxes, args.repeats)
                rows.append({"estimator": "yolo11-pose", "network": f"{name}, input 640",
                             "batch": 8, "frames_per_s": round(fps, 3)})  # fmt: skip
                print(rows[-1])
    result = run_info(load_before)
    result["machine"]["processor"] = platform.processor() or platform.machine()
    result["machine"]["torch_threads"] = torch.get_num_threads()
    result["versions"].update(torch=torch.__version__, onnxruntime=onnxruntime.__version__)
    result["settings"] = {
        "frames": args.frames, "frame_size": [720, 1280], "box": [440, 60, 840, 660],
        "repeats": args.repeats, "weights": "random, real shapes", "timing": "best of repeats",
    }  # fmt: skip
    result["rows"] = rows
    atomic.write_json(args.out, result)


if __name__ == "__main__":
    main()
