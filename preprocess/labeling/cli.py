"""Command line of the VLM labeler: pseudo labels (win/lose) for video files.

`python -m preprocess.gemini --videos DIR --cache-dir DIR [--dry-run]` (``command_line``); the same
arguments are available to another CLI (`python -m preprocess label`) through `add_arguments`
and `main`.

Where each part lives:

- `preprocess.labeling.labeler`: the two-turn conversation (Chain-of-Thought, then Reflection) with
  Gemini or any endpoint speaking its API (`--base-url`, e.g. `preprocess.synthetic.vlm_sim`).
- `preprocess.labeling.config`: the settings and the API key (GOOGLE_API_KEY or GEMINI_API_KEY).
- `preprocess.labeling.cache`: answers cached per video hash, model, prompt version and endpoint,
  so a rerun pays only for the videos not labelled yet.
- `preprocess.labeling.retry`, `preprocess.labeling.reply`: retries with backoff; reply validation.
- `preprocess.labeling.results`: per-video results and failures, and their summary.
- `preprocess.labeling.cost`: `--dry-run`, what would be sent and an estimated cost.
- `preprocess.labeling.batch`: `--batch`, the same two turns as Batch API jobs (half price).
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from hemo_jax.contract import atomic
from preprocess.labeling import batch
from preprocess.labeling.batch_state import BatchError
from preprocess.labeling.config import MEDIA_RESOLUTIONS, LabelerConfig
from preprocess.labeling.cost import format_plan, plan_videos
from preprocess.labeling.labeler import VIDEO_MIME_TYPES, label_videos
from preprocess.labeling.results import (
    LabelResult,
    VideoItem,
    format_summary,
    summarize,
    video_items,
)


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
    parser.add_argument("--media-resolution", choices=sorted(MEDIA_RESOLUTIONS), default="default")
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
    batch.add_arguments(parser)


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
    return video_items(VideoItem(p.stem, p, labels.get(p.stem)) for p in files)


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
    if args.batch:
        try:
            results, spend = batch.label_videos(videos, config, batch.settings_from_args(args))
        except BatchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(batch.format_spend(spend))
    else:
        results = label_videos(videos, config)
    out = args.out or config.cache_dir / "labels.json"
    atomic.write_json(
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


def command_line(argv: Sequence[str] | None = None) -> int:
    """``python -m preprocess.gemini``: the labeler alone, with its own parser."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(
        prog="python -m preprocess.gemini", description="VLM pseudo-labels for videos."
    )
    add_arguments(parser)
    return main(parser.parse_args(argv))
