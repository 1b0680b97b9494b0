"""Labelling through the Gemini Batch API: the same two turns at half the price, within 24 h.

`python -m preprocess label --batch` (and `run --labeler gemini-batch`) asks the questions of
`preprocess.labeling.labeler` (Chain-of-Thought, then Reflection carrying the first answer) as two
rounds of batch jobs instead of one conversation per video:

1. one job holds the first turn of every video not yet answered; once it has finished, each
   good answer is checkpointed (the label cache's `.turn1` part, as the interactive labeler
   does);
2. one job holds the second turn of every video with a first answer; each good answer is the
   video's `LabelResult`, cached like any other.

- Requests go inline when the job's requests, serialised, fit `inline_request_limit_bytes`
  (the API takes 20 MB per request); above it they go as a JSONL file (`{"key", "request"}`
  per line) uploaded through the Files API. A video goes inline in its request up to the
  labeler's `inline_limit_bytes`, otherwise as an uploaded file.
- Every job is recorded in the state file (`CACHE_DIR/batch_state.json`, see
  `preprocess.labeling.batch_state`) as soon as it is created, with the requests it holds. A
  rerun of a killed command re-attaches to the recorded jobs and submits only requests no job
  holds: nothing is paid twice. The submission is recorded before the create request, under a
  display name derived from the requests; a run stopped before it learned the job's name (and
  a create retried after a time-out) finds the job by that name in the job list instead of
  creating it again.
- Jobs are polled with exponential backoff (`poll_initial_s` growing by `poll_multiplier` up
  to `poll_max_s`); transient polling errors are retried by `label_retry`.
- A request that failed (its own error, a bad reply, or a job that ended EXPIRED, FAILED or
  CANCELLED) is asked again in the next job, up to `max_tries` times per turn; with
  `retry="sync"` the retries are sent at once through generateContent (standard price) instead
  of waiting for another job. A request that still fails is the video's `Failure`.
- Uploaded videos expire 48 hours after upload; the state keeps each one's expiry, and a video
  with less than `upload_margin_s` left (default 25 h: a job's 24-hour window and an hour) is
  uploaded again before a job refers to it. A request whose video is gone (403/404) drops that
  upload, so its retry uploads the video again.
- What the replies cost is read from their usage metadata, priced per reply at the batch price
  (half the standard one) and, for comparison, at the standard price (`BatchSpend`).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from google.genai import types

from hemo_jax.contract import atomic
from preprocess.labeling import prompts
from preprocess.labeling.batch_jobs import BatchJobs
from preprocess.labeling.batch_state import BatchState
from preprocess.labeling.config import LabelerConfig, resolve_api_key
from preprocess.labeling.cost import BATCH_PRICE_FACTOR, reply_cost
from preprocess.labeling.labeler import (
    Labeler,
    Prepared,
    Tally,
    cached_result,
    first_turn_contents,
    label_result,
    prepare,
    second_turn_contents,
)
from preprocess.labeling.reply import BadReply, parse_reply
from preprocess.labeling.results import Failure, LabelResult, TokenUsage, VideoItem, video_items
from preprocess.labeling.retry import RETRYABLE_HTTP_CODES, RequestFailed

logger = logging.getLogger(__name__)

# An uploaded file lives 48 hours (Files API).
FILE_LIFETIME_S = 48 * 3600
RETRY_MODES = ("batch", "sync")
_DONE_STATES = {
    types.JobState.JOB_STATE_SUCCEEDED,
    types.JobState.JOB_STATE_FAILED,
    types.JobState.JOB_STATE_CANCELLED,
    types.JobState.JOB_STATE_EXPIRED,
}
_JOB_FAILURES = {
    types.JobState.JOB_STATE_FAILED: "batch_failed",
    types.JobState.JOB_STATE_CANCELLED: "batch_cancelled",
    types.JobState.JOB_STATE_EXPIRED: "batch_expired",
}


@dataclass(frozen=True)
class BatchSettings:
    """How batch jobs are sent and watched (the conversation itself is `LabelerConfig`'s)."""

    poll_initial_s: float = 30.0
    poll_max_s: float = 600.0
    poll_multiplier: float = 1.5
    inline_request_limit_bytes: int = 19 * 2**20  # under the API's 20 MB per request
    max_tries: int = 3  # jobs (or sync retries) one request of one turn may take
    retry: str = "batch"  # or "sync": failed requests retried through generateContent
    upload_margin_s: float = 25 * 3600

    def __post_init__(self) -> None:
        if self.retry not in RETRY_MODES:
            raise ValueError(f"BatchSettings.retry {self.retry!r} is not one of {RETRY_MODES}")
        for name in ("poll_initial_s", "poll_max_s", "max_tries", "inline_request_limit_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"BatchSettings.{name} must be > 0, got {getattr(self, name)}")
        if self.poll_multiplier < 1:
            raise ValueError(
                f"BatchSettings.poll_multiplier must be >= 1, got {self.poll_multiplier}"
            )


@dataclass
class BatchSpend:
    """What this run's replies cost, from their usage metadata, in USD."""

    batch_replies: int = 0
    sync_replies: int = 0
    usd: float = 0.0  # what was billed: batch replies at the batch price, sync ones at standard
    usd_at_standard: float = 0.0  # the same replies at the standard price

    def add(self, usage: TokenUsage, model: str, *, batch: bool) -> None:
        standard = reply_cost(usage, model)
        self.usd_at_standard += standard
        self.usd += standard * BATCH_PRICE_FACTOR if batch else standard
        if batch:
            self.batch_replies += 1
        else:
            self.sync_replies += 1


def format_spend(spend: BatchSpend) -> str:
    return (
        f"cost of this run's replies (from usage metadata): ${spend.usd:.4f} "
        f"({spend.batch_replies} at batch price, {spend.sync_replies} at standard price); "
        f"${spend.usd_at_standard:.4f} at standard price"
    )


class BatchLabeler:
    """Labels videos through batch jobs that survive the process (see the module docstring)."""

    def __init__(self, labeler: Labeler, settings: BatchSettings | None = None) -> None:
        self.labeler = labeler  # its client, prompts, cache and reply checks
        self.config = config = labeler.config
        self.settings = settings or BatchSettings()
        self.spend = BatchSpend()
        self.state = BatchState(config.cache_dir / "batch_state.json")
        self.jobs = BatchJobs(
            self.labeler,
            self.state,
            inline_request_limit_bytes=self.settings.inline_request_limit_bytes,
            inputs_dir=config.cache_dir / "batch_inputs",
        )
        self._tries: dict[tuple[str, int], int] = Counter()
        self._tallies: dict[tuple[str, int], Tally] = {}
        self._failures: dict[str, Failure] = {}
        self._fresh: dict[str, LabelResult] = {}

    # -- the run -----------------------------------------------------------------------------

    def label_all(self, videos: Sequence[VideoItem]) -> dict[str, LabelResult | Failure]:
        self.jobs.recover()
        outcomes: dict[str, LabelResult | Failure] = {}
        asked: dict[str, Prepared] = {}  # by video id
        todo: dict[str, Prepared] = {}  # by cache key: videos with the same bytes asked once
        for video in videos:
            prepared = prepare(video, self.config)
            if isinstance(prepared, Failure):
                outcomes[video.video_id] = prepared
                continue
            cached = cached_result(self.labeler.cache, prepared.key, video)
            if cached is not None:
                outcomes[video.video_id] = cached
            else:
                asked[video.video_id] = prepared
                todo.setdefault(prepared.key, prepared)
        for turn in (1, 2):
            self._turn(turn, todo)
        for video_id, prepared in asked.items():
            outcome = self._fresh.get(prepared.key) or self._failures.get(prepared.key)
            if outcome is None:
                outcome = Failure(video_id, "error", "no answer and no failure", prepared.sha)
            outcomes[video_id] = dataclasses.replace(outcome, video_id=video_id)
        failures = {v: f.to_json() for v, f in outcomes.items() if isinstance(f, Failure)}
        atomic.write_json(self.config.failures_file, dict(sorted(failures.items())))
        if not self.state.jobs and self.config.delete_uploads:
            self._delete_uploads()
        return {v.video_id: outcomes[v.video_id] for v in videos}

    def _turn(self, turn: int, todo: dict[str, Prepared]) -> None:
        """Ask `turn` of every video in `todo` that needs it, re-attaching to recorded jobs."""
        if recorded := self.state.of_turn(turn):
            names = ", ".join(job["name"] for job in recorded)
            logger.info(
                "turn %d: re-attaching to %d recorded batch job(s): %s", turn, len(recorded), names
            )
        while True:
            pending = [p for p in todo.values() if self._needs(turn, p.key)]
            held = {key for job in self.state.of_turn(turn) for key in job["requests"]}
            ask = [p for p in pending if p.key not in held and self._tries[p.key, turn] < self._max]
            if self.settings.retry == "sync":
                for prepared in [p for p in ask if self._tries[p.key, turn]]:
                    self._ask_now(turn, prepared)
                ask = [p for p in ask if not self._tries[p.key, turn]]
            if ask:
                self._submit(turn, ask)
            jobs = self.state.of_turn(turn)
            if not jobs:
                return
            self._wait(jobs)

    @property
    def _max(self) -> int:
        return self.settings.max_tries

    def _needs(self, turn: int, key: str) -> bool:
        if key in self._fresh or self.labeler.cache.load(key) is not None:
            return False
        has_first = self.labeler.cache.load(key, ".turn1") is not None
        return not has_first if turn == 1 else has_first

    # -- requests ----------------------------------------------------------------------------

    def _contents(self, turn: int, prepared: Prepared) -> list[types.Content]:
        if prepared.size <= self.config.inline_limit_bytes:
            data = prepared.video.path.read_bytes()
            part = types.Part.from_bytes(data=data, mime_type=prepared.mime)
        else:
            part = types.Part.from_uri(file_uri=self._uploaded(prepared), mime_type=prepared.mime)
        contents = first_turn_contents(part)
        if turn == 2:
            checkpoint = self.labeler.cache.load(prepared.key, ".turn1")
            assert checkpoint is not None, "the second turn follows a checkpointed first"
            contents = second_turn_contents(contents, checkpoint["text"])
        return contents

    def _uploaded(self, prepared: Prepared) -> str:
        """The URI of the video's upload, uploading it (again) unless it lives long enough."""
        entry = self.state.uploads.get(prepared.sha)
        if entry is not None and entry["expires"] - time.time() > self.settings.upload_margin_s:
            return entry["uri"]
        if entry is not None:
            logger.info(
                "video %s: upload %s expires soon; uploading again",
                prepared.video.video_id,
                entry["name"],
            )
        uploaded = self.labeler.upload(prepared.video.path, prepared.mime, prepared.video.video_id)
        expires = (
            uploaded.expiration_time.timestamp()
            if uploaded.expiration_time
            else time.time() + FILE_LIFETIME_S
        )
        self.state.uploaded(prepared.sha, str(uploaded.name), str(uploaded.uri), expires)
        return str(uploaded.uri)

    def _submit(self, turn: int, candidates: Sequence[Prepared]) -> None:
        ask, requests = [], []
        for p in candidates:
            info = {"video_id": p.video.video_id, "sha": p.sha}
            try:
                contents = self._contents(turn, p)
            except RequestFailed as exc:  # its upload failed, after retries
                detail = self.labeler.scrub(exc.detail)
                self._failed(turn, p.key, info, exc.reason, detail, final=True)
                continue
            except OSError as exc:  # gone since it was hashed
                detail = f"{p.video.path}: {exc}"
                self._failed(turn, p.key, info, "unreadable", detail, final=True)
                continue
            config = self.labeler.generate_config
            metadata = {"key": p.key}
            ask.append(p)
            requests.append(
                types.InlinedRequest(
                    model=self.config.model, contents=contents, config=config, metadata=metadata
                )
            )
        if not ask:
            return
        held = {p.key: {"video_id": p.video.video_id, "sha": p.sha} for p in ask}
        self.jobs.submit(turn, requests, held)

    # -- jobs --------------------------------------------------------------------------------

    def _wait(self, jobs: list[dict[str, Any]]) -> None:
        """Poll `jobs` with backoff until each has ended; collect each as it ends."""
        delay = self.settings.poll_initial_s
        waiting = list(jobs)
        while waiting:
            still = []
            for job in waiting:
                state = self.jobs.poll(job)
                if state is None or state.state in _DONE_STATES:
                    self._collect(job, state)
                else:
                    still.append(job)
            waiting = still
            if waiting:
                logger.info("%d batch job(s) running; next poll in %.0f s", len(waiting), delay)
                time.sleep(delay)
                delay = min(self.settings.poll_max_s, delay * self.settings.poll_multiplier)

    def _collect(self, job: dict[str, Any], state: types.BatchJob | None) -> None:
        turn, requests = job["turn"], job["requests"]
        if state is None or state.state != types.JobState.JOB_STATE_SUCCEEDED:
            reason = "batch_lost" if state is None else _JOB_FAILURES[state.state]
            logger.warning(
                "%s ended %s; its %d request(s) will be asked again",
                job["name"],
                reason,
                len(requests),
            )
            for key, info in requests.items():
                self._failed(turn, key, info, reason, f"{job['name']}: {reason}")
        else:
            answers = self.jobs.answers(state, list(requests))
            for key, info in requests.items():
                answer = answers.get(key)
                if answer is None:
                    self._failed(
                        turn, key, info, "batch_missing", f"{job['name']} has no answer for it"
                    )
                elif answer.error is not None:
                    self._request_error(turn, key, info, answer.error, job["name"])
                elif answer.response is not None:
                    self._reply(turn, key, info, answer.response, batch=True)
                else:
                    self._failed(turn, key, info, "empty", f"{job['name']}: an empty answer")
        if job.get("input_file") and self.config.delete_uploads:
            self.labeler.delete_upload(job["input_file"])
        self.state.collected(job["name"])

    # -- answers -----------------------------------------------------------------------------

    def _tally(self, turn: int, key: str) -> Tally:
        return self._tallies.setdefault((key, turn), Tally())

    def _reply(
        self,
        turn: int,
        key: str,
        info: dict[str, Any],
        response: types.GenerateContentResponse,
        *,
        batch: bool,
    ) -> None:
        usage = TokenUsage.of(response.usage_metadata)
        self.spend.add(usage, self.config.model, batch=batch)
        tally = self._tally(turn, key)
        tally.usage += usage
        tally.model_version = response.model_version or tally.model_version
        try:
            answer, text = parse_reply(response)
        except BadReply as bad:
            self._failed(turn, key, info, bad.reason, self.labeler.scrub(bad.detail))
            return
        self._accept(turn, key, info, answer, text)

    def _accept(
        self, turn: int, key: str, info: dict[str, Any], answer: prompts.LabelAnswer, text: str
    ) -> None:
        tally = self._tally(turn, key)
        self._failures.pop(key, None)
        if turn == 1:
            usage = dataclasses.asdict(tally.usage)
            self.labeler.cache.store(key, {"text": text, "usage": usage}, ".turn1")
            return
        checkpoint = self.labeler.cache.load(key, ".turn1")
        if checkpoint is None:  # the first answer was discarded meanwhile
            self._failed(turn, key, info, "error", "the first answer is gone; a rerun asks again")
            return
        first = prompts.LabelAnswer.model_validate_json(checkpoint["text"])
        both = Tally(TokenUsage(**checkpoint["usage"]) + tally.usage, tally.model_version)
        result = label_result(info["video_id"], info["sha"], self.config.model, first, answer, both)
        self.labeler.cache.store(key, result.to_json())
        self.labeler.cache.discard(key, ".turn1")
        self._fresh[key] = result
        logger.info(
            "video %s: %s (confidence %.2f)", info["video_id"], answer.label, answer.confidence
        )

    def _request_error(
        self, turn: int, key: str, info: dict[str, Any], error: types.JobError, job_name: str
    ) -> None:
        code = error.code or 0
        detail = self.labeler.scrub(f"{job_name}: {code} {error.message or ''}".strip())
        if code in (403, 404):  # most likely its uploaded video is gone: upload it again
            self.state.forget_upload(info["sha"])
        if code == 429:
            reason = "rate_limited"
        elif code in RETRYABLE_HTTP_CODES:
            reason = "server_error"
        else:
            reason = "api_error"
        self._failed(turn, key, info, reason, detail)

    def _failed(
        self,
        turn: int,
        key: str,
        info: dict[str, Any],
        reason: str,
        detail: str,
        *,
        final: bool = False,
    ) -> None:
        """One failed try of the request; `final`: no more tries in this run."""
        tries = self._max if final else self._tries[key, turn] + 1
        self._tries[key, turn] = tries
        logger.warning(
            "video %s, turn %d: %s (try %d/%d): %s",
            info["video_id"],
            turn,
            reason,
            tries,
            self._max,
            detail,
        )
        self._failures[key] = Failure(
            info["video_id"], reason, detail, info["sha"], tries, self._tally(turn, key).usage
        )

    def _ask_now(self, turn: int, prepared: Prepared) -> None:
        """Retry one request through generateContent (standard price) instead of another job."""
        info = {"video_id": prepared.video.video_id, "sha": prepared.sha}
        try:
            contents = self._contents(turn, prepared)
            response = self.labeler.requests.send(
                f"video {prepared.video.video_id}: generateContent",
                lambda: self.labeler.client.models.generate_content(
                    model=self.config.model, contents=contents, config=self.labeler.generate_config
                ),
            )
        except RequestFailed as exc:
            self._failed(turn, prepared.key, info, exc.reason, self.labeler.scrub(exc.detail))
            return
        self._reply(turn, prepared.key, info, response, batch=False)

    def _delete_uploads(self) -> None:
        for video_sha, entry in list(self.state.uploads.items()):
            self.labeler.delete_upload(entry["name"])
            self.state.forget_upload(video_sha)


def label_videos(
    videos: Iterable[VideoItem | Sequence[Any]],
    config: LabelerConfig,
    settings: BatchSettings | None = None,
    *,
    api_key: str | None = None,
) -> tuple[dict[str, LabelResult | Failure], BatchSpend]:
    """Label every video through batch jobs; the outcomes by video id, and what they cost."""
    labeler = BatchLabeler(Labeler(config, api_key or resolve_api_key()), settings)
    return labeler.label_all(video_items(videos)), labeler.spend


# -- command line ------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = BatchSettings()
    parser.add_argument(
        "--batch",
        action="store_true",
        help="ask through the Batch API (half price, results within 24 h); a rerun re-attaches "
        "to the jobs of a killed one",
    )
    parser.add_argument(
        "--batch-poll-initial", type=float, default=d.poll_initial_s, help="seconds"
    )
    parser.add_argument("--batch-poll-max", type=float, default=d.poll_max_s, help="seconds")
    parser.add_argument(
        "--batch-max-tries", type=int, default=d.max_tries, help="per request and turn"
    )
    parser.add_argument(
        "--batch-retry",
        choices=RETRY_MODES,
        default=d.retry,
        help="retry failed requests in another job (batch) or at once at standard price (sync)",
    )


def settings_from_args(args: argparse.Namespace) -> BatchSettings:
    return BatchSettings(
        poll_initial_s=args.batch_poll_initial,
        poll_max_s=args.batch_poll_max,
        max_tries=args.batch_max_tries,
        retry=args.batch_retry,
    )
