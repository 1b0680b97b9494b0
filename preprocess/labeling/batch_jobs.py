"""The Batch API calls of a batch labelling run: submit a job, find it again, poll it, read
its answers; through the labeler's google-genai client and its retries (`label_retry`).

A job's requests go inline when, serialised, they fit `inline_request_limit_bytes` (the API
takes 20 MB per request), otherwise as a JSONL file (`{"key", "request"}` per line, the
request exactly as google-genai serialises an inline one) uploaded through the Files API.
Every submission is recorded in the `BatchState` before its create request and again once
the job has a name; the display name, derived from the requests, lets a rerun (or a create
retried after a time-out) find a job whose name was never recorded.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from google.genai import _common, errors, types
from google.genai import batches as genai_batches

from hemo_jax.contract import atomic
from preprocess.labeling.batch_state import BatchError, BatchState
from preprocess.labeling.labeler import Labeler
from preprocess.labeling.retry import RequestFailed

logger = logging.getLogger(__name__)


class BatchJobs:
    """Submits, finds, polls and reads the batch jobs recorded in `state`."""

    def __init__(
        self,
        labeler: Labeler,
        state: BatchState,
        *,
        inline_request_limit_bytes: int,
        inputs_dir: Path,
    ) -> None:
        self.labeler = labeler
        self.state = state
        self.inline_request_limit_bytes = inline_request_limit_bytes
        self.inputs_dir = inputs_dir

    def submit(
        self,
        turn: int,
        requests: list[types.InlinedRequest],
        held: dict[str, dict[str, str]],
    ) -> str:
        """Create the job of `requests` (keyed as `held`, in order); its name, recorded."""
        lines = [
            json.dumps({"key": key, "request": self._rest_request(request)["request"]})
            for key, request in zip(held, requests, strict=True)
        ]
        jsonl = ("\n".join(lines) + "\n").encode("utf-8")
        digest = hashlib.sha256(jsonl).hexdigest()[:16]
        display_name = f"hemo-label-turn{turn}-{digest}"
        input_file = None
        src: Any = requests
        if len(jsonl) > self.inline_request_limit_bytes:
            path = self.inputs_dir / f"{display_name}.jsonl"
            atomic.write_bytes(path, jsonl)
            input_file = self.labeler.upload(path, "jsonl", display_name).name
            src = input_file
        # Recorded before the job exists: a run killed before it learns the job's name finds
        # the job by this display name (see `recover`).
        self.state.begin(display_name, turn, input_file, held)
        tried = False

        def create() -> types.BatchJob:
            nonlocal tried
            # A create that timed out may have reached the API: look before creating again.
            if tried and (created := self.find(display_name)) is not None:
                return created
            tried = True
            return self.labeler.client.batches.create(
                model=self.labeler.config.model,
                src=src,
                config=types.CreateBatchJobConfig(display_name=display_name),
            )

        job = self.labeler.requests.send(f"turn {turn}: batch create", create)
        self.state.created(str(job.name))
        logger.info(
            "turn %d: submitted %s with %d request(s) (%s, %d bytes)",
            turn,
            job.name,
            len(held),
            "JSONL file" if input_file else "inline",
            len(jsonl),
        )
        return str(job.name)

    def _rest_request(self, request: types.InlinedRequest) -> dict[str, Any]:
        """The request as google-genai sends it inline, for a JSONL line of the same request.

        google-genai's own converter (private, but the one its inline path uses), so a request
        is the same whichever way its job travels.
        """
        api_client = self.labeler.client._api_client
        converted = genai_batches._InlinedRequest_to_mldev(api_client, request)
        return _common.encode_unserializable_types(_common.convert_to_dict(converted))

    def find(self, display_name: str) -> types.BatchJob | None:
        """The job of that display name, if the API has one."""
        return self.labeler.requests.send(
            f"find batch {display_name}",
            lambda: next(
                (
                    job
                    for job in self.labeler.client.batches.list(config={"page_size": 100})
                    if job.display_name == display_name
                ),
                None,
            ),
        )

    def recover(self) -> None:
        """A run stopped while creating a job: record the job if the API made it."""
        submitting = self.state.submitting
        if submitting is None:
            return
        job = self.find(submitting["display_name"])
        if job is not None:
            logger.info("found %s, created by a run that was stopped", job.name)
            self.state.created(str(job.name))
        else:
            logger.info("%s was never created", submitting["display_name"])
            self.state.abandon()

    def poll(self, job: dict[str, Any]) -> types.BatchJob | None:
        """The recorded job's state; None when the API no longer knows it."""

        def get() -> types.BatchJob | None:
            try:
                return self.labeler.client.batches.get(name=job["name"])
            except errors.ClientError as exc:
                if exc.code in (403, 404):
                    return None
                raise

        try:
            return self.labeler.requests.send(f"{job['name']}: poll", get)
        except RequestFailed as exc:
            raise BatchError(
                f"cannot poll {job['name']} ({exc.reason}: {exc.detail}); rerun the same "
                f"command to re-attach to it (recorded in {self.state.path})"
            ) from exc

    def answers(self, job: types.BatchJob, keys: list[str]) -> dict[str, types.InlinedResponse]:
        """The finished job's answers by request key, inline or from its responses file.

        An answer without its key is taken by position: the API answers in request order.
        """
        dest = job.dest
        if dest is not None and dest.inlined_responses is not None:
            return {
                (r.metadata or {}).get("key") or key: r
                for key, r in zip(keys, dest.inlined_responses, strict=False)
            }
        if dest is None or not dest.file_name:
            raise BatchError(f"{job.name} succeeded without inline answers or a responses file")
        name = dest.file_name
        data = self.labeler.requests.send(
            f"{job.name}: download", lambda: self.labeler.client.files.download(file=name)
        )
        lines = [line for line in data.decode("utf-8").splitlines() if line.strip()]
        answers = {}
        for number, (key, line) in enumerate(zip(keys, lines, strict=False), start=1):
            try:
                item = json.loads(line)
                # A line holds a response, or a google.rpc.Status as "error" (or "status").
                status = item.get("error") or item.get("status")
                response = item.get("response")
                answers[str(item.get("key") or key)] = types.InlinedResponse(
                    response=(
                        types.GenerateContentResponse.model_validate(response)
                        if response is not None
                        else None
                    ),
                    error=(
                        types.JobError(code=status.get("code"), message=status.get("message"))
                        if status is not None
                        else None
                    ),
                )
            except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as exc:
                raise BatchError(f"{name} line {number}: not an answer ({exc})") from exc
        return answers
