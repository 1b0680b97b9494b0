"""What labelling takes and gives: a `VideoItem` in; a `LabelResult` or a `Failure` out,
with the tokens its replies cost (`TokenUsage`); and the summary of a batch of them."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from google.genai import types


@dataclass(frozen=True)
class VideoItem:
    video_id: str
    path: Path
    label: int | None = None  # ground truth when the corpus has it: 1 win, 0 lose

    @classmethod
    def of(cls, item: VideoItem | Sequence[Any]) -> VideoItem:
        if isinstance(item, VideoItem):
            return item
        video_id, path, *rest = item
        label = rest[0] if rest else None
        if label is not None and label not in (0, 1):
            raise ValueError(f"video {video_id}: ground-truth label {label!r} is not 0, 1 or None")
        return cls(str(video_id), Path(path), label)


def video_items(videos: Iterable[VideoItem | Sequence[Any]]) -> list[VideoItem]:
    """`VideoItem`s from items or tuples (video_id, path[, label]); a repeated id is an error."""
    items = [VideoItem.of(v) for v in videos]
    seen = Counter(v.video_id for v in items)
    duplicates = sorted(vid for vid, n in seen.items() if n > 1)
    if duplicates:
        raise ValueError(f"duplicate video ids: {duplicates[:10]}")
    return items


@dataclass(frozen=True)
class TokenUsage:
    prompt: int = 0
    candidates: int = 0
    thoughts: int = 0
    total: int = 0

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(*(a + b for a, b in zip(_astuple(self), _astuple(other), strict=True)))

    @classmethod
    def of(cls, meta: types.GenerateContentResponseUsageMetadata | None) -> TokenUsage:
        if meta is None:
            return cls()
        return cls(
            prompt=meta.prompt_token_count or 0,
            candidates=meta.candidates_token_count or 0,
            thoughts=meta.thoughts_token_count or 0,
            total=meta.total_token_count or 0,
        )


def _astuple(usage: TokenUsage) -> tuple[int, ...]:
    return dataclasses.astuple(usage)


@dataclass(frozen=True)
class LabelResult:
    video_id: str
    video_sha256: str
    model: str
    prompt_version: str
    pseudo_label: int  # 1 win, 0 lose (final answer, after reflection)
    pseudo_confidence: float
    reasoning: str
    observations: tuple[str, ...]
    transcript_summary: str
    first_label: int  # the Chain-of-Thought turn's answer, before reflection
    first_confidence: float
    usage: TokenUsage  # both turns
    model_version: str = ""
    from_cache: bool = False

    def record_fields(self) -> dict[str, Any]:
        """The fields a VideoRecord takes from the labeler."""
        return {
            "pseudo_label": self.pseudo_label,
            "pseudo_confidence": self.pseudo_confidence,
            "reasoning": self.reasoning,
        }

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["observations"] = list(self.observations)
        del data["from_cache"]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, from_cache: bool) -> LabelResult:
        fields = dict(data)
        fields["observations"] = tuple(fields["observations"])
        fields["usage"] = TokenUsage(**fields["usage"])
        return cls(**fields, from_cache=from_cache)


@dataclass(frozen=True)
class Failure:
    video_id: str
    reason: str  # unreadable, unsupported, malformed_json, schema_invalid, blocked, empty,
    # truncated, rate_limited, server_error, timeout, network, api_error, upload_failed, error
    detail: str
    video_sha256: str | None = None
    attempts: int = 0
    usage: TokenUsage = field(default_factory=TokenUsage)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- summary --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelSummary:
    labelled: int  # fresh labels of this run
    cached: int
    failed: int
    failures_by_reason: dict[str, int]
    usage: TokenUsage  # tokens of the replies behind this run's fresh labels and failures
    correct: int  # agreement with ground truth, where the video has it
    with_truth: int
    flipped_by_reflection: int


def summarize(
    results: Mapping[str, LabelResult | Failure], videos: Sequence[VideoItem] = ()
) -> LabelSummary:
    truth = {v.video_id: v.label for v in videos if v.label is not None}
    labels = [r for r in results.values() if isinstance(r, LabelResult)]
    failures = [r for r in results.values() if isinstance(r, Failure)]
    usage = TokenUsage()
    for r in [*labels, *failures]:
        if not getattr(r, "from_cache", False):
            usage += r.usage
    judged = [r for r in labels if r.video_id in truth]
    return LabelSummary(
        labelled=sum(not r.from_cache for r in labels),
        cached=sum(r.from_cache for r in labels),
        failed=len(failures),
        failures_by_reason=dict(Counter(f.reason for f in failures)),
        usage=usage,
        correct=sum(r.pseudo_label == truth[r.video_id] for r in judged),
        with_truth=len(judged),
        flipped_by_reflection=sum(r.first_label != r.pseudo_label for r in labels),
    )


def format_summary(summary: LabelSummary) -> str:
    u = summary.usage
    lines = [
        f"labelled {summary.labelled}, cached {summary.cached}, failed {summary.failed}"
        + (f" ({summary.failures_by_reason})" if summary.failed else ""),
        f"tokens (this run's replies): prompt {u.prompt:,}, candidates {u.candidates:,}, "
        f"thoughts {u.thoughts:,}, total {u.total:,}",
        f"reflection changed the first answer on {summary.flipped_by_reflection} video(s)",
    ]
    if summary.with_truth:
        lines.append(
            f"agreement with ground truth: {summary.correct}/{summary.with_truth} "
            f"= {summary.correct / summary.with_truth:.3f}"
        )
    return "\n".join(lines)
