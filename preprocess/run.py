"""One command from a corpus on disk to raw shards: ``python -m preprocess run``.

Per video of the corpus manifest (``preprocess.corpora.imigue``; the synthetic corpus
has the same layout; ``videos`` is a folder, file or glob of unlabelled video files,
``preprocess.corpora.videos``), the steps of ``preprocess.steps``:

1. keypoints from the video's OpenPose JSON folder (``preprocess.keypoints.openpose``);
   a video without one gets it from the OpenPose binary when one is
   configured (``preprocess.keypoints.openpose_binary``), else no keypoint rows;
2. decode, sampled at ``image_fps``, → the interviewee's box from the chosen
   detector (``preprocess.video.detect``, followed by ``preprocess.video.track``) → 224² JPEG
   crops;
3. a pseudo label, confidence and reasoning from the VLM labeler
   (``preprocess.labeling.labeler``), or none (``pseudo_label`` −1);
4. one ``VideoRecord`` (with the transcript when the corpus has one) → the raw
   shard set in ``out`` (``preprocess.shards.write_videos``).

``pose`` other than OpenPose's: step 1 is replaced by a pip pose estimator on the
subject's box in each cropped frame (``preprocess.keypoints.wholebody``); ``asr``: the
transcript of a video without a transcript file is what Whisper hears
(``preprocess.speech``). Each record names its ``keypoint_source``.

This module is the local orchestration around those steps: the thread pool of label
requests, the shard writer, resuming and the status file.

Labels are asked for up front, every video's request in a thread pool (at most
the labeler's ``concurrency`` in flight), while the main thread decodes and
crops in video order; a record waits only for its own label. The labeler never
stops the run: a video whose label failed is a failed video (a record cannot be
amended once written, so it is left for the rerun, where the labeler's cache
makes every label already obtained free), unless ``keep_unlabelled`` writes it
with ``pseudo_label`` −1 and a warning.

Failures. A video that cannot be used is listed as failed with the step and the
reason, and the run goes on with the rest. The steps: ``openpose`` (the binary
failed), ``corpus`` (a malformed skeleton file, a video file that does not
open), ``crops`` (a video that ends early or does not decode), ``label`` (the
labeler's reason: rate_limited, blocked, malformed_json, …), ``record`` (the
record breaks the schema). An error of an
unexpected kind is a failure too, with its traceback in the log. A
corrupt video is failed rather than kept as a keypoint-only record: its crops
are missing, and a record written without them could not be completed later.
A labelled video with skeletons but no video file is expected (the adapter
warns about it) and becomes a keypoint-only record, with a warning.

Resuming. A rerun with the same settings skips the videos already in the shard
set and redoes the others, failed ones included; records of a killed run's
unfinished shard are redone too. Settings that change what a record holds
(detector, image rate, labeler, model, split, …) are kept in the status file
and a rerun with other ones is refused, so one shard set never mixes them.

The status file ``out/preprocess_status.json`` (written atomically after every
failure and at the end) holds the settings, the failed videos with their
reasons, the warnings per video and, once the run ends, the summary: videos
done by this run, skipped because already done, failed and why, and the
labeler's counts.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import json
import logging
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hemo_jax.contract import atomic
from hemo_jax.contract.schema import VideoRecord
from hemo_jax.contract.shards import MANIFEST, open_shards
from preprocess import steps
from preprocess.corpora import synthetic as synthetic_corpus
from preprocess.corpora.imigue import (
    IMIGUE_FPS,
    IMIGUE_FRAME_SIZE,
    CorpusLayout,
    CorpusWarning,
    ManifestRow,
    SplitSpec,
    build_manifest,
)
from preprocess.corpora.videos import video_rows
from preprocess.keypoints.wholebody import POSE_ESTIMATORS
from preprocess.labeling import prompts
from preprocess.labeling.batch import BatchLabeler
from preprocess.labeling.config import LabelerConfig
from preprocess.labeling.labeler import Labeler
from preprocess.labeling.results import Failure, LabelResult, VideoItem, summarize
from preprocess.labeling.results import format_summary as format_label_summary
from preprocess.shards import write_videos
from preprocess.video.crops import CropParams
from preprocess.video.detect import DEFAULT_YOLO_WEIGHTS, DETECTORS

log = logging.getLogger(__name__)

CORPORA = ("imigue", "synthetic", "videos")  # also the records' `source`
DEFAULT_DETECTOR = {"imigue": "yolo", "synthetic": "keypoints", "videos": "yolo"}
# --pose: OpenPose's JSON folders only, those or its binary, or a pip pose estimator.
POSE_CHOICES = ("openpose-json", "openpose-bin", *POSE_ESTIMATORS)
LABELERS = ("gemini", "gemini-batch", "none")
STATUS_FILE = "preprocess_status.json"
OPENPOSE_SUBDIR = "openpose"  # JSON folders the OpenPose binary writes, under out
LABEL_CACHE_SUBDIR = "label_cache"


class RunError(RuntimeError):
    """A run that cannot start: bad settings or an output folder it must not touch."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything one ``python -m preprocess run`` needs.

    ``labeler_config`` None: the labeler's defaults with its cache under
    ``out/label_cache``. ``openpose_binary``: run OpenPose for videos that have
    no JSON folder. ``skeleton_errors`` goes to the OpenPose reader (``"skip"``
    turns malformed frame files into zero rows instead of failing the video).
    ``pose`` (one of ``POSE_CHOICES``; None: ``openpose-bin`` when a binary is given, else
    ``openpose-json``) says where keypoints come from; ``asr`` names a Whisper model for
    transcripts from speech. The ``videos`` corpus reads ``videos`` (folders, files, globs;
    empty: ``root``) with no labels, every record of subject ``subject`` (empty: itself).
    """

    corpus: str
    root: Path
    out: Path
    detector: str | None = None  # None: DEFAULT_DETECTOR of the corpus
    labeler: str = "gemini"
    split: SplitSpec = SplitSpec()
    layout: CorpusLayout | None = None  # None: the iMiGUE layout under root
    crop: CropParams = CropParams()
    yolo_weights: str = DEFAULT_YOLO_WEIGHTS
    device: str | None = None
    labeler_config: LabelerConfig | None = None
    keep_unlabelled: bool = False
    openpose_binary: Path | None = None
    openpose_models: Path | None = None
    skeleton_errors: str = "raise"
    records_per_shard: int = 16
    progress: bool = True
    pose: str | None = None
    pose_weights: str | None = None
    asr: str | None = None
    videos: tuple[str, ...] = ()
    subject: str = ""

    def __post_init__(self) -> None:
        if self.pose is not None and self.pose not in POSE_CHOICES:
            raise RunError(f"pose {self.pose!r} is not one of {POSE_CHOICES}")
        if self.pose_choice == "openpose-bin" and self.openpose_binary is None:
            raise RunError("--pose openpose-bin needs --openpose-bin (the OpenPose binary)")
        if self.pose_choice in POSE_ESTIMATORS and self.detector_name == "keypoints":
            raise RunError(
                f"--pose {self.pose_choice} finds keypoints in the person boxes, which the "
                "keypoints detector takes from keypoints: choose --detector yolo or full-frame"
            )
        if self.corpus not in CORPORA:
            raise RunError(f"corpus {self.corpus!r} is not one of {CORPORA}")
        if self.labeler not in LABELERS:
            raise RunError(f"labeler {self.labeler!r} is not one of {LABELERS}")
        if self.detector is not None and self.detector not in DETECTORS:
            raise RunError(f"detector {self.detector!r} is not one of {DETECTORS}")
        if self.skeleton_errors not in ("raise", "skip"):
            raise RunError(f"skeleton_errors {self.skeleton_errors!r} is not raise or skip")
        if self.records_per_shard < 1:
            raise RunError(f"records_per_shard must be >= 1, got {self.records_per_shard}")

    @property
    def pose_choice(self) -> str:
        if self.pose is not None:
            return self.pose
        return "openpose-bin" if self.openpose_binary is not None else "openpose-json"

    @property
    def detector_name(self) -> str:
        return self.detector or DEFAULT_DETECTOR[self.corpus]

    @property
    def corpus_layout(self) -> CorpusLayout:
        return self.layout or CorpusLayout(Path(self.root))

    @property
    def label_settings(self) -> LabelerConfig:
        return self.labeler_config or LabelerConfig(cache_dir=Path(self.out) / LABEL_CACHE_SUBDIR)

    def step_settings(self) -> steps.StepSettings:
        """What the per-video steps need (``preprocess.steps``)."""
        fps, frame_size = _keypoint_only_defaults(self.corpus, self.root)
        return steps.StepSettings(
            source=self.corpus,
            fps=fps,
            frame_size=frame_size,
            detector=self.detector_name,
            yolo_weights=self.yolo_weights,
            device=self.device,
            crop=self.crop,
            skeleton_errors=self.skeleton_errors,
            labeler=self.label_settings if self.labeler != "none" else None,
            keep_unlabelled=self.keep_unlabelled,
            openpose_binary=self.openpose_binary if self.pose_choice == "openpose-bin" else None,
            openpose_models=self.openpose_models,
            openpose_out=Path(self.out) / OPENPOSE_SUBDIR,
            pose=self.pose_choice if self.pose_choice in POSE_ESTIMATORS else steps.OPENPOSE,
            pose_weights=self.pose_weights,
            asr=self.asr,
        )

    def record_settings(self) -> dict[str, Any]:
        """The settings that change what a record holds; a rerun must repeat them."""
        settings: dict[str, Any] = {
            "corpus": self.corpus,
            "detector": self.detector_name,
            "image_fps": self.crop.image_fps,
            "crop_size": self.crop.size,
            "jpeg_quality": self.crop.jpeg_quality,
            "crop_margin": self.crop.margin,
            "split": dataclasses.asdict(self.split),
            "labeler": self.labeler,
        }
        if self.detector_name == "yolo":
            settings["yolo_weights"] = Path(self.yolo_weights).name
        if self.pose_choice in POSE_ESTIMATORS:  # OpenPose's keypoints say so in each record
            settings["pose"] = self.pose_choice
        if self.asr is not None:
            settings["asr"] = Path(self.asr).name
        if self.labeler != "none":
            label = self.label_settings
            settings["labeler_model"] = label.model
            settings["labeler_endpoint"] = label.endpoint
            settings["prompt_version"] = prompts.PROMPT_VERSION
        return settings


@dataclasses.dataclass
class RunSummary:
    """What a run did; ``failed`` maps video id → {"step", "reason"}."""

    out: str
    videos: int  # in the corpus manifest
    done: list[str]  # records written by this run
    skipped: list[str]  # already in the shard set
    failed: dict[str, dict[str, str]]
    warnings: dict[str, list[str]]  # per video, "" for the corpus as a whole
    labeler: dict[str, Any]
    finished: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "out": self.out,
            "videos": self.videos,
            "done": len(self.done),
            "skipped": len(self.skipped),
            "failed": len(self.failed),
            "done_ids": self.done,
            "skipped_ids": self.skipped,
            "failures": self.failed,
            "failure_counts": dict(Counter(f["step"] for f in self.failed.values())),
            "warnings": self.warnings,
            "labeler": self.labeler,
            "finished": self.finished,
        }


def format_summary(summary: RunSummary) -> str:
    lines = [
        f"{summary.videos} videos in the corpus: {len(summary.done)} done, "
        f"{len(summary.skipped)} skipped (already in {summary.out}), "
        f"{len(summary.failed)} failed" + ("" if summary.finished else " (run interrupted)"),
    ]
    if summary.failed:
        lines += ["", "| video | step | reason |", "|---|---|---|"]
        for vid, f in summary.failed.items():
            reason = f["reason"].replace("|", "/").replace("\n", " ")
            lines.append(f"| {vid} | {f['step']} | {reason} |")
    noted = {vid: notes for vid, notes in summary.warnings.items() if notes}
    if noted:
        lines += ["", f"warnings ({sum(len(n) for n in noted.values())}):"]
        for vid, notes in noted.items():
            lines += [f"  {vid or 'corpus'}: {note}" for note in notes]
    if summary.labeler:
        lines += ["", "labeler: " + summary.labeler["text"].replace("\n", "\n  ")]
    lines.append(f"status: {Path(summary.out) / STATUS_FILE}")
    return "\n".join(lines)


class _Status:
    """The status file: settings, failures, warnings and the summary, written atomically."""

    def __init__(self, out: Path, settings: dict[str, Any], stored: frozenset[str]) -> None:
        self.path = out / STATUS_FILE
        self.settings = settings
        self.failed: dict[str, dict[str, str]] = {}
        self.warnings: dict[str, list[str]] = {}
        self.summary: dict[str, Any] | None = None
        previous = self._load()
        if previous is None:
            if stored:
                raise RunError(
                    f"{out} holds a shard set without {STATUS_FILE}: it was not written by "
                    "`python -m preprocess run`; choose another --out"
                )
            return
        old = previous.get("settings") or {}
        changed = sorted(k for k in old.keys() | settings.keys() if old.get(k) != settings.get(k))
        if changed and stored:
            then = {k: old.get(k) for k in changed}
            now = {k: settings.get(k) for k in changed}
            raise RunError(
                f"{out} holds {len(stored)} records made with other settings ({then} there, "
                f"{now} now); rerun with the same settings or choose another --out"
            )
        self.failed = dict(previous.get("failed") or {})
        self.warnings = {k: list(v) for k, v in (previous.get("warnings") or {}).items()}

    def _load(self) -> dict[str, Any] | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:  # only os.replace writes it, so this is not ours
            raise RunError(f"{self.path}: not JSON ({e}); move it away to start afresh") from e

    def failure(self, video_id: str, step: str, reason: str) -> None:
        self.failed[video_id] = {"step": step, "reason": reason}
        self.warnings.pop(video_id, None)

    def success(self, video_id: str, notes: list[str]) -> None:
        self.failed.pop(video_id, None)
        if notes:
            self.warnings[video_id] = notes
        else:
            self.warnings.pop(video_id, None)

    def write(self) -> None:
        atomic.write_json(
            self.path,
            {
                "settings": self.settings,
                "updated": datetime.datetime.now(datetime.UTC).isoformat(),
                "failed": self.failed,
                "warnings": self.warnings,
                "summary": self.summary,
            },
        )


def _read_manifest(layout: CorpusLayout, split: SplitSpec) -> tuple[list[ManifestRow], list[str]]:
    """The manifest and the adapter's warnings (logged, and kept for the summary)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CorpusWarning)
        rows = build_manifest(layout, split)
    notes = []
    for w in caught:
        if issubclass(w.category, CorpusWarning):
            log.warning("%s", w.message)
            notes.append(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return rows, notes


def _corpus_rows(config: RunConfig) -> tuple[list[ManifestRow], list[str]]:
    if config.corpus == "videos":
        return video_rows(config.videos or (config.root,), subject_id=config.subject), []
    return _read_manifest(config.corpus_layout, config.split)


def _keypoint_only_defaults(corpus: str, root: Path) -> tuple[float, tuple[int, int]]:
    """fps and (H, W) for records without a video file to read them from."""
    if corpus == "synthetic":
        try:
            return synthetic_corpus.video_defaults(root)
        except ValueError as e:
            raise RunError(str(e)) from e
    return IMIGUE_FPS, IMIGUE_FRAME_SIZE


def _stored_ids(out: Path) -> frozenset[str]:
    if not (out / MANIFEST).exists():
        return frozenset()
    shards = open_shards(out, allow_incomplete=True)
    try:
        return frozenset(shards.video_ids)
    finally:
        shards.close()


@contextmanager
def _progress_bar(total: int, enabled: bool) -> Iterator[Any]:
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    # disable=None: no bar when stderr is not a terminal (logs, CI).
    bar = tqdm(total=total, desc="preprocess", unit="video", disable=None if enabled else True)
    try:
        with logging_redirect_tqdm():
            yield bar
    finally:
        bar.close()


class _Labels:
    """Label requests for every video to build, answered in the background."""

    def __init__(self, labeler: Labeler | None, rows: list[ManifestRow], *, batch: bool) -> None:
        self.results: dict[str, LabelResult | Failure] = {}
        self.items = [steps.label_item(r) for r in rows]
        self._futures: dict[str, concurrent.futures.Future] = {}
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        if labeler is None or not self.items:
            return
        # More threads than request slots, so hashing and reading the next videos overlaps
        # the requests in flight; the labeler's semaphore keeps requests at `concurrency`.
        self._pool = concurrent.futures.ThreadPoolExecutor(
            2 * labeler.config.concurrency, thread_name_prefix="label"
        )
        if batch:  # every label comes from the same batch jobs
            jobs = self._pool.submit(BatchLabeler(labeler).label_all, self.items)
            for item in self.items:
                vid = item.video_id
                self._futures[vid] = self._pool.submit(lambda v=vid: jobs.result()[v])
            return
        for item in self.items:
            self._futures[item.video_id] = self._pool.submit(labeler.label_one, item)

    @property
    def enabled(self) -> bool:
        return self._pool is not None

    def wait(self, item: VideoItem) -> LabelResult | Failure:
        """The answer to the request sent for ``item`` (a ``steps.LabelSource``)."""
        try:
            result = self._futures[item.video_id].result()
        except Exception as e:  # label_one catches everything; this is a last guard
            result = Failure(item.video_id, "error", f"{type(e).__name__}: {e}")
        self.results[item.video_id] = result
        return result

    def cancel(self, video_id: str) -> None:
        """Drops a request that has not started: its video failed before it was needed."""
        future = self._futures.get(video_id)
        if future is not None and future.cancel():
            del self._futures[video_id]

    def close(self, *, wait: bool = True) -> None:
        """Cancels the requests not started; ``wait`` for those in flight."""
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=True)

    def summary(self) -> dict[str, Any]:
        if not self.enabled:
            return {}
        stats = summarize(self.results, self.items)
        out = dataclasses.asdict(stats)
        out["text"] = format_label_summary(stats)
        return out


class _Builder:
    """``build(video_id)`` for ``write_videos``: one record, or None with the failure noted."""

    def __init__(
        self,
        settings: steps.StepSettings,
        models: steps.Models,
        labels: _Labels,
        todo: list[ManifestRow],
        status: _Status,
    ) -> None:
        self.settings, self.models, self.labels = settings, models, labels
        self.rows = {r.video_id: r for r in todo}
        self.status = status
        self.bar: Any = None

    def __call__(self, video_id: str) -> VideoRecord | None:
        row = self.rows[video_id]
        notes: list[str] = []
        try:
            record = steps.build_record(
                row,
                self.settings,
                self.models,
                notes,
                label=self.labels.wait if self.labels.enabled else None,
            )
        except steps.StepFailed as e:
            self.labels.cancel(video_id)
            log.error("video %s failed (%s): %s", video_id, e.step, e.reason)
            self.status.failure(video_id, e.step, e.reason)
            self.status.write()
            record = None
        else:
            self.status.success(video_id, notes)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(failed=len(self.status.failed), refresh=False)
        return record


@dataclasses.dataclass
class RunPlan:
    """What a run (of any engine) starts from: the manifest, what is stored, what to build."""

    out: Path
    rows: list[ManifestRow]
    stored: frozenset[str]  # video ids already in the shard set
    todo: list[ManifestRow]  # in manifest order
    skipped: list[str]
    status: _Status

    @property
    def needs_models(self) -> bool:
        """Whether any video to build has a video file (keypoint-only videos need no model)."""
        return any(r.video_path is not None for r in self.todo)

    def summary(self, *, labeler: dict[str, Any], finished: bool) -> RunSummary:
        """The summary, read back from the shard set, written into the status file."""
        try:
            now_stored = _stored_ids(self.out)
        except Exception as e:  # the summary must still be written
            log.error("cannot read the shard set back: %s", e)
            now_stored = self.stored
        summary = RunSummary(
            out=str(self.out),
            videos=len(self.rows),
            # Read back rather than counted: records of an unfinished shard are not stored.
            done=[r.video_id for r in self.todo if r.video_id in now_stored],
            skipped=self.skipped,
            failed=dict(self.status.failed),
            warnings=dict(self.status.warnings),
            labeler=labeler,
            finished=finished,
        )
        self.status.summary = summary.to_json()
        self.status.write()
        return summary


def plan_run(config: RunConfig) -> RunPlan:
    """Reads the manifest and the shard set in ``config.out``, refuses changed settings,
    and writes the status file with the corpus's warnings."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    stored = _stored_ids(out)
    status = _Status(out, config.record_settings(), stored)
    rows, corpus_notes = _corpus_rows(config)
    by_id = {r.video_id: r for r in rows}
    todo = [r for r in rows if r.video_id not in stored]
    skipped = [r.video_id for r in rows if r.video_id in stored]
    status.warnings.pop("", None)
    if corpus_notes:
        status.warnings[""] = corpus_notes
    for vid in [*skipped, *(set(status.failed) - set(by_id))]:  # stored, or left the corpus
        status.failed.pop(vid, None)
    status.write()
    log.info("%d videos: %d already stored, %d to build", len(rows), len(skipped), len(todo))
    return RunPlan(out, rows, stored, todo, skipped, status)


def run_corpus(config: RunConfig) -> RunSummary:
    """Builds the raw shard set of ``config.corpus`` in ``config.out``; see the module doc."""
    plan = plan_run(config)
    out, todo, status = plan.out, plan.todo, plan.status

    # Settings errors (missing weights, missing API key) stop the run before any work.
    settings = config.step_settings()
    with_video = [r for r in todo if r.video_path is not None]
    models = steps.load_models(settings, detector=bool(with_video), labeler=bool(with_video))
    labels = _Labels(models.labeler, with_video, batch=config.labeler == "gemini-batch")
    builder = _Builder(settings, models, labels, todo, status)
    finished = False
    try:
        with _progress_bar(len(todo), config.progress) as builder.bar:
            description = " ".join(f"{k}={v}" for k, v in status.settings.items())
            write_videos(
                [r.video_id for r in todo],
                builder,
                out,
                records_per_shard=config.records_per_shard,
                description=f"preprocess run: {description}",
            ).close()
        finished = True
    finally:
        labels.close(wait=finished)
        summary = plan.summary(labeler=labels.summary(), finished=finished)
    return summary


def parse_image_fps(text: str) -> float | str:
    """``--image-fps``: a positive rate, or ``dense`` for every frame."""
    if text == "dense":
        return text
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise ValueError(f"image fps {text!r} is neither a positive number nor 'dense'")
    return value
