"""HTTP plumbing of the SIMULATED VLM (not Gemini): the request log entry, stored files,
API errors in the Gemini error shape, JSON bodies in and out, and the request handler that
hands every request to its server's `SimulatedVLM`. Shared by `vlm_sim` and `vlm_batch`.
"""

from __future__ import annotations

import json
import logging
import select
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from preprocess.synthetic.vlm_oracle import sha256_bytes

logger = logging.getLogger("preprocess.synthetic.vlm_sim")

SERVER_HEADER = "simulated-vlm/1 (simulation; not Gemini)"


@dataclass
class RequestRecord:
    """One request the server received (the tests' request log)."""

    kind: str  # generate | upload_start | upload_chunk | file_get | file_delete | other
    video_sha: str | None = None
    turn: int | None = None
    video_source: str | None = None  # inline | file
    fault: str | None = None
    status: int | None = None
    outcome: str = "in_flight"  # answered | abandoned | rejected | in_flight
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None


@dataclass
class StoredFile:
    name: str
    mime_type: str
    display_name: str | None
    data: bytes
    polls_until_active: int

    @property
    def sha(self) -> str:
        return sha256_bytes(self.data)


@dataclass
class PendingUpload:
    size: int
    mime_type: str
    display_name: str | None
    data: bytearray = field(default_factory=bytearray)


class ApiError(Exception):
    def __init__(self, code: int, status: str, message: str) -> None:
        super().__init__(message)
        self.code, self.status, self.message = code, status, message


class Handler(BaseHTTPRequestHandler):
    server_version = SERVER_HEADER
    sys_version = ""
    protocol_version = "HTTP/1.1"
    body = b""

    def do_POST(self) -> None:  # noqa: N802 (http.server naming)
        self.server.sim._handle(self, "POST")  # type: ignore[attr-defined]

    def do_GET(self) -> None:  # noqa: N802
        self.server.sim._handle(self, "GET")  # type: ignore[attr-defined]

    def do_DELETE(self) -> None:  # noqa: N802
        self.server.sim._handle(self, "DELETE")  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (base signature)
        logger.debug("simulated VLM: " + format, *args)


def content_length(handler: BaseHTTPRequestHandler) -> int:
    try:
        return int(handler.headers.get("Content-Length") or 0)
    except ValueError as exc:
        raise ApiError(400, "INVALID_ARGUMENT", "bad Content-Length.") from exc


def read_json(handler: Handler) -> dict[str, Any]:
    try:
        body = json.loads(handler.body)
    except json.JSONDecodeError as exc:
        raise ApiError(400, "INVALID_ARGUMENT", f"request body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "INVALID_ARGUMENT", "request body must be a JSON object.")
    return body


def send_json(
    handler: BaseHTTPRequestHandler,
    status: int,
    payload: dict[str, Any],
    headers: Mapping[str, str] | None = None,
) -> None:
    data = json.dumps(payload).encode("utf-8")
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json; charset=UTF-8")
    handler.send_header("Content-Length", str(len(data)))
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    handler.end_headers()
    handler.wfile.write(data)
    handler.wfile.flush()


def wait_unless_hung_up(conn: socket.socket, seconds: float) -> bool:
    """Sleep `seconds`; return False early if the client closed the connection meanwhile.

    The request body has been read, so the socket turns readable only when the client hangs
    up (time-out, kill): peeking then returns b"".
    """
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([conn], [], [], min(left, 0.5))
        if readable:
            try:
                if conn.recv(1, socket.MSG_PEEK) == b"":
                    return False
            except OSError:
                return False
            time.sleep(min(left, 0.01))  # unexpected early bytes: don't spin on them
    return True
