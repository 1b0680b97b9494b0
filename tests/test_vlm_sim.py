"""The simulated VLM server: REST shape, Files API protocol, oracle, faults, hang-ups, CLI."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from google import genai
from google.genai import errors, types

from preprocess.labeling import prompts
from preprocess.synthetic import vlm_oracle, vlm_sim

KEY = "sim-test-key-0123456789"
REPO = Path(__file__).resolve().parents[1]


def _generate_body(video: bytes, *, schema: bool = True) -> dict:
    config = {"temperature": 0.0}
    if schema:
        config |= {"responseMimeType": "application/json", "responseSchema": {"type": "OBJECT"}}
    return {
        "contents": [
            {
                "role": "user",
                "parts": [
                    {
                        "inlineData": {
                            "mimeType": "video/mp4",
                            "data": base64.b64encode(video).decode(),
                        }
                    },
                    {"text": "win or lose?"},
                ],
            }
        ],
        "generationConfig": config,
    }


def _post(sim: vlm_sim.SimulatedVLM, body: dict, key: str | None = KEY, **kw) -> httpx.Response:
    headers = {"x-goog-api-key": key} if key else {}
    url = f"{sim.base_url}/v1beta/models/gemini-2.5-pro:generateContent"
    return httpx.post(url, json=body, headers=headers, **kw)


def _client(sim: vlm_sim.SimulatedVLM) -> genai.Client:
    return genai.Client(
        api_key=KEY,
        http_options=types.HttpOptions(
            base_url=sim.base_url,
            api_version="v1beta",
            timeout=5000,
            retry_options=types.HttpRetryOptions(attempts=1),
        ),
    )


def test_generate_content_has_gemini_shape_and_says_it_is_a_simulation():
    video = os.urandom(3000)
    with vlm_sim.SimulatedVLM(
        {vlm_oracle.sha256_bytes(video): 0}, accuracy=1.0, api_key=KEY
    ) as sim:
        response = _post(sim, _generate_body(video))
    assert response.status_code == 200
    assert "simulated-vlm" in response.headers["server"]
    assert "not Gemini" in response.headers["server"]
    reply = response.json()
    assert reply["modelVersion"] == "simulated-vlm"
    candidate = reply["candidates"][0]
    assert candidate["finishReason"] == "STOP"
    answer = prompts.LabelAnswer.model_validate_json(candidate["content"]["parts"][0]["text"])
    assert answer.label == "lose"  # accuracy 1.0 and truth 0
    usage = reply["usageMetadata"]
    parts = ("promptTokenCount", "candidatesTokenCount", "thoughtsTokenCount")
    assert usage["totalTokenCount"] == sum(usage[k] for k in parts) > 0


def test_requests_without_key_schema_or_video_are_refused_like_the_api():
    video = os.urandom(100)
    with vlm_sim.SimulatedVLM(api_key=KEY) as sim:
        assert _post(sim, _generate_body(video), key=None).status_code == 403
        wrong = _post(sim, _generate_body(video), key="wrong")
        assert wrong.status_code == 400
        assert wrong.json()["error"]["status"] == "INVALID_ARGUMENT"
        assert _post(sim, _generate_body(video, schema=False)).status_code == 400
        body = _generate_body(video)
        del body["contents"][0]["parts"][0]
        assert "no video part" in _post(sim, body).json()["error"]["message"]
        assert all(r.outcome == "rejected" for r in sim.log)


def test_oracle_accuracy_determinism_and_informative_confidence():
    shas = [f"{i:064x}" for i in range(600)]
    truth = {sha: i % 2 for i, sha in enumerate(shas)}
    oracle = vlm_oracle.Oracle(truth, accuracy=0.8, seed=3)
    answers = [oracle.answer(sha, 2) for sha in shas]
    correct = [
        prompts.LABEL_TO_INT[a["label"]] == truth[sha] for a, sha in zip(answers, shas, strict=True)
    ]
    assert 0.74 < sum(correct) / len(shas) < 0.86
    conf_right = [a["confidence"] for a, c in zip(answers, correct, strict=True) if c]
    conf_wrong = [a["confidence"] for a, c in zip(answers, correct, strict=True) if not c]
    assert sum(conf_right) / len(conf_right) > sum(conf_wrong) / len(conf_wrong) + 0.1
    assert [vlm_oracle.Oracle(truth, 0.8, seed=3).answer(s, 2) for s in shas[:20]] == answers[:20]
    assert [vlm_oracle.Oracle(truth, 0.8, seed=4).answer(s, 2) for s in shas[:20]] != answers[:20]
    for answer in answers[:5]:
        prompts.LabelAnswer.model_validate(answer)
    unknown = oracle.answer("f" * 64, 1)
    assert unknown["confidence"] <= 0.65


def test_fault_plan_order_and_seeded_rates():
    plan = vlm_oracle.FaultPlan(by_video={"a": ["429", "500"]}, script=["empty"])
    assert [plan.next_fault("a") for _ in range(4)] == ["429", "500", "empty", "ok"]
    rated = [vlm_oracle.FaultPlan(rates={"503": 0.3}, seed=1) for _ in range(2)]
    draws = [[p.next_fault("x") for _ in range(2000)] for p in rated]
    assert draws[0] == draws[1]
    assert 0.26 < draws[0].count("503") / 2000 < 0.34
    with pytest.raises(ValueError, match="unknown fault"):
        vlm_oracle.FaultPlan(script=["teapot"])


@pytest.mark.parametrize(
    ("fault", "check"),
    [
        ("429", lambda r: r.status_code == 429
            and r.json()["error"]["status"] == "RESOURCE_EXHAUSTED"),
        ("503", lambda r: r.status_code == 503),
        ("empty", lambda r: r.status_code == 200 and r.json()["candidates"] == []),
        ("safety", lambda r: r.json()["candidates"][0]["finishReason"] == "SAFETY"
            and "content" not in r.json()["candidates"][0]),
        ("malformed", lambda r: _text_is_not_json(r)),
        ("echo_key", lambda r: r.status_code == 400 and KEY in r.text),
    ],
)  # fmt: skip
def test_injected_faults_over_http(fault, check):
    video = os.urandom(64)
    sha = vlm_oracle.sha256_bytes(video)
    with vlm_sim.SimulatedVLM(faults=vlm_oracle.FaultPlan(by_video={sha: [fault]})) as sim:
        assert check(_post(sim, _generate_body(video)))
        assert _post(sim, _generate_body(video)).status_code == 200  # script consumed
        assert sim.generate_counts()[sha] == 2
        assert [r.fault for r in sim.log] == [fault, "ok"]


def _text_is_not_json(response: httpx.Response) -> bool:
    text = response.json()["candidates"][0]["content"]["parts"][0]["text"]
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return True
    return False


def test_slow_reply_is_abandoned_when_the_client_hangs_up():
    video = os.urandom(64)
    plan = vlm_oracle.FaultPlan(script=["slow"])
    with vlm_sim.SimulatedVLM(faults=plan, slow_s=30.0) as sim:
        start = time.monotonic()
        with pytest.raises(httpx.TimeoutException):
            _post(sim, _generate_body(video), timeout=0.3)
        while sim.in_flight() and time.monotonic() - start < 5:
            time.sleep(0.02)
        (record,) = sim.log
        assert record.outcome == "abandoned"
        assert record.finished - start < 3  # noticed the hang-up, did not sleep 30 s


def test_files_api_resumable_upload_poll_and_reference_by_uri():
    video = os.urandom(5000)
    truth = {vlm_oracle.sha256_bytes(video): 1}
    with vlm_sim.SimulatedVLM(truth, accuracy=1.0, api_key=KEY, processing_polls=1) as sim:
        client = _client(sim)
        uploaded = client.files.upload(
            file=io.BytesIO(video), config=types.UploadFileConfig(mime_type="video/mp4")
        )
        assert uploaded.state == types.FileState.PROCESSING
        assert uploaded.size_bytes == len(video)
        part = types.Part.from_uri(file_uri=uploaded.uri, mime_type="video/mp4")
        config = types.GenerateContentConfig(
            response_mime_type="application/json", response_schema=prompts.LabelAnswer
        )
        with pytest.raises(errors.ClientError, match="not in an ACTIVE state"):
            client.models.generate_content(model="m", contents=[part, "?"], config=config)
        assert client.files.get(name=uploaded.name).state == types.FileState.PROCESSING
        assert client.files.get(name=uploaded.name).state == types.FileState.ACTIVE
        reply = client.models.generate_content(model="m", contents=[part, "?"], config=config)
        assert prompts.LabelAnswer.model_validate_json(reply.text).label == "win"
        client.files.delete(name=uploaded.name)
        with pytest.raises(errors.ClientError):
            client.files.get(name=uploaded.name)
        kinds = [r.kind for r in sim.log]
    assert kinds[:2] == ["upload_start", "upload_chunk"]
    generates = [r for r in sim.log if r.kind == "generate" and r.outcome == "answered"]
    assert [r.video_source for r in generates] == ["file"]


def test_truth_file_round_trip_and_errors(tmp_path):
    video = tmp_path / "a.mp4"
    video.write_bytes(b"abc")
    truth = vlm_oracle.truth_for_videos([(video, "win")])
    path = tmp_path / "truth.json"
    path.write_text(json.dumps({k: "win" for k in truth}))
    assert vlm_oracle.load_truth(path) == {vlm_oracle.sha256_bytes(b"abc"): 1}
    path.write_text(json.dumps({"not-a-hash": 1}))
    with pytest.raises(ValueError, match="not-a-hash"):
        vlm_oracle.load_truth(path)
    path.write_text(json.dumps({"a" * 64: "draw"}))
    with pytest.raises(ValueError, match="draw"):
        vlm_oracle.load_truth(path)


def test_command_line_server_answers(tmp_path):
    video = os.urandom(256)
    truth = tmp_path / "truth.json"
    truth.write_text(json.dumps({vlm_oracle.sha256_bytes(video): "lose"}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "preprocess.synthetic.vlm_sim", "--truth", str(truth)]
        + ["--accuracy", "1"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert "simulated VLM (not Gemini)" in line
        base_url = line.rsplit(" ", 1)[-1].strip()
        response = httpx.post(
            f"{base_url}/v1beta/models/x:generateContent",
            json=_generate_body(video),
            headers={"x-goog-api-key": "any"},
        )
        text = response.json()["candidates"][0]["content"]["parts"][0]["text"]
        assert json.loads(text)["label"] == "lose"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
