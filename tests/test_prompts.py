"""Prompt versioning and the structured-output schema."""

from __future__ import annotations

import pytest
from google import genai
from google.genai import _transformers
from pydantic import ValidationError

from preprocess.labeling import prompts


def test_prompt_text_changes_require_a_new_version():
    registered = prompts.PROMPT_FINGERPRINTS.get(prompts.PROMPT_VERSION)
    assert registered == prompts.prompt_fingerprint(), (
        "the prompt text or schema changed: bump PROMPT_VERSION and register the new "
        "fingerprint in PROMPT_FINGERPRINTS (cached labels are keyed by the version)"
    )
    assert len(set(prompts.PROMPT_FINGERPRINTS.values())) == len(prompts.PROMPT_FINGERPRINTS)


def test_chain_of_thought_and_reflection_cover_the_cues_and_the_critique():
    cot = prompts.COT_PROMPT.lower()
    for cue in ("posture", "micro-gestures", "touching the face", "facial expression", "gaze",
                "what is said", "how it is said", '"win" or "lose"'):  # fmt: skip
        assert cue in cot
    reflection = prompts.REFLECTION_PROMPT.lower()
    for point in ("politeness", "single cue", "base rate", "72%", "final answer"):
        assert point in reflection


def test_schema_orders_reasoning_before_the_label_and_validates_replies():
    schema = _transformers.t_schema(genai.Client(api_key="unused"), prompts.LabelAnswer)
    assert schema.property_ordering == [
        "observations", "reasoning", "label", "confidence", "transcript_summary"
    ]  # fmt: skip
    assert schema.properties["label"].enum == ["win", "lose"]
    assert (schema.properties["confidence"].minimum, schema.properties["confidence"].maximum) == (
        0.0,
        1.0,
    )
    good = {
        "observations": ["00:12 touches the neck"],
        "reasoning": "r",
        "label": "lose",
        "confidence": 0.7,
        "transcript_summary": "s",
    }
    assert prompts.LabelAnswer.model_validate(good).label == "lose"
    for bad in ({"label": "draw"}, {"confidence": 1.5}, {"observations": "not a list"}):
        with pytest.raises(ValidationError):
            prompts.LabelAnswer.model_validate(good | bad)
