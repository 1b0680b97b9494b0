"""The JAX half never imports torch, and its entry points import where torch cannot."""

import subprocess
import sys

import pytest

ENTRY_POINTS = [
    "hemo_jax.train",
    "hemo_jax.encode",
    "hemo_jax.evaluate",
    "hemo_jax.predict",
    "hemo_jax.stack",
    "hemo_jax.data.describe",
]


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_entry_point_imports_without_torch(module):
    # A None entry in sys.modules makes `import torch` raise ImportError.
    code = (
        "import sys; sys.modules['torch'] = None; "
        f"import {module}; "
        "assert not any(m.startswith(('torch.', 'torchvision')) for m in sys.modules), "
        "sorted(m for m in sys.modules if m.startswith('torch'))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    # With torch installed, nothing imports it either (not even behind a try).
    code = f"import sys; import {module}; assert 'torch' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
