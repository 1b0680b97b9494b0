"""The dry run: what a labelling run would send, and an ESTIMATE of what it would cost.

Computed from local files only: no network, no API key. An estimate, not a quote. Gemini 2.5
Pro standard-tier list prices, USD per 1M tokens: input 1.25 for prompts up to 200k tokens,
2.50 above; output (thinking included) 10.00 / 15.00. Video costs ~300 tokens per second at
the default media resolution (258 per frame sampled at 1 fps + 32 for audio) and ~100 at low
resolution (66 + 32). Each reply is assumed to be ~700 answer tokens plus ~2,000 thinking
tokens. The second turn resends the video and the first turn, so a video is paid for twice as
input. A video already in the label cache costs nothing. The Batch API (`--batch`) bills half
the standard price for the same tokens; both totals are shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from preprocess.labeling import prompts
from preprocess.labeling.cache import LabelCache, cache_key, file_sha256
from preprocess.labeling.config import DEFAULT_MODEL, LabelerConfig
from preprocess.labeling.results import TokenUsage, VideoItem


@dataclass(frozen=True)
class Pricing:
    input_per_m: float
    input_per_m_long: float
    output_per_m: float
    output_per_m_long: float
    long_prompt_tokens: int = 200_000

    def cost(self, prompt_tokens: int, output_tokens: int) -> float:
        long = prompt_tokens > self.long_prompt_tokens
        rate_in = self.input_per_m_long if long else self.input_per_m
        rate_out = self.output_per_m_long if long else self.output_per_m
        return (prompt_tokens * rate_in + output_tokens * rate_out) / 1e6


PRICES = {"gemini-2.5-pro": Pricing(1.25, 2.50, 10.0, 15.0)}
# The Batch API's price per token, as a share of the standard one (Gemini API pricing).
BATCH_PRICE_FACTOR = 0.5
# One entry per `config.MEDIA_RESOLUTIONS`.
VIDEO_TOKENS_PER_SECOND = {"default": 300, "low": 100}
ASSUMED_ANSWER_TOKENS = 700
ASSUMED_THINKING_TOKENS = 2000
TEXT_CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class PlannedVideo:
    video_id: str
    size_bytes: int
    transport: str  # inline | upload | cached | unreadable
    duration_s: float | None
    prompt_tokens: int | None  # both turns
    output_tokens: int | None
    cost_usd: float | None


def probe_duration(path: Path) -> float | None:
    """Seconds of video from the container, or None when it cannot be read."""
    from preprocess.video.decode import VideoError, VideoReader

    try:
        with VideoReader(path) as reader:
            info = reader.info
    except VideoError:
        return None
    return info.container_frames / info.fps if info.container_frames > 0 else None


def reply_cost(usage: TokenUsage, model: str) -> float:
    """USD at the standard price of one reply's usage metadata (thinking billed as output)."""
    pricing = PRICES.get(model, PRICES[DEFAULT_MODEL])
    return pricing.cost(usage.prompt, usage.candidates + usage.thoughts)


def plan_videos(videos: Sequence[VideoItem], config: LabelerConfig) -> list[PlannedVideo]:
    """What a run would send, from local files only (no network, no API key)."""
    pricing = PRICES.get(config.model, PRICES[DEFAULT_MODEL])
    cache = LabelCache(config.cache_dir) if config.cache_dir.exists() else None
    cot_tokens = (len(prompts.SYSTEM_INSTRUCTION) + len(prompts.COT_PROMPT)) // TEXT_CHARS_PER_TOKEN
    reflection_tokens = len(prompts.REFLECTION_PROMPT) // TEXT_CHARS_PER_TOKEN
    per_reply = ASSUMED_ANSWER_TOKENS + ASSUMED_THINKING_TOKENS
    plans = []
    for video in videos:
        try:
            size = video.path.stat().st_size
        except OSError:
            plans.append(PlannedVideo(video.video_id, 0, "unreadable", None, None, None, None))
            continue
        transport = "inline" if size <= config.inline_limit_bytes else "upload"
        if cache is not None:
            video_sha = file_sha256(video.path)
            key = cache_key(video_sha, config.model, prompts.PROMPT_VERSION, config.endpoint)
            if cache.load(key) is not None:
                transport = "cached"
        duration = probe_duration(video.path)
        if duration is None or transport == "cached":
            plans.append(PlannedVideo(video.video_id, size, transport, duration, None, None, None))
            continue
        video_tokens = round(duration * VIDEO_TOKENS_PER_SECOND[config.media_resolution])
        first = video_tokens + cot_tokens
        second = first + ASSUMED_ANSWER_TOKENS + reflection_tokens
        cost = pricing.cost(first, per_reply) + pricing.cost(second, per_reply)
        plans.append(
            PlannedVideo(
                video.video_id, size, transport, duration, first + second, 2 * per_reply, cost
            )
        )
    return plans


def format_plan(plans: Sequence[PlannedVideo], config: LabelerConfig) -> str:
    rate = VIDEO_TOKENS_PER_SECOND[config.media_resolution]
    priced = config.model if config.model in PRICES else f"{DEFAULT_MODEL} (assumed)"
    lines = [
        "DRY RUN: nothing is sent.",
        f"model {config.model}, prompt version {prompts.PROMPT_VERSION}, temperature 0, "
        f"2 turns per video (Chain-of-Thought, then Reflection), structured JSON output",
        f"endpoint {config.base_url or 'Gemini API (default)'}, inline limit "
        f"{config.inline_limit_bytes:,} bytes, media resolution {config.media_resolution}",
        "",
        "| video | MB | sent as | duration s | est. prompt tokens | est. output tokens "
        "| est. USD |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in plans:
        lines.append(
            f"| {p.video_id} | {p.size_bytes / 1e6:.2f} | {p.transport} | "
            f"{_fmt(p.duration_s, '.1f')} | {_fmt(p.prompt_tokens, ',')} | "
            f"{_fmt(p.output_tokens, ',')} | {_fmt(p.cost_usd, '.4f')} |"
        )
    costed = [p for p in plans if p.cost_usd is not None]
    unknown = [p.video_id for p in plans if p.transport in ("inline", "upload") and not p.cost_usd]
    lines += [
        "",
        f"ESTIMATED cost of {len(costed)} video(s): ${sum(p.cost_usd or 0 for p in costed):.2f}"
        f" (an estimate, not a quote), "
        f"{sum(p.prompt_tokens or 0 for p in costed):,} prompt tokens",
        f"ESTIMATED at batch price (--batch, {BATCH_PRICE_FACTOR:.0%} of standard): "
        f"${BATCH_PRICE_FACTOR * sum(p.cost_usd or 0 for p in costed):.2f}",
        f"assumes {priced} list prices per 1M tokens: input $1.25 (prompt <= 200k) / $2.50, "
        f"output incl. thinking $10 / $15; ~{rate} video tokens per second; "
        f"~{ASSUMED_ANSWER_TOKENS} answer + ~{ASSUMED_THINKING_TOKENS} thinking tokens per reply",
    ]
    if unknown:
        lines.append(f"not estimated (duration unreadable): {', '.join(unknown)}")
    return "\n".join(lines)


def _fmt(value: float | int | None, spec: str) -> str:
    return "?" if value is None else format(value, spec)
