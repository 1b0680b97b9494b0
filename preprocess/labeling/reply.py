"""Reading one model reply: the validated `prompts.LabelAnswer`, or `BadReply` saying why not.

A reply is bad when the prompt or the answer was blocked, when it carries no text, when it was
cut at the output token limit, when its text is not JSON, or when the JSON does not fit the
answer schema. Thought parts are not part of the answer.
"""

from __future__ import annotations

import json

from google.genai import types
from pydantic import ValidationError

from preprocess.labeling import prompts

_BLOCKING_FINISH_REASONS = frozenset(
    {
        types.FinishReason.SAFETY,
        types.FinishReason.RECITATION,
        types.FinishReason.BLOCKLIST,
        types.FinishReason.PROHIBITED_CONTENT,
        types.FinishReason.SPII,
        types.FinishReason.LANGUAGE,
        types.FinishReason.OTHER,
    }
)


class BadReply(Exception):
    """A reply that holds no usable answer; `reason` is the failure reason it becomes."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def parse_reply(response: types.GenerateContentResponse) -> tuple[prompts.LabelAnswer, str]:
    """The validated answer and its raw text, or `BadReply` saying what is wrong."""
    feedback = response.prompt_feedback
    if feedback is not None and feedback.block_reason is not None:
        raise BadReply("blocked", f"prompt blocked: {feedback.block_reason}")
    if not response.candidates:
        raise BadReply("empty", "the reply has no candidates")
    candidate = response.candidates[0]
    reason = candidate.finish_reason
    if reason in _BLOCKING_FINISH_REASONS:
        raise BadReply("blocked", f"finish reason {reason}")
    parts = candidate.content.parts if candidate.content and candidate.content.parts else []
    text = "".join(p.text for p in parts if p.text and not p.thought)
    if not text.strip():
        raise BadReply("empty", f"the reply has no text (finish reason {reason})")
    if reason == types.FinishReason.MAX_TOKENS:
        raise BadReply("truncated", "the reply hit the output token limit")
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadReply("malformed_json", f"{exc}; text starts {text[:120]!r}") from exc
    try:
        return prompts.LabelAnswer.model_validate(payload), text
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors()
        )
        raise BadReply("schema_invalid", problems) from exc
