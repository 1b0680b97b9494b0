"""What the simulated VLM answers: ground truth by video hash, a noisy oracle, and faults.

``preprocess.synthetic.vlm_sim`` serves these answers over the Gemini REST API; this module holds
what it says, apart from how it says it. The oracle does not look at the video: for a
video whose sha256 has a known label it answers the true label with probability
``accuracy`` and the wrong one otherwise, deterministically per (seed, video, turn).
Wrong answers come with lower confidence on average.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from preprocess.labeling.cache import file_sha256

FAULTS = ("ok", "429", "500", "503", "malformed", "schema", "empty", "safety", "slow", "echo_key")
WIN_BASE_RATE = 258 / 359

_WIN_CUES = (
    "leans back in the chair with relaxed shoulders",
    "smiles broadly while recalling key points of the match",
    "keeps steady eye contact with the reporters",
    "speaks at an even pace and jokes with the room",
    "talks about preparing for the next round",
    "uses open palm gestures while explaining tactics",
)
_LOSE_CUES = (
    "touches the face and rubs the back of the neck",
    "looks down at the table for several seconds before answering",
    "folds the arms tightly across the chest",
    "gives short answers with long pauses",
    "presses the lips together and exhales before answering",
    "talks about mistakes and about the opponent playing better",
)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _parse_label(value: Any, where: str) -> int:
    if value in (1, "1", "win", "positive"):
        return 1
    if value in (0, "0", "lose", "negative"):
        return 0
    raise ValueError(f"{where}: label {value!r} is not one of win/lose/1/0")


def truth_for_videos(items: Iterable[tuple[str | Path, Any]]) -> dict[str, int]:
    """(video path, label) pairs -> {sha256 of the file: 1 win / 0 lose} for the oracle."""
    # Hashed as the labeler hashes the videos it sends, so the two always agree.
    return {file_sha256(Path(path)): _parse_label(label, str(path)) for path, label in items}


def load_truth(path: str | Path) -> dict[str, int]:
    """Read a truth file: a JSON object {sha256 hex: "win" | "lose" | 1 | 0}."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the truth file: {exc}") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: the truth file must hold a JSON object sha256 -> label")
    truth = {}
    for key, value in raw.items():
        if not re.fullmatch(r"[0-9a-f]{64}", key):
            raise ValueError(f"{path}: key {key!r} is not a lowercase sha256 hex digest")
        truth[key] = _parse_label(value, f"{path}[{key}]")
    return truth


@dataclass
class FaultPlan:
    """Which fault the next generateContent requests get.

    `by_video` (sha256 -> faults) is consumed first, one entry per request for that video;
    then `script`, one entry per request of any video; then `rates` (fault -> probability per
    request, drawn from a generator seeded with `seed`). Anything else is answered normally.
    """

    by_video: dict[str, list[str]] = field(default_factory=dict)
    script: list[str] = field(default_factory=list)
    rates: dict[str, float] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        names = [f for faults in self.by_video.values() for f in faults]
        names += list(self.script) + list(self.rates)
        unknown = sorted(set(names) - set(FAULTS))
        if unknown:
            raise ValueError(f"unknown fault(s) {unknown}; known: {list(FAULTS)}")
        if sum(self.rates.values()) > 1.0 or any(p < 0 for p in self.rates.values()):
            raise ValueError(f"fault rates {self.rates} must be >= 0 and sum to at most 1")
        self.by_video = {k: list(v) for k, v in self.by_video.items()}
        self.script = list(self.script)
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()

    def next_fault(self, video_sha: str) -> str:
        with self._lock:
            queue = self.by_video.get(video_sha)
            if queue:
                return queue.pop(0)
            if self.script:
                return self.script.pop(0)
            draw = self._rng.random()
            for name, rate in self.rates.items():
                if draw < rate:
                    return name
                draw -= rate
            return "ok"


class Oracle:
    """Deterministic noisy answers: right with probability `accuracy` per (seed, video, turn)."""

    def __init__(self, truth: Mapping[str, int], accuracy: float, seed: int = 0) -> None:
        if not 0.0 <= accuracy <= 1.0:
            raise ValueError(f"accuracy {accuracy} must lie in [0, 1]")
        self.truth = dict(truth)
        self.accuracy = accuracy
        self.seed = seed

    def answer(self, video_sha: str, turn: int) -> dict[str, Any]:
        rng = random.Random(f"{self.seed}:{video_sha}:{turn}")
        true_label = self.truth.get(video_sha)
        if true_label is None:
            label = int(rng.random() < WIN_BASE_RATE)
            confidence = rng.uniform(0.5, 0.65)
        elif rng.random() < self.accuracy:
            label, confidence = true_label, rng.uniform(0.65, 0.95)
        else:
            label, confidence = 1 - true_label, rng.uniform(0.5, 0.75)
        name, other = ("win", "lose") if label else ("lose", "win")
        support = rng.sample(_WIN_CUES if label else _LOSE_CUES, 3)
        against = rng.choice(_LOSE_CUES if label else _WIN_CUES)
        stamps = sorted(rng.sample(range(5, 600), 4))
        observations = [
            f"{t // 60:02d}:{t % 60:02d} the player {cue}"
            for t, cue in zip(stamps, [*support, against], strict=True)
        ]
        reasoning = (
            f"Three of the four cues point to a {name}: the player {support[0]}, "
            f"{support[1]} and {support[2]}. The player also {against}, which alone would "
            f"suggest a {other}, but it is a single cue against a consistent pattern."
        )
        if turn > 1:
            reasoning = (
                "On reflection, politeness could mask the felt emotion and no single cue "
                f"should decide; the pattern still supports a {name}. " + reasoning
            )
        return {
            "observations": observations,
            "reasoning": reasoning,
            "label": name,
            "confidence": round(confidence, 3),
            "transcript_summary": (
                "Simulated summary: the player answers questions about the match, "
                "the conditions and the schedule ahead."
            ),
        }
