"""preprocess.labeling.cost: the dry run's plan and cost estimate, from local files only."""

from __future__ import annotations

import os

import pytest
from labeling import write_real_video

from preprocess.labeling.config import MEDIA_RESOLUTIONS, LabelerConfig
from preprocess.labeling.cost import PRICES, VIDEO_TOKENS_PER_SECOND, plan_videos, probe_duration
from preprocess.labeling.results import VideoItem


def test_plan_estimates_tokens_from_the_duration(tmp_path):
    real = tmp_path / "real.mp4"
    write_real_video(real, seconds=4.0)
    cfg = LabelerConfig(cache_dir=tmp_path / "cache", inline_limit_bytes=10)
    (plan,) = plan_videos([VideoItem("real", real)], cfg)
    assert plan.transport == "upload"
    assert plan.duration_s == pytest.approx(4.0, abs=0.2)
    video_tokens = 4.0 * 300
    assert 2 * video_tokens < plan.prompt_tokens < 2 * video_tokens + 3000
    low = LabelerConfig(cache_dir=tmp_path / "cache", media_resolution="low")
    (low_plan,) = plan_videos([VideoItem("real", real)], low)
    assert low_plan.prompt_tokens < plan.prompt_tokens and low_plan.cost_usd < plan.cost_usd


def test_unreadable_and_undecodable_videos_are_not_priced(tmp_path):
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(os.urandom(5000))
    assert probe_duration(noise) is None
    cfg = LabelerConfig(cache_dir=tmp_path / "cache")
    missing, undecodable = plan_videos(
        [VideoItem("missing", tmp_path / "missing.mp4"), VideoItem("noise", noise)], cfg
    )
    assert (missing.transport, missing.cost_usd) == ("unreadable", None)
    assert (undecodable.transport, undecodable.size_bytes) == ("inline", 5000)
    assert undecodable.duration_s is None and undecodable.cost_usd is None


def test_price_tiers():
    pro = PRICES["gemini-2.5-pro"]
    assert pro.cost(1_000_000 // 10, 0) == pytest.approx(0.125)
    assert pro.cost(300_000, 1000) == pytest.approx(300_000 * 2.5e-6 + 1000 * 15e-6)


@pytest.mark.parametrize("resolution", MEDIA_RESOLUTIONS)
def test_every_media_resolution_is_priced_at_its_own_token_rate(tmp_path, resolution):
    video = tmp_path / "real.mp4"
    write_real_video(video, seconds=4.0)
    cfg = LabelerConfig(cache_dir=tmp_path / "cache", media_resolution=resolution)
    (plan,) = plan_videos([VideoItem("real", video)], cfg)
    video_tokens = plan.duration_s * VIDEO_TOKENS_PER_SECOND[resolution]
    text_tokens = plan.prompt_tokens - 2 * round(video_tokens)  # the video is sent twice
    assert 0 < text_tokens < 3000 and plan.cost_usd > 0
