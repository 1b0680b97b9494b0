"""The synthetic corpus as a corpus to read: the iMiGUE layout plus its settings file.

The generator that writes it lives in ``preprocess.synthetic``; a real step reads only
this module, so nothing on the real path imports the offline world.
"""

from __future__ import annotations

import json
from pathlib import Path

CONFIG_JSON = Path("synth_config.json")  # the generator's settings, at the corpus root


def video_defaults(root: Path) -> tuple[float, tuple[int, int]]:
    """fps and (H, W) of the corpus under ``root``, from its settings file."""
    path = Path(root) / CONFIG_JSON
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
        return float(settings["fps"]), (int(settings["height"]), int(settings["width"]))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: cannot read the synthetic corpus's fps and size: {e}") from e
