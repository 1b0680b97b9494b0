"""The machine a GPU run happened on: the GPU and its driver, library versions, JAX's
devices, and the bf16 matmul rate JAX reaches on it (the practical ceiling to read an
MFU against, beside the data-sheet peak).

    python benchmarks/gpu_env.py --out /tmp/out/env.json
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hemo_jax.contract import atomic

# torch is asked about its device in this process too: JAX takes memory as it goes.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

DISTRIBUTIONS = (
    "jax",
    "jaxlib",
    "jax-cuda13-plugin",
    "jax-cuda13-pjrt",
    "flax",
    "optax",
    "orbax-checkpoint",
    "numpy",
    "torch",
    "transformers",
    "safetensors",
    "ml-collections",
)
NVIDIA_SMI_FIELDS = "name,memory.total,driver_version,compute_cap,power.limit,clocks.max.sm"


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def nvidia_smi() -> str:
    cmd = ["nvidia-smi", f"--query-gpu={NVIDIA_SMI_FIELDS}", "--format=csv,noheader"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"unavailable: {err}"
    return (done.stdout or done.stderr).strip()


def jax_info(matmul_size: int, repeats: int = 10) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    device = jax.devices()[0]
    stats = device.memory_stats() or {}
    info: dict[str, Any] = {
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "device_kind": device.device_kind,
        "bytes_limit": stats.get("bytes_limit"),
    }
    n = matmul_size
    a, b = (jax.random.normal(jax.random.key(i), (n, n), jnp.bfloat16) for i in range(2))
    matmul = jax.jit(lambda a, b: a @ b)
    jax.block_until_ready(matmul(a, b))
    start = time.perf_counter()
    out = None
    for _ in range(repeats):  # queued back to back, one wait at the end
        out = matmul(a, b)
    jax.block_until_ready(out)
    seconds = (time.perf_counter() - start) / repeats
    info["bf16_matmul"] = {"n": n, "seconds": seconds, "tflops": 2 * n**3 / seconds / 1e12}
    return info


def torch_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--matmul-size", type=int, default=8192)
    args = parser.parse_args()
    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "nvidia_smi": nvidia_smi(),
        "versions": {name: _version(name) for name in DISTRIBUTIONS},
        "env": {k: os.environ.get(k) for k in ("JAX_PLATFORMS", "XLA_FLAGS", "PYTHONPATH")},
    }
    for key, probe in (("jax", lambda: jax_info(args.matmul_size)), ("torch", torch_info)):
        try:
            env[key] = probe()
        except Exception as err:  # the rest of the description is still worth having
            env[key] = {"error": f"{type(err).__name__}: {err}"[:500]}
    atomic.write_json(args.out, env)
    print(json.dumps(env, indent=2))


if __name__ == "__main__":
    main()
