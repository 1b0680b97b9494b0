"""preprocess.labeling.retry: which errors are retried, how long it waits, when it gives up."""

from __future__ import annotations

import httpx
import pytest
from google.genai import errors

from preprocess.labeling.retry import RequestFailed, RetryingSender, classify


def api_error(code: int) -> errors.APIError:
    return errors.APIError(code, {"error": {"code": code, "message": "m", "status": "S"}})


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (api_error(429), ("rate_limited", True)),
        (api_error(503), ("server_error", True)),
        (api_error(504), ("timeout", True)),
        (api_error(403), ("api_error", False)),
        (httpx.ReadTimeout("slow"), ("timeout", True)),
        (httpx.ConnectError("refused"), ("network", True)),
        (ValueError("a bug"), None),
    ],
)
def test_classify(exc, expected):
    assert classify(exc) == expected


def sender(**kw) -> RetryingSender:
    settings = {"concurrency": 1, "max_attempts": 3, "backoff_initial_s": 0.0}
    return RetryingSender(**(settings | {"backoff_max_s": 0.0} | kw))


def failing(*excs: Exception, result: str = "ok"):
    calls = []

    def call():
        calls.append(1)
        if len(calls) <= len(excs):
            raise excs[len(calls) - 1]
        return result

    return call, calls


def test_transient_errors_are_retried_until_an_answer():
    call, calls = failing(api_error(429), httpx.ReadTimeout("slow"))
    assert sender().send("test", call) == "ok"
    assert len(calls) == 3


def test_gives_up_after_max_attempts_and_scrubs_the_detail():
    call, calls = failing(*[api_error(500)] * 5)
    with pytest.raises(RequestFailed) as failed:
        sender(scrub=lambda text: text.replace("500", "[code]")).send("test", call)
    assert (failed.value.reason, failed.value.attempts, len(calls)) == ("server_error", 3, 3)
    assert "500" not in failed.value.detail and "[code]" in failed.value.detail


def test_permanent_errors_fail_at_once_and_bugs_propagate():
    call, calls = failing(api_error(401))
    with pytest.raises(RequestFailed, match="api_error"):
        sender().send("test", call)
    assert len(calls) == 1
    call, calls = failing(KeyError("bug"))
    with pytest.raises(KeyError):
        sender().send("test", call)
    assert len(calls) == 1


def test_backoff_doubles_with_half_of_it_random_up_to_the_cap():
    s = sender(backoff_initial_s=1.0, backoff_max_s=5.0, seed=0)
    for attempt, cap in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (9, 5.0)]:
        delays = [s.backoff(attempt) for _ in range(50)]
        assert min(delays) >= cap / 2 and max(delays) <= cap
        assert len(set(delays)) > 1  # jittered
