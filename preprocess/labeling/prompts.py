"""Versioned prompts and response schema for the video pseudo-labeler.

The labeler asks a vision-language model two questions about one interview video, in one
conversation:

1. Chain-of-Thought: observe step by step (posture, micro-gestures, facial expression, gaze,
   speech content and delivery), then judge whether the player won or lost the match.
2. Reflection: critique that first analysis (politeness masking, over-reading one cue, the base
   rate) and give the final answer.

Both answers come back as JSON that follows `LabelAnswer`. The field order matters: the model
writes its observations and reasoning before it commits to a label, so the structured output
keeps the chain of thought ahead of the verdict.

`PROMPT_VERSION` is part of the labeler's cache key, so changing any text here without bumping
it would silently mix answers to different prompts. `PROMPT_FINGERPRINTS` records the hash of
the text each version was released with; tests refuse a text change that keeps the old version.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, Field

PROMPT_VERSION = "cot-reflect-v1"

# Share of "win" videos in iMiGUE (258 of 359); the reflection turn names it so the model can
# weigh a single ambiguous cue against the prior.
WIN_BASE_RATE = 258 / 359

SYSTEM_INSTRUCTION = """\
You are an expert in nonverbal behaviour and affective computing. You analyse post-match \
press-conference videos of professional tennis players. The match result is never stated to \
you; you infer it only from what the player shows and says. Describe what you actually see \
and hear, with approximate timestamps, and do not invent details."""

COT_PROMPT = """\
Watch this post-match press conference and decide whether the player WON or LOST the match \
that just ended. Work step by step and write each step down before you judge:

1. Posture: how the player sits, leans, and holds the shoulders and head; changes over time.
2. Micro-gestures: brief, often unconscious movements such as touching the face, neck, hair \
or ears, rubbing hands, scratching, folding arms, fiddling with objects, leg movement.
3. Facial expression: smiles (genuine or polite), frowns, lip pressing, eye closing, \
expressions that do not match the words.
4. Gaze: eye contact with the reporters, gaze aversion, looking down, blink rate.
5. Speech: what is said (content about the match, the opponent, the next round or going \
home) and how it is said (tone, pace, energy, pauses, length of answers).

Then weigh the evidence and judge: "win" or "lose". Give a confidence between 0 and 1 that \
your label is correct, and a two- or three-sentence summary of what the player says.

Answer only with JSON that follows the response schema: "observations" (one short item per \
cue, with a timestamp where you can), "reasoning" (how the cues add up), "label", \
"confidence", "transcript_summary"."""

REFLECTION_PROMPT = f"""\
Now critique your analysis above before giving the final answer.

- Politeness masking: players who lost often stay courteous, smile and praise the opponent; \
players who won may look tired or flat. Did you take social display rules for felt emotion?
- Over-reading a single cue: did one gesture or one sentence drive your verdict while most \
other evidence was neutral or pointed the other way?
- Base rate: in this collection about {WIN_BASE_RATE:.0%} of the press conferences follow a \
win. Without clear evidence of a loss, the prior favours "win"; clear evidence (talk of the \
defeat, going home, visible dejection that persists) should still override it.
- Consistency: do your observations support your reasoning, and does your reasoning support \
your label and confidence?

Revise where the critique shows a problem, then give your final answer as JSON that follows \
the same response schema: the observations you still stand by, the revised reasoning \
(mention what the critique changed, if anything), the final "label", a calibrated \
"confidence", and the "transcript_summary"."""


# Both turns answer with this schema. It is passed to google-genai as `response_schema`, which
# sends it to the API (with `propertyOrdering` in field order, so the model writes observations
# and reasoning before the label), and the labeler validates replies against it. The docstring
# and field descriptions travel with the schema to the model.
class LabelAnswer(BaseModel):
    """A judgement of whether the player in a press-conference video won or lost."""

    observations: list[str] = Field(
        description="Concrete cues seen or heard, one per item, with timestamps where possible."
    )
    reasoning: str = Field(description="How the observed cues add up.")
    label: Literal["win", "lose"] = Field(description="Whether the player won or lost.")
    confidence: float = Field(ge=0.0, le=1.0, description="Probability that the label is right.")
    transcript_summary: str = Field(description="Two or three sentences on what is said.")


LABEL_TO_INT = {"win": 1, "lose": 0}

# version -> sha256 of the prompt text and schema it was released with.
PROMPT_FINGERPRINTS = {
    "cot-reflect-v1": "344cef805e1ed94930ed042edd08d17ff123f18c88f5bd52a48ce8957e9a8a2a",
}


def prompt_fingerprint() -> str:
    """sha256 over every text and the schema that shape the model's answer."""
    payload = json.dumps(
        {
            "system": SYSTEM_INSTRUCTION,
            "cot": COT_PROMPT,
            "reflection": REFLECTION_PROMPT,
            "schema": LabelAnswer.model_json_schema(),
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()
