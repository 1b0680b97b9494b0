"""What a batch labelling run has paid for, kept across runs: `CACHE_DIR/batch_state.json`.

The file holds the batch jobs not yet collected (name, turn, the requests each holds: cache key
-> video id and hash, and its JSONL input file if any), the submission in progress (recorded
before its create request, so a run stopped before it learns the job's name can find the job
by display name), and the videos uploaded for jobs (their file name, URI and expiry, by
video hash). Every change is written at once, atomically, so a killed run leaves the file as
it was after its last completed step.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

from hemo_jax.contract import atomic


class BatchError(RuntimeError):
    """The batch run cannot go on (its jobs stay recorded; a rerun re-attaches to them)."""


class BatchState:
    """The state file of one cache folder; `jobs`, `uploads` and `submitting` are its parts."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            data = {"jobs": [], "uploads": {}}
        except (OSError, json.JSONDecodeError) as exc:
            raise BatchError(
                f"{self.path}: unreadable ({exc}); it names the batch jobs already paid "
                f"for, so it is not overwritten: fix or remove it"
            ) from exc
        if not isinstance(data.get("jobs"), list) or not isinstance(data.get("uploads"), dict):
            raise BatchError(f"{self.path}: needs a 'jobs' list and an 'uploads' object")
        self.jobs: list[dict[str, Any]] = data["jobs"]
        self.uploads: dict[str, dict[str, Any]] = data["uploads"]
        self.submitting: dict[str, Any] | None = data.get("submitting")

    def save(self) -> None:
        data: dict[str, Any] = {"jobs": self.jobs, "uploads": self.uploads}
        if self.submitting is not None:
            data["submitting"] = self.submitting
        atomic.write_json(self.path, data)

    def of_turn(self, turn: int) -> list[dict[str, Any]]:
        return [job for job in self.jobs if job["turn"] == turn]

    def begin(
        self,
        display_name: str,
        turn: int,
        input_file: str | None,
        requests: dict[str, dict[str, str]],
    ) -> None:
        """Record a submission about to be created."""
        self.submitting = {
            "display_name": display_name,
            "turn": turn,
            "input_file": input_file,
            "requests": requests,
        }
        self.save()

    def created(self, name: str) -> None:
        """The submission in progress is job `name` now."""
        if self.submitting is None:
            raise BatchError(f"{self.path}: job {name} created with no submission recorded")
        job = {key: value for key, value in self.submitting.items() if key != "display_name"}
        job["name"] = name
        job["submitted"] = datetime.datetime.now(datetime.UTC).isoformat()
        self.jobs.append(job)
        self.submitting = None
        self.save()

    def abandon(self) -> None:
        """The submission in progress was never created."""
        self.submitting = None
        self.save()

    def collected(self, name: str) -> None:
        """Job `name` has ended and its answers are in."""
        self.jobs = [job for job in self.jobs if job["name"] != name]
        self.save()

    def uploaded(self, video_sha: str, name: str, uri: str, expires: float) -> None:
        self.uploads[video_sha] = {"name": name, "uri": uri, "expires": expires}
        self.save()

    def forget_upload(self, video_sha: str) -> None:
        if self.uploads.pop(video_sha, None) is not None:
            self.save()
