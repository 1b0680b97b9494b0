"""The SIMULATED VLM's Batch API and generated files (part of `vlm_sim`; not Gemini).

It serves what google-genai's `client.batches` and `client.files.download` send to the Gemini
Developer API, so the batch labeler runs unchanged against it:

- `POST /v1beta/models/{model}:batchGenerateContent` with `batch.inputConfig` holding either
  `requests.requests` (inline: `{request, metadata}` items) or `fileName` (a JSONL file
  uploaded through the Files API, one `{"key", "request"}` per line) -> the job as a
  long-running operation `{name: "batches/ID", metadata: {state, output, ...}}`;
- `GET /v1beta/batches`: every job, newest first, in one page;
- `GET /v1beta/batches/{id}`: PENDING, then RUNNING for `polls_until_done` polls, then a final
  state. Inline jobs answer in `output.inlinedResponses.inlinedResponses` (`{response |
  error, metadata}`, in request order); file jobs in `output.responsesFile`, a generated file
  of `{"key", "response" | "error"}` lines;
- `GET /v1beta/files/{id}:download?alt=media`: a generated file's bytes.

Each request of a job is answered when the job finishes, by the same oracle and per-video
faults (`FaultPlan`) as generateContent: `429`/`500`/`503` become that request's `error`,
`malformed`/`schema`/`empty`/`safety` bad replies, and a request whose uploaded video is gone
(deleted or expired, see `expire_files`) a 403 error. Faults of the job itself come from
`job_faults`, one per created job: `expire` (the job ends EXPIRED without output, as a job
that outlived the 24-hour window) or `fail` (FAILED). `hold` keeps every job RUNNING until
`release()`, so a test can stop a client between submitting and collecting.

Requests are logged like the rest of the server (kinds `batch_create`, `batch_list`, `batch_get`,
`file_download`, and one `batch_request` per answered request with its video and turn).
"""

from __future__ import annotations

import datetime
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

# The server imports this module and this module uses the server's request plumbing; a module
# import (attributes looked up at call time) works whichever of the two is imported first.
from preprocess.synthetic import vlm_http
from preprocess.synthetic.vlm_oracle import sha256_bytes

if TYPE_CHECKING:  # typing only: vlm_sim imports this module
    from preprocess.synthetic.vlm_sim import SimulatedVLM

JOB_FAULTS = ("ok", "expire", "fail")

_CREATE_PATH = re.compile(r"^/v1beta/models/([^/:]+):batchGenerateContent$")
_LIST_PATH = "/v1beta/batches"
_GET_PATH = re.compile(r"^/v1beta/batches/([^/:]+)$")
_DOWNLOAD_PATH = re.compile(r"^/v1beta/files/([^/:]+):download$")
_BATCH_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1beta.GenerateContentBatch"


@dataclass
class _Job:
    name: str
    model: str
    display_name: str | None
    requests: list[tuple[str | None, dict[str, Any], dict[str, Any] | None]]  # key, request, meta
    from_file: bool
    fault: str
    created: str
    polls_left: int
    state: str = "BATCH_STATE_PENDING"
    output: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, str] = field(default_factory=dict)
    updated: str = ""


class BatchService:
    """The batch jobs of one `SimulatedVLM`; configure through its attributes.

    Attributes:
      polls_until_done: GETs a job answers RUNNING before it finishes.
      hold: while True, jobs stay RUNNING whatever the polls (see `release`).
      job_faults: one entry (`JOB_FAULTS`) per created job, consumed in order; then "ok".
    """

    def __init__(self, sim: SimulatedVLM) -> None:
        self.sim = sim
        self.polls_until_done = 1
        self.hold = False
        self.job_faults: list[str] = []
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()

    def release(self) -> None:
        """Let held jobs finish at their next poll."""
        self.hold = False

    def expire_files(self) -> list[str]:
        """Drop every uploaded file now, as the API does 48 hours after an upload."""
        with self.sim._lock:
            names = [f.name for f in self.sim._files.values()]
            self.sim._files.clear()
        return names

    # -- routing -----------------------------------------------------------------------------

    def route(
        self, handler: vlm_http.Handler, method: str, path: str, record: vlm_http.RequestRecord
    ) -> bool:
        """Serve the request if it is a batch or download one; False to leave it to the server."""
        if method == "POST" and (match := _CREATE_PATH.match(path)):
            record.kind = "batch_create"
            job = self._create(match.group(1), _body(handler), record)
            vlm_http.send_json(handler, 200, self._operation(job))
        elif method == "GET" and path == _LIST_PATH:
            record.kind = "batch_list"
            with self._lock:
                jobs = list(self._jobs.values())[::-1]  # newest first, one page
            vlm_http.send_json(handler, 200, {"operations": [self._operation(j) for j in jobs]})
        elif method == "GET" and (match := _GET_PATH.match(path)):
            record.kind = "batch_get"
            vlm_http.send_json(handler, 200, self._operation(self._poll(match.group(1))))
        elif method == "GET" and (match := _DOWNLOAD_PATH.match(path)):
            record.kind = "file_download"
            with self.sim._lock:
                stored = self.sim._files.get(match.group(1))
            if stored is None:
                raise vlm_http.ApiError(404, "NOT_FOUND", f"File files/{match.group(1)} not found.")
            _send_bytes(handler, stored.data)
        else:
            return False
        self.sim._finish(record, 200, "answered")
        return True

    # -- jobs --------------------------------------------------------------------------------

    def _create(self, model: str, body: dict[str, Any], record: vlm_http.RequestRecord) -> _Job:
        batch = body.get("batch") or {}
        source = batch.get("inputConfig") or {}
        if "fileName" in source:
            requests = self._read_input_file(source["fileName"])
        else:
            items = (source.get("requests") or {}).get("requests")
            if not isinstance(items, list) or not items:
                raise vlm_http.ApiError(
                    400, "INVALID_ARGUMENT", "batch.inputConfig holds no requests."
                )
            requests = [(None, i.get("request") or {}, i.get("metadata")) for i in items]
        for _, request, _ in requests:
            _check_request(request)
        record.turn = max(_turn(r) for _, r, _ in requests)
        with self._lock:
            fault = self.job_faults.pop(0) if self.job_faults else "ok"
            if fault not in JOB_FAULTS:
                raise ValueError(f"unknown job fault {fault!r}; known: {list(JOB_FAULTS)}")
            job = _Job(
                name=f"batches/{uuid.uuid4().hex[:16]}",
                model=f"models/{model}",
                display_name=batch.get("displayName"),
                requests=requests,
                from_file="fileName" in source,
                fault=fault,
                created=_now(),
                polls_left=self.polls_until_done,
            )
            job.updated = job.created
            self._jobs[job.name.split("/")[1]] = job
        return job

    def _read_input_file(self, name: str) -> list[tuple[str | None, dict[str, Any], None]]:
        with self.sim._lock:
            stored = self.sim._files.get(name.split("/")[-1])
        if stored is None:
            raise vlm_http.ApiError(
                403, "PERMISSION_DENIED", f"File {name} does not exist or is gone."
            )
        requests = []
        for number, line in enumerate(stored.data.decode("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                requests.append((str(item["key"]), dict(item["request"]), None))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise vlm_http.ApiError(
                    400, "INVALID_ARGUMENT", f"{name} line {number}: not a keyed request ({exc})"
                ) from exc
        if not requests:
            raise vlm_http.ApiError(400, "INVALID_ARGUMENT", f"{name} holds no requests.")
        return requests

    def _poll(self, job_id: str) -> _Job:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise vlm_http.ApiError(404, "NOT_FOUND", f"Batch batches/{job_id} not found.")
            if job.state not in ("BATCH_STATE_PENDING", "BATCH_STATE_RUNNING"):
                return job
            if job.state == "BATCH_STATE_PENDING":
                job.state = "BATCH_STATE_RUNNING"
            elif not self.hold and job.polls_left > 0:
                job.polls_left -= 1
            job.updated = _now()
            finish = not self.hold and job.polls_left == 0
        if finish:
            self._finish(job)
        return job

    def _finish(self, job: _Job) -> None:
        if job.fault == "expire":
            job.state = "BATCH_STATE_EXPIRED"
            return
        if job.fault == "fail":
            job.state = "BATCH_STATE_FAILED"
            return
        answers = [self._answer(request) for _, request, _ in job.requests]
        failed = sum("error" in a for a in answers)
        job.stats = {
            "requestCount": str(len(answers)),
            "successfulRequestCount": str(len(answers) - failed),
            "failedRequestCount": str(failed),
        }
        if job.from_file:
            lines = [
                json.dumps({"key": key, **answer})
                for (key, _, _), answer in zip(job.requests, answers, strict=True)
            ]
            job.output = {"responsesFile": self._store_output("\n".join(lines) + "\n")}
        else:
            items = [
                {**answer, **({"metadata": meta} if meta else {})}
                for (_, _, meta), answer in zip(job.requests, answers, strict=True)
            ]
            job.output = {"inlinedResponses": {"inlinedResponses": items}}
        job.state = "BATCH_STATE_SUCCEEDED"

    def _answer(self, request: dict[str, Any]) -> dict[str, Any]:
        """One request's `{"response": ...}` or `{"error": ...}`, as generateContent would."""
        record = self.sim._record(vlm_http.RequestRecord(kind="batch_request", turn=_turn(request)))
        try:
            video, record.video_source = self.sim._find_video(request["contents"])
        except vlm_http.ApiError as err:
            self.sim._finish(record, err.code, "rejected")
            return {"error": {"code": err.code, "message": err.message, "status": err.status}}
        record.video_sha = sha256_bytes(video)
        record.fault = self.sim.faults.next_fault(record.video_sha)
        if record.fault == "echo_key":  # the batch has no request headers to echo: a plain 400
            record.fault = "400"
            self.sim._finish(record, 400, "rejected")
            error = {"code": 400, "message": "Request contains an invalid argument."}
            return {"error": {**error, "status": "INVALID_ARGUMENT"}}
        if record.fault == "slow":  # there is no client waiting on a batch request
            record.fault = "ok"
        status, payload = self.sim._generate_reply(record, video, request)
        self.sim._finish(record, status, "answered" if status == 200 else "rejected")
        if status != 200:
            return {"error": payload["error"]}
        return {"response": payload}

    def _store_output(self, text: str) -> str:
        file_id = uuid.uuid4().hex[:12]
        stored = vlm_http.StoredFile(
            name=f"files/{file_id}",
            mime_type="application/jsonl",
            display_name="batch results",
            data=text.encode("utf-8"),
            polls_until_active=0,
        )
        with self.sim._lock:
            self.sim._files[file_id] = stored
        return stored.name

    def _operation(self, job: _Job) -> dict[str, Any]:
        metadata: dict[str, Any] = {
            "@type": _BATCH_TYPE,
            "name": job.name,
            "model": job.model,
            "state": job.state,
            "createTime": job.created,
            "updateTime": job.updated,
        }
        if job.display_name:
            metadata["displayName"] = job.display_name
        if job.output:
            metadata["output"] = job.output
        if job.stats:
            metadata["batchStats"] = job.stats
        done = job.state not in ("BATCH_STATE_PENDING", "BATCH_STATE_RUNNING")
        operation: dict[str, Any] = {"name": job.name, "metadata": metadata, "done": done}
        if job.state == "BATCH_STATE_FAILED":
            operation["error"] = {"code": 13, "message": "The batch failed (simulated)."}
        return operation


def _check_request(request: dict[str, Any]) -> None:
    contents = request.get("contents")
    if not isinstance(contents, list) or not contents:
        raise vlm_http.ApiError(400, "INVALID_ARGUMENT", "every request needs non-empty contents.")
    config = request.get("generationConfig") or request.get("generation_config") or {}
    if config.get("responseMimeType") != "application/json":
        raise vlm_http.ApiError(
            400,
            "INVALID_ARGUMENT",
            "This simulation answers only structured requests (responseMimeType "
            "application/json with a response schema).",
        )


def _turn(request: dict[str, Any]) -> int:
    return sum(1 for c in request.get("contents") or [] if c.get("role", "user") == "user")


def _body(handler: vlm_http.Handler) -> dict[str, Any]:
    return vlm_http.read_json(handler)


def _send_bytes(handler: vlm_http.Handler, data: bytes) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "application/octet-stream")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
    handler.wfile.flush()


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
