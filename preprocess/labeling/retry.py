"""Retrying the labeler's requests: which errors are worth another try, and when to try again.

429, 408, 5xx, time-outs and dropped connections are retried with exponential backoff and
jitter, up to `max_attempts` tries (the labeler switches google-genai's own retries off, so
these are the only ones); other API errors fail at once. Each try holds one of `concurrency`
request slots, released while waiting to retry, so at most that many requests are in flight.
A request that fails for good raises `RequestFailed` with its failure reason; an exception
that comes from neither the transport nor the API is a bug and propagates unchanged.
"""

from __future__ import annotations

import importlib
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from google.genai import errors

logger = logging.getLogger(__name__)

RETRYABLE_HTTP_CODES = frozenset({408, 429, 500, 502, 503, 504})

T = TypeVar("T")


class RequestFailed(Exception):
    """A request (or a turn) that failed for good: the failure reason, what went wrong, and
    the tries it took."""

    def __init__(self, reason: str, detail: str, attempts: int = 1) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.attempts = reason, detail, attempts


def _transport_errors() -> tuple[tuple[type[Exception], ...], tuple[type[Exception], ...]]:
    """(time-out, other transport) exception classes of the HTTP stacks google-genai may use.

    google-genai sends through httpx2 (a fork with its own exception classes) when that is
    installed and through httpx otherwise, so both are recognised.
    """
    timeouts, transports = [], []
    for name in ("httpx", "httpx2"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        timeouts.append(module.TimeoutException)
        transports.append(module.TransportError)
    return tuple(timeouts), tuple(transports)


_TIMEOUT_ERRORS, _TRANSPORT_ERRORS = _transport_errors()


def classify(exc: Exception) -> tuple[str, bool] | None:
    """(failure reason, retryable) for errors of the transport or the API; None for others."""
    if isinstance(exc, errors.APIError):
        if exc.code == 429:
            return "rate_limited", True
        if exc.code in RETRYABLE_HTTP_CODES:
            return ("timeout" if exc.code in (408, 504) else "server_error"), True
        return "api_error", False
    if isinstance(exc, _TIMEOUT_ERRORS):
        return "timeout", True
    if isinstance(exc, _TRANSPORT_ERRORS):
        return "network", True
    return None


def _unchanged(text: str) -> str:
    return text


class RetryingSender:
    """Sends requests through `concurrency` slots, retrying transient errors; thread-safe.

    `scrub` is applied to every error text before it is logged or raised (the labeler's
    removes the API key).
    """

    def __init__(
        self,
        *,
        concurrency: int,
        max_attempts: int,
        backoff_initial_s: float,
        backoff_max_s: float,
        scrub: Callable[[str], str] = _unchanged,
        seed: int | None = None,
    ) -> None:
        self.max_attempts = max_attempts
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._scrub = scrub
        self._slots = threading.BoundedSemaphore(concurrency)
        self._jitter = random.Random(seed)
        self._lock = threading.Lock()

    def send(self, what: str, call: Callable[[], T]) -> T:
        """`call()`'s result; `RequestFailed` once it failed for good. `what` names it in logs."""
        attempts = self.max_attempts
        for attempt in range(1, attempts + 1):
            try:
                with self._slots:
                    return call()
            except Exception as exc:
                kind = classify(exc)
                if kind is None:
                    raise
                reason, retryable = kind
                detail = self._scrub(f"{type(exc).__name__}: {exc}")
                if not retryable or attempt == attempts:
                    raise RequestFailed(reason, detail, attempt) from None
                delay = self.backoff(attempt)
                logger.warning(
                    "%s: %s (try %d/%d), retrying in %.2f s",
                    what,
                    detail,
                    attempt,
                    attempts,
                    delay,
                )
                time.sleep(delay)
        raise AssertionError("unreachable")

    def send_once(self, call: Callable[[], T]) -> T:
        """`call()` in a request slot, without retries (for clean-up that may fail)."""
        with self._slots:
            return call()

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with 'equal jitter': half fixed, half random."""
        cap = min(self.backoff_max_s, self.backoff_initial_s * 2 ** (attempt - 1))
        with self._lock:
            return cap / 2 + self._jitter.uniform(0, cap / 2)
