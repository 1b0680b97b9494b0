"""Video pseudo-labels (win/lose) from a vision-language model through google-genai.

For every video the labeler holds one two-turn conversation with the model (Gemini 2.5 Pro by
default; any endpoint that speaks the Gemini REST API through `base_url`, such as
`preprocess.vlm_sim`): a Chain-of-Thought turn that observes and judges, then a Reflection turn
that critiques the first answer and gives the final one (texts in `preprocess.prompts`). Both
answers are structured JSON (`prompts.LabelAnswer`), temperature 0.

- The video goes inline when it is at most `inline_limit_bytes`, otherwise through the Files
  API (resumable upload, poll until ACTIVE, reference by URI, delete afterwards).
- Results are cached per (sha256 of the video bytes, model, prompt version, endpoint host):
  one JSON file per key, written atomically. The first turn's answer is checkpointed too, so
  a run that is killed between the turns pays only for the second turn on the rerun.
- At most `concurrency` requests are in flight. 429, 408, 5xx, time-outs and dropped
  connections are retried with exponential backoff and jitter (google-genai's own retries are
  switched off, so these are the only ones). A reply that stays bad (malformed JSON, blocked,
  empty, schema-invalid, truncated) after `bad_response_attempts` becomes a `Failure` for that
  video, recorded in the failures file; the batch goes on.
- The API key comes from GOOGLE_API_KEY or GEMINI_API_KEY (google-genai's precedence) and is
  scrubbed from every error text the labeler records or logs.

`python -m preprocess.gemini --videos DIR --cache-dir DIR [--dry-run]`; the same arguments are
available to another CLI through `add_arguments` and `main`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import dataclasses
import functools
import hashlib
import importlib
import json
import logging
import os
import random
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from google import genai
from google.genai import errors, types
from pydantic import ValidationError

from preprocess import prompts

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "gemini-2.5-pro"
API_KEY_ENV_VARS = ("GOOGLE_API_KEY", "GEMINI_API_KEY")
RETRYABLE_HTTP_CODES = frozenset({408, 429, 500, 502, 503, 504})
# A Gemini request carries at most 20 MB; inline bytes travel base64-encoded (4/3 larger),
# so 14 MiB of video is the most that stays safely under the limit with the prompt text.
DEFAULT_INLINE_LIMIT_BYTES = 14 * 1024 * 1024
# MIME types the Gemini API accepts for video, by file suffix.
VIDEO_MIME_TYPES = {
    ".mp4": "video/mp4",
    ".mpeg": "video/mpeg",
    ".mpg": "video/mpg",
    ".mov": "video/mov",
    ".avi": "video/avi",
    ".flv": "video/x-flv",
    ".webm": "video/webm",
    ".wmv": "video/wmv",
    ".3gp": "video/3gpp",
}
_BLOCKING_FINISH_REASONS = frozenset(
    {
        types.FinishReason.SAFETY,
        types.FinishReason.RECITATION,
        types.FinishReason.BLOCKLIST,
        types.FinishReason.PROHIBITED_CONTENT,
        types.FinishReason.SPII,
        types.FinishReason.LANGUAGE,
        types.FinishReason.OTHER,
    }
)

# --- cost estimate (dry run only) -----------------------------------------------------------
# An ESTIMATE, not a quote. Gemini 2.5 Pro standard-tier list prices, USD per 1M tokens: input
# 1.25 for prompts up to 200k tokens, 2.50 above; output (thinking included) 10.00 / 15.00.
# Video costs ~300 tokens per second at the default media resolution (258 per frame sampled
# at 1 fps + 32 for audio) and ~100 at low resolution (66 + 32). Each reply is assumed to be
# ~700 answer tokens plus ~2,000 thinking tokens. The second turn resends the video and the
# first turn, so a video is paid for twice as input.


@dataclass(frozen=True)
class Pricing:
    input_per_m: float
    input_per_m_long: float
    output_per_m: float
    output_per_m_long: float
    long_prompt_tokens: int = 200_000

    def cost(self, prompt_tokens: int, output_tokens: int) -> float:
        long = prompt_tokens > self.long_prompt_tokens
        rate_in = self.input_per_m_long if long else self.input_per_m
        rate_out = self.output_per_m_long if long else self.output_per_m
        return (prompt_tokens * rate_in + output_tokens * rate_out) / 1e6


PRICES = {"gemini-2.5-pro": Pricing(1.25, 2.50, 10.0, 15.0)}
VIDEO_TOKENS_PER_SECOND = {"default": 300, "low": 100}
ASSUMED_ANSWER_TOKENS = 700
ASSUMED_THINKING_TOKENS = 2000
TEXT_CHARS_PER_TOKEN = 4


class MissingAPIKeyError(RuntimeError):
    pass


@dataclass(frozen=True)
class LabelerConfig:
    """Settings of one labelling run (everything but the API key, which never sits here)."""

    cache_dir: Path
    model: str = DEFAULT_MODEL
    base_url: str | None = None
    api_version: str = "v1beta"
    inline_limit_bytes: int = DEFAULT_INLINE_LIMIT_BYTES
    timeout_s: float = 600.0  # per HTTP request; Pro can think for minutes over a long video
    max_attempts: int = 6  # per request, for 429 / 5xx / time-outs
    backoff_initial_s: float = 2.0
    backoff_max_s: float = 60.0
    bad_response_attempts: int = 2  # per turn, for malformed / blocked / empty replies
    concurrency: int = 4
    file_poll_interval_s: float = 2.0
    file_active_timeout_s: float = 600.0
    media_resolution: str = "default"  # or "low": ~3x fewer video tokens
    delete_uploads: bool = True
    failures_path: Path | None = None  # default: cache_dir / "failures.json"

    def __post_init__(self) -> None:
        object.__setattr__(self, "cache_dir", Path(self.cache_dir))
        positive = ("timeout_s", "max_attempts", "bad_response_attempts", "concurrency")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"LabelerConfig.{name} must be > 0, got {getattr(self, name)}")
        for name in ("inline_limit_bytes", "backoff_initial_s", "backoff_max_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"LabelerConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.media_resolution not in VIDEO_TOKENS_PER_SECOND:
            raise ValueError(
                f"LabelerConfig.media_resolution {self.media_resolution!r} is not one of "
                f"{sorted(VIDEO_TOKENS_PER_SECOND)}"
            )

    @property
    def endpoint(self) -> str:
        """The cache's name for where answers come from: the Gemini API or another host.

        Part of the cache key, so answers of a simulation or another service never pass for
        the API's under the same model name. The port is left out: a local simulation
        started on a fresh port still finds its own answers.
        """
        if self.base_url is None:
            return "gemini-api"
        return urlsplit(self.base_url).hostname or self.base_url

    @property
    def failures_file(self) -> Path:
        return self.failures_path or self.cache_dir / "failures.json"


@dataclass(frozen=True)
class VideoItem:
    video_id: str
    path: Path
    label: int | None = None  # ground truth when the corpus has it: 1 win, 0 lose

    @classmethod
    def of(cls, item: VideoItem | Sequence[Any]) -> VideoItem:
        if isinstance(item, VideoItem):
            return item
        video_id, path, *rest = item
        label = rest[0] if rest else None
        if label is not None and label not in (0, 1):
            raise ValueError(f"video {video_id}: ground-truth label {label!r} is not 0, 1 or None")
        return cls(str(video_id), Path(path), label)


@dataclass(frozen=True)
class TokenUsage:
    prompt: int = 0
    candidates: int = 0
    thoughts: int = 0
    total: int = 0

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(*(a + b for a, b in zip(_astuple(self), _astuple(other), strict=True)))

    @classmethod
    def of(cls, meta: types.GenerateContentResponseUsageMetadata | None) -> TokenUsage:
        if meta is None:
            return cls()
        return cls(
            prompt=meta.prompt_token_count or 0,
            candidates=meta.candidates_token_count or 0,
            thoughts=meta.thoughts_token_count or 0,
            total=meta.total_token_count or 0,
        )


def _astuple(usage: TokenUsage) -> tuple[int, ...]:
    return dataclasses.astuple(usage)


@dataclass(frozen=True)
class LabelResult:
    video_id: str
    video_sha256: str
    model: str
    prompt_version: str
    pseudo_label: int  # 1 win, 0 lose (final answer, after reflection)
    pseudo_confidence: float
    reasoning: str
    observations: tuple[str, ...]
    transcript_summary: str
    first_label: int  # the Chain-of-Thought turn's answer, before reflection
    first_confidence: float
    usage: TokenUsage  # both turns
    model_version: str = ""
    from_cache: bool = False

    def record_fields(self) -> dict[str, Any]:
        """The fields a VideoRecord takes from the labeler."""
        return {
            "pseudo_label": self.pseudo_label,
            "pseudo_confidence": self.pseudo_confidence,
            "reasoning": self.reasoning,
        }

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["observations"] = list(self.observations)
        del data["from_cache"]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, from_cache: bool) -> LabelResult:
        fields = dict(data)
        fields["observations"] = tuple(fields["observations"])
        fields["usage"] = TokenUsage(**fields["usage"])
        return cls(**fields, from_cache=from_cache)


@dataclass(frozen=True)
class Failure:
    video_id: str
    reason: str  # unreadable, unsupported, malformed_json, schema_invalid, blocked, empty,
    # truncated, rate_limited, server_error, timeout, network, api_error, upload_failed, error
    detail: str
    video_sha256: str | None = None
    attempts: int = 0
    usage: TokenUsage = field(default_factory=TokenUsage)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- helpers --------------------------------------------------------------------------------


def resolve_api_key(environ: Mapping[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    for name in API_KEY_ENV_VARS:
        if environ.get(name):
            return environ[name]
    raise MissingAPIKeyError(
        f"no API key: set {' or '.join(API_KEY_ENV_VARS)} (or use --dry-run, which needs none)"
    )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_key(video_sha256: str, model: str, prompt_version: str, endpoint: str) -> str:
    fields = (video_sha256, model, prompt_version, endpoint)
    return hashlib.sha256("\n".join(fields).encode()).hexdigest()


def write_json_atomic(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class LabelCache:
    """One JSON file per (video hash, model, prompt version); a `.turn1` file for the first turn."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str, part: str) -> Path:
        return self.root / f"{key}{part}.json"

    def load(self, key: str, part: str = "") -> dict[str, Any] | None:
        path = self._path(key, part)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError) as exc:
            logger.warning("ignoring unreadable cache file %s: %s", path, exc)
            return None

    def store(self, key: str, payload: Mapping[str, Any], part: str = "") -> None:
        write_json_atomic(self._path(key, part), dict(payload))

    def discard(self, key: str, part: str) -> None:
        self._path(key, part).unlink(missing_ok=True)


class _RequestFailed(Exception):
    def __init__(self, reason: str, detail: str, attempts: int = 1) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.attempts = reason, detail, attempts


class _BadReply(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


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


def _classify(exc: Exception) -> tuple[str, bool] | None:
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


def parse_reply(response: types.GenerateContentResponse) -> tuple[prompts.LabelAnswer, str]:
    """The validated answer and its raw text, or `_BadReply` saying what is wrong."""
    feedback = response.prompt_feedback
    if feedback is not None and feedback.block_reason is not None:
        raise _BadReply("blocked", f"prompt blocked: {feedback.block_reason}")
    if not response.candidates:
        raise _BadReply("empty", "the reply has no candidates")
    candidate = response.candidates[0]
    reason = candidate.finish_reason
    if reason in _BLOCKING_FINISH_REASONS:
        raise _BadReply("blocked", f"finish reason {reason}")
    parts = candidate.content.parts if candidate.content and candidate.content.parts else []
    text = "".join(p.text for p in parts if p.text and not p.thought)
    if not text.strip():
        raise _BadReply("empty", f"the reply has no text (finish reason {reason})")
    if reason == types.FinishReason.MAX_TOKENS:
        raise _BadReply("truncated", "the reply hit the output token limit")
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _BadReply("malformed_json", f"{exc}; text starts {text[:120]!r}") from exc
    try:
        return prompts.LabelAnswer.model_validate(payload), text
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors()
        )
        raise _BadReply("schema_invalid", problems) from exc


T = TypeVar("T")


# --- the labeler ----------------------------------------------------------------------------


class Labeler:
    """Labels videos with one shared google-genai client; thread-safe."""

    def __init__(self, config: LabelerConfig, api_key: str, *, seed: int | None = None) -> None:
        if not api_key:
            raise MissingAPIKeyError("the API key is empty")
        self.config = config
        self._secret = api_key
        self.client = genai.Client(
            api_key=api_key,
            http_options=types.HttpOptions(
                base_url=config.base_url,
                api_version=config.api_version,
                timeout=max(1, round(config.timeout_s * 1000)),  # milliseconds
                # One attempt in the client; `_with_retries` owns retrying.
                retry_options=types.HttpRetryOptions(attempts=1),
            ),
        )
        self.cache = LabelCache(config.cache_dir)
        self._request_slots = threading.BoundedSemaphore(config.concurrency)
        self._jitter = random.Random(seed)
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self._failures: dict[str, Failure] = {}
        resolution = config.media_resolution
        self._generate_config = types.GenerateContentConfig(
            system_instruction=prompts.SYSTEM_INSTRUCTION,
            temperature=0.0,
            response_mime_type="application/json",
            response_schema=prompts.LabelAnswer,
            # No tools are declared; also silences google-genai's per-call AFC log line.
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
            media_resolution=(
                types.MediaResolution.MEDIA_RESOLUTION_LOW if resolution == "low" else None
            ),
        )

    def scrub(self, text: str) -> str:
        return text.replace(self._secret, "[redacted]")

    # -- batch ---------------------------------------------------------------------------

    def label_all(
        self, videos: Sequence[VideoItem], *, progress: bool = True
    ) -> dict[str, LabelResult | Failure]:
        results: dict[str, LabelResult | Failure] = {}
        if not videos:
            self._write_failures()
            return results
        # More threads than request slots, so reading and hashing the next videos overlaps
        # the requests in flight; the semaphore keeps requests at `concurrency`.
        workers = min(len(videos), 2 * self.config.concurrency)
        with concurrent.futures.ThreadPoolExecutor(workers, "labeler") as pool:
            futures = {pool.submit(self.label_one, v): v for v in videos}
            bar = _progress(len(videos), enabled=progress)
            for future in concurrent.futures.as_completed(futures):
                outcome = future.result()
                results[outcome.video_id] = outcome
                bar.update(1)
            bar.close()
        self._write_failures()
        return {v.video_id: results[v.video_id] for v in videos}

    def label_one(self, video: VideoItem) -> LabelResult | Failure:
        try:
            outcome = self._label(video)
        except _RequestFailed as exc:
            outcome = Failure(
                video.video_id, exc.reason, self.scrub(exc.detail), None, exc.attempts
            )
        except Exception as exc:  # a bug or an unforeseen reply must not stop the batch
            trace = self.scrub(traceback.format_exc())
            logger.error("video %s: unexpected error\n%s", video.video_id, trace)
            outcome = Failure(video.video_id, "error", self.scrub(f"{type(exc).__name__}: {exc}"))
        if isinstance(outcome, Failure):
            logger.warning(
                "video %s failed (%s): %s", video.video_id, outcome.reason, outcome.detail
            )
            with self._lock:
                self._failures[video.video_id] = outcome
            self._write_failures()
        return outcome

    def _write_failures(self) -> None:
        with self._lock:
            payload = {vid: f.to_json() for vid, f in sorted(self._failures.items())}
            write_json_atomic(self.config.failures_file, payload)

    # -- one video -----------------------------------------------------------------------

    def _label(self, video: VideoItem) -> LabelResult | Failure:
        mime = VIDEO_MIME_TYPES.get(video.path.suffix.lower())
        if mime is None:
            return Failure(
                video.video_id,
                "unsupported",
                f"{video.path}: suffix {video.path.suffix!r} is not one of "
                f"{sorted(VIDEO_MIME_TYPES)}",
            )
        try:
            sha = file_sha256(video.path)
            size = video.path.stat().st_size
        except OSError as exc:
            return Failure(video.video_id, "unreadable", f"{video.path}: {exc}")
        key = cache_key(sha, self.config.model, prompts.PROMPT_VERSION, self.config.endpoint)
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:  # two ids with the same bytes: the second one reads the cache
            cached = self.cache.load(key)
            if cached is not None:
                try:
                    result = LabelResult.from_json(
                        {**cached, "video_id": video.video_id}, from_cache=True
                    )
                except (KeyError, TypeError) as exc:
                    logger.warning(
                        "video %s: ignoring a stale cache entry (%s)", video.video_id, exc
                    )
                else:
                    logger.info("video %s: cached", video.video_id)
                    return result
            return self._converse(video, sha, size, mime, key)

    def _converse(
        self, video: VideoItem, sha: str, size: int, mime: str, key: str
    ) -> LabelResult | Failure:
        tally = _Tally()
        uploaded: types.File | None = None
        try:
            if size <= self.config.inline_limit_bytes:
                video_part = types.Part.from_bytes(data=video.path.read_bytes(), mime_type=mime)
            else:
                uploaded = self._upload(video, mime)
                video_part = types.Part.from_uri(file_uri=uploaded.uri, mime_type=mime)
            first_turn = [
                types.Content(
                    role="user", parts=[video_part, types.Part.from_text(text=prompts.COT_PROMPT)]
                )
            ]
            checkpoint = self.cache.load(key, ".turn1")
            if checkpoint is not None:  # a killed run paid for the first turn already
                first_text = checkpoint["text"]
                first = prompts.LabelAnswer.model_validate_json(first_text)
                tally.usage += TokenUsage(**checkpoint["usage"])
            else:
                first, first_text = self._ask(first_turn, tally, video)
                self.cache.store(
                    key, {"text": first_text, "usage": dataclasses.asdict(tally.usage)}, ".turn1"
                )
            second_turn = [
                *first_turn,
                types.Content(role="model", parts=[types.Part.from_text(text=first_text)]),
                types.Content(
                    role="user", parts=[types.Part.from_text(text=prompts.REFLECTION_PROMPT)]
                ),
            ]
            final, _ = self._ask(second_turn, tally, video)
        except _RequestFailed as exc:
            return Failure(
                video.video_id, exc.reason, self.scrub(exc.detail), sha, exc.attempts, tally.usage
            )
        finally:
            if uploaded is not None and self.config.delete_uploads:
                self._delete_upload(uploaded)

        result = LabelResult(
            video_id=video.video_id,
            video_sha256=sha,
            model=self.config.model,
            prompt_version=prompts.PROMPT_VERSION,
            pseudo_label=prompts.LABEL_TO_INT[final.label],
            pseudo_confidence=float(final.confidence),
            reasoning=final.reasoning,
            observations=tuple(final.observations),
            transcript_summary=final.transcript_summary,
            first_label=prompts.LABEL_TO_INT[first.label],
            first_confidence=float(first.confidence),
            usage=tally.usage,
            model_version=tally.model_version,
        )
        self.cache.store(key, result.to_json())
        self.cache.discard(key, ".turn1")
        logger.info("video %s: %s (confidence %.2f)", video.video_id, final.label, final.confidence)
        return result

    def _ask(
        self, contents: list[types.Content], tally: _Tally, video: VideoItem
    ) -> tuple[prompts.LabelAnswer, str]:
        """One turn: the validated answer and its text; `_RequestFailed` if it stays bad."""
        tries = self.config.bad_response_attempts
        for attempt in range(1, tries + 1):
            response = self._with_retries(
                f"video {video.video_id}: generateContent",
                lambda: self.client.models.generate_content(
                    model=self.config.model, contents=contents, config=self._generate_config
                ),
            )
            tally.usage += TokenUsage.of(response.usage_metadata)
            tally.model_version = response.model_version or tally.model_version
            try:
                return parse_reply(response)
            except _BadReply as bad:
                detail = self.scrub(bad.detail)
                logger.warning(
                    "video %s: bad reply (%s) on try %d/%d: %s",
                    video.video_id,
                    bad.reason,
                    attempt,
                    tries,
                    detail,
                )
                if attempt == tries:
                    raise _RequestFailed(bad.reason, detail, attempt) from None
        raise AssertionError("unreachable")

    def _with_retries(self, what: str, call: Callable[[], T]) -> T:
        attempts = self.config.max_attempts
        for attempt in range(1, attempts + 1):
            try:
                with self._request_slots:
                    return call()
            except Exception as exc:
                kind = _classify(exc)
                if kind is None:
                    raise
                reason, retryable = kind
                detail = self.scrub(f"{type(exc).__name__}: {exc}")
                if not retryable or attempt == attempts:
                    raise _RequestFailed(reason, detail, attempt) from None
                delay = self._backoff(attempt)
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

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with 'equal jitter': half fixed, half random."""
        cap = min(self.config.backoff_max_s, self.config.backoff_initial_s * 2 ** (attempt - 1))
        with self._lock:
            return cap / 2 + self._jitter.uniform(0, cap / 2)

    def _upload(self, video: VideoItem, mime: str) -> types.File:
        what = f"video {video.video_id}: upload"
        uploaded = self._with_retries(
            what,
            lambda: self.client.files.upload(
                file=video.path,
                config=types.UploadFileConfig(mime_type=mime, display_name=video.video_id),
            ),
        )
        deadline = time.monotonic() + self.config.file_active_timeout_s
        while uploaded.state != types.FileState.ACTIVE:
            if uploaded.state == types.FileState.FAILED:
                message = uploaded.error.message if uploaded.error else "no reason given"
                raise _RequestFailed("upload_failed", f"{uploaded.name} FAILED: {message}")
            if time.monotonic() > deadline:
                raise _RequestFailed(
                    "upload_failed",
                    f"{uploaded.name} not ACTIVE after {self.config.file_active_timeout_s} s "
                    f"(state {uploaded.state})",
                )
            time.sleep(self.config.file_poll_interval_s)
            get = functools.partial(self.client.files.get, name=uploaded.name)
            uploaded = self._with_retries(what, get)
        if not uploaded.uri:
            raise _RequestFailed("upload_failed", f"{uploaded.name} has no URI")
        return uploaded

    def _delete_upload(self, uploaded: types.File) -> None:
        try:
            with self._request_slots:
                self.client.files.delete(name=uploaded.name)
        except Exception as exc:  # the file expires after 48 h anyway
            logger.warning("could not delete %s: %s", uploaded.name, self.scrub(str(exc)))


@dataclass
class _Tally:
    """What one video's replies have cost so far, kept when the conversation fails."""

    usage: TokenUsage = field(default_factory=TokenUsage)
    model_version: str = ""


class _NoProgress:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, *, enabled: bool) -> Any:
    if not enabled:
        return _NoProgress()
    from tqdm import tqdm

    return tqdm(total=total, desc="label", unit="video", disable=None)


def label_videos(
    videos: Iterable[VideoItem | Sequence[Any]],
    config: LabelerConfig,
    *,
    api_key: str | None = None,
    progress: bool = True,
) -> dict[str, LabelResult | Failure]:
    """Label every video; {video_id: LabelResult, or Failure with the reason}.

    `videos` holds `VideoItem`s or tuples (video_id, path[, ground-truth label or None]).
    The key defaults to GOOGLE_API_KEY / GEMINI_API_KEY.
    """
    items = _unique_items(videos)
    labeler = Labeler(config, api_key or resolve_api_key())
    return labeler.label_all(items, progress=progress)


def _unique_items(videos: Iterable[VideoItem | Sequence[Any]]) -> list[VideoItem]:
    items = [VideoItem.of(v) for v in videos]
    seen = Counter(v.video_id for v in items)
    duplicates = sorted(vid for vid, n in seen.items() if n > 1)
    if duplicates:
        raise ValueError(f"duplicate video ids: {duplicates[:10]}")
    return items


# --- summary --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelSummary:
    labelled: int  # fresh labels of this run
    cached: int
    failed: int
    failures_by_reason: dict[str, int]
    usage: TokenUsage  # tokens of the replies behind this run's fresh labels and failures
    correct: int  # agreement with ground truth, where the video has it
    with_truth: int
    flipped_by_reflection: int


def summarize(
    results: Mapping[str, LabelResult | Failure], videos: Sequence[VideoItem] = ()
) -> LabelSummary:
    truth = {v.video_id: v.label for v in videos if v.label is not None}
    labels = [r for r in results.values() if isinstance(r, LabelResult)]
    failures = [r for r in results.values() if isinstance(r, Failure)]
    usage = TokenUsage()
    for r in [*labels, *failures]:
        if not getattr(r, "from_cache", False):
            usage += r.usage
    judged = [r for r in labels if r.video_id in truth]
    return LabelSummary(
        labelled=sum(not r.from_cache for r in labels),
        cached=sum(r.from_cache for r in labels),
        failed=len(failures),
        failures_by_reason=dict(Counter(f.reason for f in failures)),
        usage=usage,
        correct=sum(r.pseudo_label == truth[r.video_id] for r in judged),
        with_truth=len(judged),
        flipped_by_reflection=sum(r.first_label != r.pseudo_label for r in labels),
    )


def format_summary(summary: LabelSummary) -> str:
    u = summary.usage
    lines = [
        f"labelled {summary.labelled}, cached {summary.cached}, failed {summary.failed}"
        + (f" ({summary.failures_by_reason})" if summary.failed else ""),
        f"tokens (this run's replies): prompt {u.prompt:,}, candidates {u.candidates:,}, "
        f"thoughts {u.thoughts:,}, total {u.total:,}",
        f"reflection changed the first answer on {summary.flipped_by_reflection} video(s)",
    ]
    if summary.with_truth:
        lines.append(
            f"agreement with ground truth: {summary.correct}/{summary.with_truth} "
            f"= {summary.correct / summary.with_truth:.3f}"
        )
    return "\n".join(lines)


# --- dry run --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedVideo:
    video_id: str
    size_bytes: int
    transport: str  # inline | upload | cached | unreadable
    duration_s: float | None
    prompt_tokens: int | None  # both turns
    output_tokens: int | None
    cost_usd: float | None


def probe_duration(path: Path) -> float | None:
    """Seconds of video from the container (OpenCV), or None when it cannot be read."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    try:
        frames = capture.get(cv2.CAP_PROP_FRAME_COUNT)
        fps = capture.get(cv2.CAP_PROP_FPS)
    finally:
        capture.release()
    return frames / fps if frames > 0 and fps > 0 else None


def plan_videos(videos: Sequence[VideoItem], config: LabelerConfig) -> list[PlannedVideo]:
    """What a run would send, from local files only (no network, no API key)."""
    pricing = PRICES.get(config.model, PRICES[DEFAULT_MODEL])
    cache = LabelCache(config.cache_dir) if config.cache_dir.exists() else None
    cot_tokens = (len(prompts.SYSTEM_INSTRUCTION) + len(prompts.COT_PROMPT)) // TEXT_CHARS_PER_TOKEN
    reflection_tokens = len(prompts.REFLECTION_PROMPT) // TEXT_CHARS_PER_TOKEN
    per_reply = ASSUMED_ANSWER_TOKENS + ASSUMED_THINKING_TOKENS
    plans = []
    for video in videos:
        try:
            size = video.path.stat().st_size
        except OSError:
            plans.append(PlannedVideo(video.video_id, 0, "unreadable", None, None, None, None))
            continue
        transport = "inline" if size <= config.inline_limit_bytes else "upload"
        if cache is not None:
            video_sha = file_sha256(video.path)
            key = cache_key(video_sha, config.model, prompts.PROMPT_VERSION, config.endpoint)
            if cache.load(key) is not None:
                transport = "cached"
        duration = probe_duration(video.path)
        if duration is None or transport == "cached":
            plans.append(PlannedVideo(video.video_id, size, transport, duration, None, None, None))
            continue
        video_tokens = round(duration * VIDEO_TOKENS_PER_SECOND[config.media_resolution])
        first = video_tokens + cot_tokens
        second = first + ASSUMED_ANSWER_TOKENS + reflection_tokens
        cost = pricing.cost(first, per_reply) + pricing.cost(second, per_reply)
        plans.append(
            PlannedVideo(
                video.video_id, size, transport, duration, first + second, 2 * per_reply, cost
            )
        )
    return plans


def format_plan(plans: Sequence[PlannedVideo], config: LabelerConfig) -> str:
    rate = VIDEO_TOKENS_PER_SECOND[config.media_resolution]
    priced = config.model if config.model in PRICES else f"{DEFAULT_MODEL} (assumed)"
    lines = [
        "DRY RUN: nothing is sent.",
        f"model {config.model}, prompt version {prompts.PROMPT_VERSION}, temperature 0, "
        f"2 turns per video (Chain-of-Thought, then Reflection), structured JSON output",
        f"endpoint {config.base_url or 'Gemini API (default)'}, inline limit "
        f"{config.inline_limit_bytes:,} bytes, media resolution {config.media_resolution}",
        "",
        "| video | MB | sent as | duration s | est. prompt tokens | est. output tokens "
        "| est. USD |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in plans:
        lines.append(
            f"| {p.video_id} | {p.size_bytes / 1e6:.2f} | {p.transport} | "
            f"{_fmt(p.duration_s, '.1f')} | {_fmt(p.prompt_tokens, ',')} | "
            f"{_fmt(p.output_tokens, ',')} | {_fmt(p.cost_usd, '.4f')} |"
        )
    costed = [p for p in plans if p.cost_usd is not None]
    unknown = [p.video_id for p in plans if p.transport in ("inline", "upload") and not p.cost_usd]
    lines += [
        "",
        f"ESTIMATED cost of {len(costed)} video(s): ${sum(p.cost_usd or 0 for p in costed):.2f}"
        f" (an estimate, not a quote), "
        f"{sum(p.prompt_tokens or 0 for p in costed):,} prompt tokens",
        f"assumes {priced} list prices per 1M tokens: input $1.25 (prompt <= 200k) / $2.50, "
        f"output incl. thinking $10 / $15; ~{rate} video tokens per second; "
        f"~{ASSUMED_ANSWER_TOKENS} answer + ~{ASSUMED_THINKING_TOKENS} thinking tokens per reply",
    ]
    if unknown:
        lines.append(f"not estimated (duration unreadable): {', '.join(unknown)}")
    return "\n".join(lines)


def _fmt(value: float | int | None, spec: str) -> str:
    return "?" if value is None else format(value, spec)


# --- command line ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = LabelerConfig(cache_dir=Path("."))
    parser.add_argument(
        "--videos",
        type=Path,
        nargs="+",
        required=True,
        help="video files and/or directories of videos (video id = file name without suffix)",
    )
    parser.add_argument(
        "--labels",
        type=Path,
        help="optional CSV with columns video_id,label (win/lose/1/0) to report agreement",
    )
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument(
        "--out", type=Path, help="per-video results JSON (default: CACHE_DIR/labels.json)"
    )
    parser.add_argument("--model", default=d.model)
    parser.add_argument(
        "--base-url", help="send requests to this endpoint instead of the Gemini API"
    )
    parser.add_argument(
        "--inline-limit-mb",
        type=float,
        default=d.inline_limit_bytes / 2**20,
        help="videos up to this size (MiB) go inline, larger ones through the Files API",
    )
    parser.add_argument("--concurrency", type=int, default=d.concurrency)
    parser.add_argument("--timeout", type=float, default=d.timeout_s, help="seconds per request")
    parser.add_argument("--max-attempts", type=int, default=d.max_attempts)
    parser.add_argument("--backoff-initial", type=float, default=d.backoff_initial_s)
    parser.add_argument("--backoff-max", type=float, default=d.backoff_max_s)
    parser.add_argument("--bad-response-attempts", type=int, default=d.bad_response_attempts)
    parser.add_argument(
        "--media-resolution", choices=sorted(VIDEO_TOKENS_PER_SECOND), default="default"
    )
    parser.add_argument(
        "--file-poll-interval",
        type=float,
        default=d.file_poll_interval_s,
        help="seconds between checks that an uploaded video is ACTIVE",
    )
    parser.add_argument("--keep-uploads", action="store_true", help="don't delete uploaded files")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be sent and an estimated cost; no network, no key needed",
    )


def config_from_args(args: argparse.Namespace) -> LabelerConfig:
    return LabelerConfig(
        cache_dir=args.cache_dir,
        model=args.model,
        base_url=args.base_url,
        inline_limit_bytes=round(args.inline_limit_mb * 2**20),
        timeout_s=args.timeout,
        max_attempts=args.max_attempts,
        backoff_initial_s=args.backoff_initial,
        backoff_max_s=args.backoff_max,
        bad_response_attempts=args.bad_response_attempts,
        concurrency=args.concurrency,
        media_resolution=args.media_resolution,
        file_poll_interval_s=args.file_poll_interval,
        delete_uploads=not args.keep_uploads,
    )


def find_videos(paths: Sequence[Path], labels: Mapping[str, int] | None = None) -> list[VideoItem]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(
                p for p in path.iterdir() if p.suffix.lower() in VIDEO_MIME_TYPES and p.is_file()
            )
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"--videos {path}: no such file or directory")
    labels = labels or {}
    return _unique_items(VideoItem(p.stem, p, labels.get(p.stem)) for p in files)


def read_label_csv(path: Path) -> dict[str, int]:
    labels = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"video_id", "label"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: needs columns video_id,label; has {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            value = row["label"].strip().lower()
            if value not in ("win", "lose", "1", "0"):
                raise ValueError(f"{path}:{line}: label {row['label']!r} is not win/lose/1/0")
            labels[row["video_id"]] = 1 if value in ("win", "1") else 0
    return labels


def main(args: argparse.Namespace) -> int:
    """Run the labeler from parsed `add_arguments` options; 0 if every video is labelled."""
    config = config_from_args(args)
    labels = read_label_csv(args.labels) if args.labels else None
    videos = find_videos(args.videos, labels)
    if args.dry_run:
        print(format_plan(plan_videos(videos, config), config))
        return 0
    results = label_videos(videos, config)
    out = args.out or config.cache_dir / "labels.json"
    write_json_atomic(
        out,
        {
            vid: {"status": "labelled", **r.to_json()}
            if isinstance(r, LabelResult)
            else {"status": "failed", **r.to_json()}
            for vid, r in results.items()
        },
    )
    print(format_summary(summarize(results, videos)))
    print(f"results: {out}; failures: {config.failures_file}")
    return 0 if all(isinstance(r, LabelResult) for r in results.values()) else 1


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _parser = argparse.ArgumentParser(
        prog="python -m preprocess.gemini", description="VLM pseudo-labels for videos."
    )
    add_arguments(_parser)
    sys.exit(main(_parser.parse_args()))
