"""The simulated VLM's Batch API (`preprocess.synthetic.vlm_batch`) as google-genai sees it:
job states, inline and file answers, per-request faults, held and expired jobs."""

from __future__ import annotations

import base64
import io
import json
import os

import pytest
from google import genai
from google.genai import errors, types

from preprocess.labeling import prompts
from preprocess.synthetic import vlm_oracle, vlm_sim

KEY = "sim-batch-key-0123456789"
STRUCTURED = types.GenerateContentConfig(
    temperature=0.0, response_mime_type="application/json", response_schema=prompts.LabelAnswer
)


def _client(sim: vlm_sim.SimulatedVLM) -> genai.Client:
    return genai.Client(
        api_key=KEY,
        http_options=types.HttpOptions(
            base_url=sim.base_url,
            api_version="v1beta",
            retry_options=types.HttpRetryOptions(attempts=1),
        ),
    )


def _request(video: bytes, key: str) -> types.InlinedRequest:
    parts = [types.Part.from_bytes(data=video, mime_type="video/mp4"), types.Part(text="?")]
    return types.InlinedRequest(
        contents=[types.Content(role="user", parts=parts)], config=STRUCTURED, metadata={"k": key}
    )


def test_a_job_is_pending_then_running_for_its_polls_then_succeeded():
    with vlm_sim.SimulatedVLM(api_key=KEY) as sim:
        sim.batches.polls_until_done = 2
        client = _client(sim)
        job = client.batches.create(model="gemini-2.5-pro", src=[_request(b"v", "a")])
        assert job.name.startswith("batches/") and job.state == types.JobState.JOB_STATE_PENDING
        states = [client.batches.get(name=job.name).state for _ in range(4)]
    running, succeeded = types.JobState.JOB_STATE_RUNNING, types.JobState.JOB_STATE_SUCCEEDED
    assert states == [running, running, succeeded, succeeded]


def test_answers_come_in_order_with_metadata_and_errors():
    videos = [os.urandom(500), os.urandom(600)]
    truth = {vlm_oracle.sha256_bytes(v): 0 for v in videos}
    plan = vlm_oracle.FaultPlan(by_video={vlm_oracle.sha256_bytes(videos[1]): ["503"]})
    with vlm_sim.SimulatedVLM(truth, accuracy=1.0, faults=plan, api_key=KEY) as sim:
        sim.batches.polls_until_done = 0
        client = _client(sim)
        src = [_request(v, f"r{i}") for i, v in enumerate(videos)]
        job = client.batches.create(model="gemini-2.5-pro", src=src)
        job = client.batches.get(name=job.name)
    assert job.state == types.JobState.JOB_STATE_SUCCEEDED
    first, second = job.dest.inlined_responses
    assert (first.metadata, second.metadata) == ({"k": "r0"}, {"k": "r1"})
    answer = prompts.LabelAnswer.model_validate_json(first.response.text)
    assert answer.label == "lose" and first.response.model_version == "simulated-vlm"
    assert first.response.usage_metadata.prompt_token_count > 0
    assert second.response is None and second.error.code == 503


def test_a_file_job_answers_in_a_generated_file_by_key():
    video = os.urandom(700)
    with vlm_sim.SimulatedVLM({vlm_oracle.sha256_bytes(video): 1}, accuracy=1.0) as sim:
        sim.batches.polls_until_done = 0
        client = _client(sim)
        line = {
            "key": "only",
            "request": {
                "contents": [
                    {
                        "role": "user",
                        "parts": [
                            {
                                "inlineData": {
                                    "mimeType": "video/mp4",
                                    "data": base64.b64encode(video).decode(),
                                }
                            }
                        ],
                    }
                ],
                "generationConfig": {"responseMimeType": "application/json"},
            },
        }
        uploaded = client.files.upload(
            file=io.BytesIO(json.dumps(line).encode() + b"\n"),
            config=types.UploadFileConfig(mime_type="jsonl"),
        )
        job = client.batches.create(model="gemini-2.5-pro", src=uploaded.name)
        job = client.batches.get(name=job.name)
        assert job.dest.file_name and job.dest.inlined_responses is None
        (answer,) = [
            json.loads(x) for x in client.files.download(file=job.dest.file_name).splitlines()
        ]
    assert answer["key"] == "only"
    text = answer["response"]["candidates"][0]["content"]["parts"][0]["text"]
    assert prompts.LabelAnswer.model_validate_json(text).label == "win"


@pytest.mark.parametrize(
    ("fault", "state"),
    [("expire", types.JobState.JOB_STATE_EXPIRED), ("fail", types.JobState.JOB_STATE_FAILED)],
)
def test_job_faults_end_the_job_without_answers(fault, state):
    with vlm_sim.SimulatedVLM(api_key=KEY) as sim:
        sim.batches.job_faults = [fault]
        sim.batches.polls_until_done = 0
        client = _client(sim)
        job = client.batches.create(model="gemini-2.5-pro", src=[_request(b"v", "a")])
        job = client.batches.get(name=job.name)
        assert not [r for r in sim.log if r.kind == "batch_request"]
    assert job.state == state and job.dest is None


def test_a_held_job_runs_until_released_and_an_unknown_job_is_404():
    with vlm_sim.SimulatedVLM(api_key=KEY) as sim:
        sim.batches.hold = True
        sim.batches.polls_until_done = 0
        client = _client(sim)
        job = client.batches.create(model="gemini-2.5-pro", src=[_request(b"v", "a")])
        states = {client.batches.get(name=job.name).state for _ in range(5)}
        assert states == {types.JobState.JOB_STATE_RUNNING}
        sim.batches.release()
        assert client.batches.get(name=job.name).state == types.JobState.JOB_STATE_SUCCEEDED
        with pytest.raises(errors.ClientError) as missing:
            client.batches.get(name="batches/nosuchjob")
    assert missing.value.code == 404
