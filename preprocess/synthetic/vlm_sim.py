"""A SIMULATED vision-language model server for offline tests and the demo. It is not Gemini.

It speaks the parts of the Gemini REST API that the labeler uses through the real google-genai
client, so the labeler's request, upload, retry, parsing and caching code runs unchanged
against it:

- `POST /v1beta/models/{model}:generateContent` -> `candidates[0].content.parts[0].text` (the
  structured JSON answer), `finishReason`, `usageMetadata`, `modelVersion`;
- the Files API resumable upload (`POST /upload/v1beta/files` with `X-Goog-Upload-Command:
  start`, then `upload, finalize` chunks at the URL returned in `x-goog-upload-url`),
  `GET /v1beta/files/{id}` (PROCESSING for a few polls, then ACTIVE) and `DELETE`;
- the Batch API and generated-file downloads, served by `preprocess.synthetic.vlm_batch`
  (`sim.batches`).

Answers come from the noisy oracle of `preprocess.synthetic.vlm_oracle`, not from looking at the
video: for a video whose content hash (sha256 of the bytes) has a known label, it answers
the true label with probability `accuracy` and the wrong one otherwise, deterministically
per (seed, video, turn), with canned observations and reasoning and a confidence that is
higher on correct answers on average. Unknown videos get a coin flip at the iMiGUE base
rate with low confidence. Token counts are synthetic.

Faults (`vlm_oracle.FaultPlan`) are injected per request, from a per-video script, a global
script or seeded rates:
`429`, `500`, `503`, `malformed` (truncated JSON text), `schema` (JSON that breaks the schema),
`empty` (no candidates), `safety` (finish reason SAFETY, no content), `slow` (answer only after
`slow_s`, longer than a client's time-out) and `echo_key` (a 400 whose message repeats the
API key, to test that clients scrub it). A request whose client hangs up before the answer is
logged as `abandoned`; the request log is what tests count.

Every response says what it is: the `Server` header is `simulated-vlm/...` and `modelVersion`
is `simulated-vlm`.

    python -m preprocess.synthetic.vlm_sim --port 8765 --truth truth.json --accuracy 0.8
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from preprocess.synthetic import vlm_batch, vlm_http
from preprocess.synthetic.vlm_oracle import FAULTS, FaultPlan, Oracle, load_truth, sha256_bytes

logger = logging.getLogger(__name__)

SIMULATED_MODEL_VERSION = "simulated-vlm"

_GENERATE_PATH = re.compile(r"^/(v1|v1beta)/models/([^/:]+):generateContent$")
_FILE_PATH = re.compile(r"^/v1beta/files/([^/]+)$")
_UPLOAD_PATH = "/upload/v1beta/files"


class SimulatedVLM:
    """The simulation server; start with `with SimulatedVLM(...) as sim:` and use `sim.base_url`.

    Args:
      truth: sha256 of video bytes -> 1 win / 0 lose, for the oracle.
      accuracy: probability that an answer about a video with known truth is right.
      seed: seeds the oracle.
      faults: fault injection plan (see `FaultPlan`).
      api_key: when set, requests must carry it (`x-goog-api-key` or `?key=`), as Gemini
        requires a valid key; a wrong key gets Gemini's 400 INVALID_ARGUMENT.
      latency_s: every generateContent answer waits this long (a slow model).
      slow_s: extra wait of the `slow` fault.
      processing_polls: how many file GETs answer PROCESSING before the file is ACTIVE.
    """

    def __init__(
        self,
        truth: Mapping[str, int] | None = None,
        *,
        accuracy: float = 0.8,
        seed: int = 0,
        faults: FaultPlan | None = None,
        api_key: str | None = None,
        latency_s: float = 0.0,
        slow_s: float = 30.0,
        processing_polls: int = 1,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.oracle = Oracle(truth or {}, accuracy, seed)
        self.faults = faults or FaultPlan()
        self._api_key = api_key
        self.latency_s = latency_s
        self.slow_s = slow_s
        self.processing_polls = processing_polls
        self._address = (host, port)
        self._lock = threading.Lock()
        self._log: list[vlm_http.RequestRecord] = []
        self._files: dict[str, vlm_http.StoredFile] = {}
        self._uploads: dict[str, vlm_http.PendingUpload] = {}
        self._in_flight = 0
        self.max_in_flight = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.batches = vlm_batch.BatchService(self)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> SimulatedVLM:
        server = ThreadingHTTPServer(self._address, vlm_http.Handler)
        server.daemon_threads = True
        server.sim = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> SimulatedVLM:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the simulated VLM server is not running; call start()")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- request log -------------------------------------------------------------------------

    @property
    def log(self) -> list[vlm_http.RequestRecord]:
        with self._lock:
            return list(self._log)

    def generate_counts(self, outcome: str | None = None) -> Counter[str]:
        """Number of generateContent requests per video hash (optionally of one outcome)."""
        return Counter(
            r.video_sha
            for r in self.log
            if r.kind == "generate" and (outcome is None or r.outcome == outcome)
        )

    def in_flight(self) -> list[vlm_http.RequestRecord]:
        return [r for r in self.log if r.outcome == "in_flight" and r.kind == "generate"]

    def _record(self, record: vlm_http.RequestRecord) -> vlm_http.RequestRecord:
        with self._lock:
            self._log.append(record)
        return record

    # -- request handling --------------------------------------------------------------------

    def _handle(self, handler: vlm_http.Handler, method: str) -> None:
        url = urlsplit(handler.path)
        query = parse_qs(url.query)
        # Read the whole body first: on a kept-alive connection an unread body would be taken
        # for the next request.
        try:
            handler.body = handler.rfile.read(vlm_http.content_length(handler))
        except vlm_http.ApiError as err:
            handler.close_connection = True
            vlm_http.send_json(
                handler, err.code, {"error": {"code": err.code, "message": err.message}}
            )
            return
        if method == "POST" and url.path == _UPLOAD_PATH and "upload_id" in query:
            self._upload_chunk(handler, query["upload_id"][0])
            return
        record = self._record(vlm_http.RequestRecord(kind="other"))
        try:
            self._check_key(handler, query)
            if self.batches.route(handler, method, url.path, record):
                return
            generate = _GENERATE_PATH.match(url.path)
            file_match = _FILE_PATH.match(url.path)
            if method == "POST" and generate:
                record.kind = "generate"
                self._generate(handler, record)
            elif method == "POST" and url.path == _UPLOAD_PATH:
                record.kind = "upload_start"
                self._upload_start(handler, record)
            elif method == "GET" and file_match:
                record.kind = "file_get"
                vlm_http.send_json(handler, 200, self._file_json(file_match.group(1), poll=True))
                self._finish(record, 200, "answered")
            elif method == "DELETE" and file_match:
                record.kind = "file_delete"
                with self._lock:
                    if self._files.pop(file_match.group(1), None) is None:
                        raise vlm_http.ApiError(404, "NOT_FOUND", f"File {url.path} not found.")
                vlm_http.send_json(handler, 200, {})
                self._finish(record, 200, "answered")
            else:
                raise vlm_http.ApiError(
                    404, "NOT_FOUND", f"{method} {url.path} is not served here."
                )
        except vlm_http.ApiError as err:
            body = {"error": {"code": err.code, "message": err.message, "status": err.status}}
            vlm_http.send_json(handler, err.code, body)
            self._finish(record, err.code, "rejected")

    def _finish(self, record: vlm_http.RequestRecord, status: int | None, outcome: str) -> None:
        with self._lock:
            record.status, record.outcome, record.finished = status, outcome, time.monotonic()

    def _check_key(self, handler: vlm_http.Handler, query: dict[str, list[str]]) -> None:
        sent = handler.headers.get("x-goog-api-key") or (query.get("key") or [None])[0]
        if not sent:
            raise vlm_http.ApiError(
                403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers."
            )
        if self._api_key is not None and sent != self._api_key:
            raise vlm_http.ApiError(
                400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid key."
            )

    def _generate(self, handler: vlm_http.Handler, record: vlm_http.RequestRecord) -> None:
        body = vlm_http.read_json(handler)
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            raise vlm_http.ApiError(400, "INVALID_ARGUMENT", "contents must be a non-empty list.")
        config = body.get("generationConfig") or {}
        if config.get("responseMimeType") != "application/json" or not (
            config.get("responseSchema") or config.get("responseJsonSchema")
        ):
            raise vlm_http.ApiError(
                400,
                "INVALID_ARGUMENT",
                "This simulation answers only structured requests "
                "(responseMimeType application/json with a response schema).",
            )
        video, record.video_source = self._find_video(contents)
        record.video_sha = sha256_bytes(video)
        record.turn = sum(1 for c in contents if c.get("role", "user") == "user")
        record.fault = self.faults.next_fault(record.video_sha)
        if record.fault == "echo_key":
            sent = handler.headers.get("x-goog-api-key", "")
            raise vlm_http.ApiError(400, "INVALID_ARGUMENT", f"API key {sent} is not allowed here.")

        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            wait = self.latency_s + (self.slow_s if record.fault == "slow" else 0.0)
            if not vlm_http.wait_unless_hung_up(handler.connection, wait):
                handler.close_connection = True
                self._finish(record, None, "abandoned")
                return
            status, payload = self._generate_reply(record, video, body)
        finally:
            with self._lock:
                self._in_flight -= 1
        try:
            vlm_http.send_json(handler, status, payload)
        except OSError:
            self._finish(record, None, "abandoned")
            return
        self._finish(record, status, "answered" if status == 200 else "rejected")

    def _generate_reply(
        self, record: vlm_http.RequestRecord, video: bytes, body: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        fault = record.fault
        if fault in ("429", "500", "503"):
            status, message = {
                "429": ("RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."),
                "500": ("INTERNAL", "An internal error has occurred."),
                "503": ("UNAVAILABLE", "The model is overloaded. Please try again later."),
            }[fault]
            return int(fault), {"error": {"code": int(fault), "message": message, "status": status}}
        answer = self.oracle.answer(record.video_sha or "", record.turn or 1)
        text = json.dumps(answer)
        prompt_chars = sum(len(p.get("text", "")) for c in body["contents"] for p in c["parts"])
        usage = {
            "promptTokenCount": 258 + len(video) // 1024 + prompt_chars // 4,
            "candidatesTokenCount": len(text) // 4,
            "thoughtsTokenCount": 128,
        }
        usage["totalTokenCount"] = sum(usage.values())
        reply: dict[str, Any] = {
            "usageMetadata": usage,
            "modelVersion": SIMULATED_MODEL_VERSION,
            "responseId": uuid.uuid4().hex,
        }
        if fault == "empty":
            reply["candidates"] = []
            return 200, reply
        if fault == "safety":
            reply["candidates"] = [
                {
                    "finishReason": "SAFETY",
                    "index": 0,
                    "safetyRatings": [
                        {"category": "HARM_CATEGORY_HARASSMENT", "probability": "HIGH"}
                    ],
                }
            ]
            return 200, reply
        if fault == "malformed":
            text = text[: len(text) // 2]
        elif fault == "schema":
            text = json.dumps({**answer, "label": "draw", "confidence": 1.7})
        reply["candidates"] = [
            {
                "content": {"role": "model", "parts": [{"text": text}]},
                "finishReason": "STOP",
                "index": 0,
            }
        ]
        return 200, reply

    def _find_video(self, contents: list[dict[str, Any]]) -> tuple[bytes, str]:
        for content in contents:
            for part in content.get("parts") or []:
                inline = part.get("inlineData") or part.get("inline_data")
                if inline:
                    try:
                        # google-genai sends URL-safe base64; the REST API takes either.
                        data = inline["data"].replace("-", "+").replace("_", "/")
                        return base64.b64decode(data, validate=True), "inline"
                    except (KeyError, ValueError) as exc:
                        raise vlm_http.ApiError(
                            400, "INVALID_ARGUMENT", "bad inlineData.data"
                        ) from exc
                file_data = part.get("fileData") or part.get("file_data")
                if file_data:
                    uri = file_data.get("fileUri") or file_data.get("file_uri") or ""
                    file_id = uri.rstrip("/").rsplit("/", 1)[-1]
                    with self._lock:
                        stored = self._files.get(file_id)
                    if stored is None:
                        raise vlm_http.ApiError(
                            403, "PERMISSION_DENIED", f"File {file_id} does not exist or is gone."
                        )
                    if stored.polls_until_active > 0:
                        raise vlm_http.ApiError(
                            400,
                            "FAILED_PRECONDITION",
                            f"The File {file_id} is not in an ACTIVE state.",
                        )
                    return stored.data, "file"
        raise vlm_http.ApiError(
            400, "INVALID_ARGUMENT", "no video part (inlineData or fileData) found."
        )

    def _upload_start(self, handler: vlm_http.Handler, record: vlm_http.RequestRecord) -> None:
        headers = handler.headers
        if headers.get("X-Goog-Upload-Protocol") != "resumable" or (
            headers.get("X-Goog-Upload-Command") != "start"
        ):
            raise vlm_http.ApiError(400, "INVALID_ARGUMENT", "expected a resumable upload start.")
        meta = (vlm_http.read_json(handler).get("file") or {}) if handler.body else {}
        try:
            size = int(headers["X-Goog-Upload-Header-Content-Length"])
        except (KeyError, ValueError) as exc:
            raise vlm_http.ApiError(
                400, "INVALID_ARGUMENT", "missing upload content length."
            ) from exc
        upload_id = uuid.uuid4().hex[:16]
        with self._lock:
            self._uploads[upload_id] = vlm_http.PendingUpload(
                size=size,
                mime_type=headers.get("X-Goog-Upload-Header-Content-Type", "video/mp4"),
                display_name=meta.get("displayName") or meta.get("display_name"),
            )
        vlm_http.send_json(
            handler,
            200,
            {},
            {
                "x-goog-upload-url": f"{self.base_url}{_UPLOAD_PATH}?upload_id={upload_id}",
                "x-goog-upload-status": "active",
            },
        )
        self._finish(record, 200, "answered")

    def _upload_chunk(self, handler: vlm_http.Handler, upload_id: str) -> None:
        record = self._record(vlm_http.RequestRecord(kind="upload_chunk"))
        chunk = handler.body
        command = handler.headers.get("X-Goog-Upload-Command", "")
        with self._lock:
            pending = self._uploads.get(upload_id)
            offset_ok = pending is not None and handler.headers.get("X-Goog-Upload-Offset") == str(
                len(pending.data)
            )
            if offset_ok:
                pending.data.extend(chunk)
        # The client retries chunks that lack x-goog-upload-status, so every answer carries it.
        if not offset_ok:
            error = {"error": {"code": 400, "message": "bad upload offset", "status": "INVALID"}}
            vlm_http.send_json(handler, 400, error, {"x-goog-upload-status": "final"})
            self._finish(record, 400, "rejected")
            return
        if "finalize" not in command:
            vlm_http.send_json(handler, 200, {}, {"x-goog-upload-status": "active"})
            self._finish(record, 200, "answered")
            return
        file_id = uuid.uuid4().hex[:12]
        with self._lock:
            del self._uploads[upload_id]
            self._files[file_id] = vlm_http.StoredFile(
                name=f"files/{file_id}",
                mime_type=pending.mime_type,
                display_name=pending.display_name,
                data=bytes(pending.data),
                polls_until_active=self.processing_polls,
            )
        vlm_http.send_json(
            handler, 200, {"file": self._file_json(file_id)}, {"x-goog-upload-status": "final"}
        )
        self._finish(record, 200, "answered")

    def _file_json(self, file_id: str, poll: bool = False) -> dict[str, Any]:
        with self._lock:
            stored = self._files.get(file_id)
            if stored is None:
                raise vlm_http.ApiError(403, "PERMISSION_DENIED", f"File {file_id} does not exist.")
            if poll and stored.polls_until_active > 0:
                stored.polls_until_active -= 1
                state = "PROCESSING"
            else:
                state = "PROCESSING" if stored.polls_until_active > 0 else "ACTIVE"
        meta: dict[str, Any] = {
            "name": stored.name,
            "mimeType": stored.mime_type,
            "sizeBytes": str(len(stored.data)),
            "sha256Hash": base64.b64encode(stored.sha.encode()).decode(),
            "uri": f"{self.base_url}/v1beta/{stored.name}",
            "state": state,
            "source": "UPLOADED",
        }
        if stored.display_name:
            meta["displayName"] = stored.display_name
        return meta


def _parse_rates(items: list[str]) -> dict[str, float]:
    rates = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"--fault-rate {item!r}: expected NAME=PROBABILITY")
        rates[name] = float(value)
    return rates


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m preprocess.synthetic.vlm_sim",
        description="Simulated VLM server (a noisy oracle, not Gemini) for offline labelling.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--truth", type=Path, help="JSON {sha256 of video bytes: win|lose|1|0}")
    parser.add_argument("--accuracy", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per answer")
    parser.add_argument(
        "--fault-rate",
        action="append",
        default=[],
        metavar="NAME=P",
        help=f"inject a fault with probability P per request; names: {', '.join(FAULTS[1:])}",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sim = SimulatedVLM(
        load_truth(args.truth) if args.truth else {},
        accuracy=args.accuracy,
        seed=args.seed,
        faults=FaultPlan(rates=_parse_rates(args.fault_rate), seed=args.seed),
        latency_s=args.latency,
        host=args.host,
        port=args.port,
    )
    with sim:
        print(f"simulated VLM (not Gemini) listening on {sim.base_url}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
