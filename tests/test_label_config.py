"""preprocess.labeling.config: the settings' checks, the cache's endpoint name, the API key."""

from __future__ import annotations

import pytest

from preprocess.labeling.config import (
    API_KEY_ENV_VARS,
    LabelerConfig,
    MissingAPIKeyError,
    resolve_api_key,
)
from preprocess.labeling.labeler import label_videos


def test_missing_key_is_a_clear_error(tmp_path, monkeypatch):
    for name in API_KEY_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    cfg = LabelerConfig(cache_dir=tmp_path)
    with pytest.raises(MissingAPIKeyError, match="GOOGLE_API_KEY or GEMINI_API_KEY"):
        label_videos([], cfg)
    monkeypatch.setenv("GEMINI_API_KEY", "from-gemini")
    assert resolve_api_key() == "from-gemini"
    monkeypatch.setenv("GOOGLE_API_KEY", "from-google")
    assert resolve_api_key() == "from-google"  # google-genai's precedence


def test_endpoint_names_the_host_not_the_port(tmp_path):
    assert LabelerConfig(cache_dir=tmp_path).endpoint == "gemini-api"
    local = LabelerConfig(cache_dir=tmp_path, base_url="http://127.0.0.1:8765")
    assert local.endpoint == "127.0.0.1"  # any port: a restarted simulation finds its answers


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("concurrency", 0, "concurrency must be > 0"),
        ("backoff_max_s", -1.0, "backoff_max_s must be >= 0"),
        ("media_resolution", "high", "'high' is not one of \\['default', 'low'\\]"),
    ],
)
def test_bad_settings_name_the_field(tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message):
        LabelerConfig(cache_dir=tmp_path, **{field: value})
