"""Video pseudo-labels (win/lose) from a vision-language model through google-genai.

For every video the labeler holds one two-turn conversation with the model (Gemini 2.5 Pro by
default; any endpoint that speaks the Gemini REST API through `base_url`, such as
`preprocess.synthetic.vlm_sim`): a Chain-of-Thought turn that observes and judges, then a
Reflection turn that critiques the first answer and gives the final one (texts in
`preprocess.labeling.prompts`). Both
answers are structured JSON (`prompts.LabelAnswer`, read by `preprocess.labeling.reply`),
temperature 0.

- The video goes inline when it is at most `inline_limit_bytes`, otherwise through the Files
  API (resumable upload, poll until ACTIVE, reference by URI, delete afterwards).
- Answers are cached (`preprocess.labeling.cache`); the first turn's answer is checkpointed too.
- Requests are sent and retried by `preprocess.labeling.retry`, at most `concurrency` in flight.
  A reply that stays bad (malformed JSON, blocked, empty, schema-invalid, truncated) after
  `bad_response_attempts` becomes a `Failure` for that video, recorded in the failures file;
  the batch goes on.
- The API key is scrubbed from every error text the labeler records or logs.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import logging
import threading
import time
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google import genai
from google.genai import types

from hemo_jax.contract import atomic
from preprocess.labeling import prompts
from preprocess.labeling.cache import LabelCache, cache_key, file_sha256
from preprocess.labeling.config import LabelerConfig, MissingAPIKeyError, resolve_api_key
from preprocess.labeling.reply import BadReply, parse_reply
from preprocess.labeling.results import Failure, LabelResult, TokenUsage, VideoItem, video_items
from preprocess.labeling.retry import RequestFailed, RetryingSender

logger = logging.getLogger(__name__)

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
                # One attempt in the client; `self.requests` owns retrying.
                retry_options=types.HttpRetryOptions(attempts=1),
            ),
        )
        self.cache = LabelCache(config.cache_dir)
        self.requests = RetryingSender(
            concurrency=config.concurrency,
            max_attempts=config.max_attempts,
            backoff_initial_s=config.backoff_initial_s,
            backoff_max_s=config.backoff_max_s,
            scrub=self.scrub,
            seed=seed,
        )
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self._failures: dict[str, Failure] = {}
        resolution = config.media_resolution
        self.generate_config = types.GenerateContentConfig(
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
        # the requests in flight; the request slots keep requests at `concurrency`.
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
        except RequestFailed as exc:
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
            atomic.write_json(self.config.failures_file, payload)

    # -- one video -----------------------------------------------------------------------

    def _label(self, video: VideoItem) -> LabelResult | Failure:
        prepared = prepare(video, self.config)
        if isinstance(prepared, Failure):
            return prepared
        with self._lock:
            key_lock = self._key_locks.setdefault(prepared.key, threading.Lock())
        with key_lock:  # two ids with the same bytes: the second one reads the cache
            cached = cached_result(self.cache, prepared.key, video)
            if cached is not None:
                return cached
            return self._converse(video, prepared.sha, prepared.size, prepared.mime, prepared.key)

    def _converse(
        self, video: VideoItem, sha: str, size: int, mime: str, key: str
    ) -> LabelResult | Failure:
        tally = Tally()
        uploaded: types.File | None = None
        try:
            if size <= self.config.inline_limit_bytes:
                video_part = types.Part.from_bytes(data=video.path.read_bytes(), mime_type=mime)
            else:
                uploaded = self.upload(video.path, mime, video.video_id)
                video_part = types.Part.from_uri(file_uri=uploaded.uri, mime_type=mime)
            first_turn = first_turn_contents(video_part)
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
            final, _ = self._ask(second_turn_contents(first_turn, first_text), tally, video)
        except RequestFailed as exc:
            return Failure(
                video.video_id, exc.reason, self.scrub(exc.detail), sha, exc.attempts, tally.usage
            )
        finally:
            if uploaded is not None and self.config.delete_uploads:
                self.delete_upload(uploaded.name)

        result = label_result(video.video_id, sha, self.config.model, first, final, tally)
        self.cache.store(key, result.to_json())
        self.cache.discard(key, ".turn1")
        logger.info("video %s: %s (confidence %.2f)", video.video_id, final.label, final.confidence)
        return result

    def _ask(
        self, contents: list[types.Content], tally: Tally, video: VideoItem
    ) -> tuple[prompts.LabelAnswer, str]:
        """One turn: the validated answer and its text; `RequestFailed` if it stays bad."""
        tries = self.config.bad_response_attempts
        for attempt in range(1, tries + 1):
            response = self.requests.send(
                f"video {video.video_id}: generateContent",
                lambda: self.client.models.generate_content(
                    model=self.config.model, contents=contents, config=self.generate_config
                ),
            )
            tally.usage += TokenUsage.of(response.usage_metadata)
            tally.model_version = response.model_version or tally.model_version
            try:
                return parse_reply(response)
            except BadReply as bad:
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
                    raise RequestFailed(bad.reason, detail, attempt) from None
        raise AssertionError("unreachable")

    def upload(self, path: Path, mime: str, display_name: str) -> types.File:
        """Upload a file through the Files API and wait until it is ACTIVE."""
        what = f"{display_name}: upload"
        uploaded = self.requests.send(
            what,
            lambda: self.client.files.upload(
                file=path,
                config=types.UploadFileConfig(mime_type=mime, display_name=display_name),
            ),
        )
        deadline = time.monotonic() + self.config.file_active_timeout_s
        while uploaded.state != types.FileState.ACTIVE:
            if uploaded.state == types.FileState.FAILED:
                message = uploaded.error.message if uploaded.error else "no reason given"
                raise RequestFailed("upload_failed", f"{uploaded.name} FAILED: {message}")
            if time.monotonic() > deadline:
                raise RequestFailed(
                    "upload_failed",
                    f"{uploaded.name} not ACTIVE after {self.config.file_active_timeout_s} s "
                    f"(state {uploaded.state})",
                )
            time.sleep(self.config.file_poll_interval_s)
            get = functools.partial(self.client.files.get, name=uploaded.name)
            uploaded = self.requests.send(what, get)
        if not uploaded.uri:
            raise RequestFailed("upload_failed", f"{uploaded.name} has no URI")
        return uploaded

    def delete_upload(self, name: str) -> None:
        try:
            self.requests.send_once(lambda: self.client.files.delete(name=name))
        except Exception as exc:  # the file expires after 48 h anyway
            logger.warning("could not delete %s: %s", name, self.scrub(str(exc)))


@dataclass
class Tally:
    """What one video's replies have cost so far, kept when the conversation fails."""

    usage: TokenUsage = field(default_factory=TokenUsage)
    model_version: str = ""


@dataclass(frozen=True)
class Prepared:
    """A video ready to be asked about: its bytes' hash, size, MIME type and cache key."""

    video: VideoItem
    sha: str
    size: int
    mime: str
    key: str


def prepare(video: VideoItem, config: LabelerConfig) -> Prepared | Failure:
    """Hash the video and find its cache key; a `Failure` if it cannot be sent."""
    mime = VIDEO_MIME_TYPES.get(video.path.suffix.lower())
    if mime is None:
        return Failure(
            video.video_id,
            "unsupported",
            f"{video.path}: suffix {video.path.suffix!r} is not one of {sorted(VIDEO_MIME_TYPES)}",
        )
    try:
        sha = file_sha256(video.path)
        size = video.path.stat().st_size
    except OSError as exc:
        return Failure(video.video_id, "unreadable", f"{video.path}: {exc}")
    key = cache_key(sha, config.model, prompts.PROMPT_VERSION, config.endpoint)
    return Prepared(video, sha, size, mime, key)


def cached_result(cache: LabelCache, key: str, video: VideoItem) -> LabelResult | None:
    """The cached answer for `key` under this video's id; None if absent or stale."""
    cached = cache.load(key)
    if cached is None:
        return None
    try:
        result = LabelResult.from_json({**cached, "video_id": video.video_id}, from_cache=True)
    except (KeyError, TypeError) as exc:
        logger.warning("video %s: ignoring a stale cache entry (%s)", video.video_id, exc)
        return None
    logger.info("video %s: cached", video.video_id)
    return result


def first_turn_contents(video_part: types.Part) -> list[types.Content]:
    """The Chain-of-Thought turn: the video and the question."""
    question = types.Part.from_text(text=prompts.COT_PROMPT)
    return [types.Content(role="user", parts=[video_part, question])]


def second_turn_contents(first_turn: list[types.Content], first_text: str) -> list[types.Content]:
    """The Reflection turn: the first turn, its answer, and the request to reconsider."""
    return [
        *first_turn,
        types.Content(role="model", parts=[types.Part.from_text(text=first_text)]),
        types.Content(role="user", parts=[types.Part.from_text(text=prompts.REFLECTION_PROMPT)]),
    ]


def label_result(
    video_id: str,
    sha: str,
    model: str,
    first: prompts.LabelAnswer,
    final: prompts.LabelAnswer,
    tally: Tally,
) -> LabelResult:
    """The result of a finished conversation (both turns' answers and what they cost)."""
    return LabelResult(
        video_id=video_id,
        video_sha256=sha,
        model=model,
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
    items = video_items(videos)
    labeler = Labeler(config, api_key or resolve_api_key())
    return labeler.label_all(items, progress=progress)
