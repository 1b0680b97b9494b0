"""The trainer's XLA:CPU setting: how it meets XLA_FLAGS, and that XLA takes it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from hemo_jax.training import xla_cpu

SETTING = f"{xla_cpu.YNN_FUSION_FLAG}={xla_cpu.YNN_FUSION_VALUE}"


def test_appends_to_the_flags_a_user_has():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    assert xla_cpu.prefer_xla_reductions(env, version=(0, 10))
    assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=8 {SETTING}"
    empty: dict[str, str] = {}
    assert xla_cpu.prefer_xla_reductions(empty, version=(0, 11))
    assert empty["XLA_FLAGS"] == SETTING


def test_keeps_a_users_own_setting_and_skips_unknown_jaxlib_versions():
    own = {"XLA_FLAGS": f"{xla_cpu.YNN_FUSION_FLAG}="}
    assert not xla_cpu.prefer_xla_reductions(own, version=(0, 10))
    assert own["XLA_FLAGS"] == f"{xla_cpu.YNN_FUSION_FLAG}="
    newer: dict[str, str] = {}
    assert not xla_cpu.prefer_xla_reductions(newer, version=(0, 12))
    assert "XLA_FLAGS" not in newer


# A matmul, an activation and a row sum: by default YNNPACK fuses all three, the sum
# at the root; with the setting the sum is XLA's own and YNNPACK keeps the matmul.
PROBE = """
import json, re, sys
from hemo_jax.training import xla_cpu
if sys.argv[1] == "set":
    xla_cpu.prefer_xla_reductions()
import jax, jax.numpy as jnp
f = jax.jit(lambda x, w: jax.nn.gelu(x @ w).sum(-1))
text = f.lower(jnp.ones((256, 64)), jnp.ones((64, 64))).compile().as_text()
ops = [m.group(1) for line in text.splitlines() if '"__ynn_fusion"' in line
       for m in [re.search(r'op_name="[^"]*/(\\w+)"', line)] if m]
print(json.dumps(ops))
"""


def _ynn_fusion_roots(mode: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_xla_takes_the_setting():
    assert xla_cpu.jaxlib_version() in xla_cpu.JAXLIB_WITH_FLAG
    assert _ynn_fusion_roots("default") == ["reduce_sum"]
    assert _ynn_fusion_roots("set") == ["dot_general"]
