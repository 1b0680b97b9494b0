"""preprocess.labeling.reply: a reply is an answer only when it is complete, allowed and valid."""

from __future__ import annotations

import json

import pytest
from google.genai import types

from preprocess.labeling.reply import BadReply, parse_reply

ANSWER = {
    "observations": ["00:12 smiles broadly"],
    "reasoning": "relaxed and upbeat",
    "label": "win",
    "confidence": 0.8,
    "transcript_summary": "Talks about the next round.",
}


def reply(*texts: str, finish=types.FinishReason.STOP, thought: str | None = None, **kw):
    parts = [types.Part(text=thought, thought=True)] if thought else []
    parts += [types.Part(text=t) for t in texts]
    content = types.Content(role="model", parts=parts)
    candidate = types.Candidate(content=content, finish_reason=finish)
    return types.GenerateContentResponse(candidates=[candidate], **kw)


def test_answer_comes_from_the_text_parts_not_the_thoughts():
    text = json.dumps(ANSWER)
    answer, raw = parse_reply(reply(text[:20], text[20:], thought="I think it is lose"))
    assert raw == text
    assert (answer.label, answer.confidence) == ("win", 0.8)


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (
            types.GenerateContentResponse(
                prompt_feedback=types.GenerateContentResponsePromptFeedback(
                    block_reason=types.BlockedReason.SAFETY
                )
            ),
            "blocked",
        ),
        (types.GenerateContentResponse(candidates=[]), "empty"),
        (reply(json.dumps(ANSWER), finish=types.FinishReason.SAFETY), "blocked"),
        (reply("  ", thought="only thinking"), "empty"),
        (reply(json.dumps(ANSWER)[:30], finish=types.FinishReason.MAX_TOKENS), "truncated"),
        (reply("the player won"), "malformed_json"),
        (reply(json.dumps({**ANSWER, "label": "draw"})), "schema_invalid"),
    ],
)
def test_bad_replies_say_why(response, reason):
    with pytest.raises(BadReply) as bad:
        parse_reply(response)
    assert bad.value.reason == reason


def test_schema_problems_name_the_field():
    with pytest.raises(BadReply, match="confidence"):
        parse_reply(reply(json.dumps({**ANSWER, "confidence": 3.0})))
