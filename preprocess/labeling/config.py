"""Settings of a labelling run (`LabelerConfig`) and where its API key comes from.

The key never sits in the settings: it is read from GOOGLE_API_KEY or GEMINI_API_KEY
(google-genai's precedence) by `resolve_api_key`, so settings can be logged and compared.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_MODEL = "gemini-2.5-pro"
API_KEY_ENV_VARS = ("GOOGLE_API_KEY", "GEMINI_API_KEY")
# A Gemini request carries at most 20 MB; inline bytes travel base64-encoded (4/3 larger),
# so 14 MiB of video is the most that stays safely under the limit with the prompt text.
DEFAULT_INLINE_LIMIT_BYTES = 14 * 1024 * 1024
# The API's default media resolution, or its low one (~3x fewer video tokens).
MEDIA_RESOLUTIONS = ("default", "low")


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
        if self.media_resolution not in MEDIA_RESOLUTIONS:
            raise ValueError(
                f"LabelerConfig.media_resolution {self.media_resolution!r} is not one of "
                f"{sorted(MEDIA_RESOLUTIONS)}"
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


def resolve_api_key(environ: Mapping[str, str] | None = None) -> str:
    """The API key from the environment, in google-genai's order of precedence."""
    environ = os.environ if environ is None else environ
    for name in API_KEY_ENV_VARS:
        if environ.get(name):
            return environ[name]
    raise MissingAPIKeyError(
        f"no API key: set {' or '.join(API_KEY_ENV_VARS)} (or use --dry-run, which needs none)"
    )
