"""The per-video steps of preprocessing: one implementation each, for every engine.

``preprocess.run`` (threads, resume, status file) calls these functions, and so can any
distributed engine: an Apache Beam ``DoFn`` builds ``StepSettings`` once, calls
``load_models`` in its ``setup`` (the detector's weights and the labeler's client, once per
worker) and ``build_record`` per element. The functions hold no state of their own and
write nothing but what a step must (the OpenPose binary's JSON folder, the labeler's cache).

The steps, in order, with the ``step`` a ``StepFailed`` names:

1. ``openpose_keypoints`` [openpose]: a video without an OpenPose JSON folder gets one from
   the OpenPose binary when one is configured, else no keypoint rows;
2. ``read_record`` [corpus]: the skeleton files, the video's properties and the transcript
   → a ``VideoRecord`` (``preprocess.corpora.imigue.build_records``);
3. ``make_crops`` [crops]: decode at ``crop.image_fps`` → the interviewee's box from the
   detector, tracked → 224² JPEG crops (``preprocess.video.crops``);
4. ``apply_label`` [label]: the VLM's pseudo label, confidence and reasoning; a failed label
   fails the video unless ``keep_unlabelled``;
5. ``check_record`` [record]: the record against the schema, so a bad record fails its video
   and not the shard writer.

A video that cannot be used raises ``StepFailed(step, reason)``; notes (a missing video file,
no person found, a label kept out) are appended to the ``notes`` list the caller passes.
"""

from __future__ import annotations

import dataclasses
import logging
import traceback
from collections.abc import Callable
from pathlib import Path

from hemo_jax.contract.schema import VideoRecord, validate
from preprocess.corpora.imigue import CorpusError, ManifestRow, build_records
from preprocess.keypoints.openpose import OpenPoseError
from preprocess.labeling.config import LabelerConfig, resolve_api_key
from preprocess.labeling.labeler import Labeler
from preprocess.labeling.results import Failure, LabelResult, VideoItem
from preprocess.video.crops import CropParams, VideoCrops, crop_video
from preprocess.video.decode import VideoError
from preprocess.video.detect import DEFAULT_YOLO_WEIGHTS, PersonDetector, make_detector

log = logging.getLogger(__name__)

# How a step gets one video's label: the labeler itself, or a request already in flight.
LabelSource = Callable[[VideoItem], LabelResult | Failure]


class StepFailed(Exception):
    """A video that cannot be used: the step that failed and why."""

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"{step}: {reason}")
        self.step, self.reason = step, reason


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """What the steps need besides the video: plain values, so an engine can ship it to workers.

    ``fps`` and ``frame_size`` are those of records without a video file to read them from.
    ``labeler`` None: no pseudo labels. ``openpose_binary`` None: a video without an OpenPose
    JSON folder gets no keypoint rows; else the binary writes one under ``openpose_out``.
    """

    source: str
    fps: float
    frame_size: tuple[int, int]
    detector: str = "keypoints"
    yolo_weights: str = DEFAULT_YOLO_WEIGHTS
    device: str | None = None
    crop: CropParams = CropParams()
    skeleton_errors: str = "raise"
    labeler: LabelerConfig | None = None
    keep_unlabelled: bool = False
    openpose_binary: Path | None = None
    openpose_models: Path | None = None
    openpose_out: Path | None = None

    def __post_init__(self) -> None:
        if self.openpose_binary is not None and self.openpose_out is None:
            raise ValueError("StepSettings: openpose_binary needs openpose_out")


@dataclasses.dataclass
class Models:
    """What is loaded once and shared by every video: the detector and the labeler."""

    detector: PersonDetector | None = None  # None: each video's keypoint box
    labeler: Labeler | None = None  # None: no pseudo labels

    @property
    def label(self) -> LabelSource | None:
        return None if self.labeler is None else self.labeler.label_one


def load_models(
    settings: StepSettings,
    *,
    detector: bool = True,
    labeler: bool = True,
    api_key: str | None = None,
) -> Models:
    """The models ``settings`` asks for (``detector``/``labeler`` False: not needed here).

    Missing weights or a missing API key raise here, before any video is touched.
    """
    models = Models()
    if detector and settings.detector != "keypoints":
        models.detector = make_detector(
            settings.detector, weights=settings.yolo_weights, device=settings.device
        )
    if labeler and settings.labeler is not None:
        models.labeler = Labeler(settings.labeler, api_key or resolve_api_key())
    return models


def label_item(row: ManifestRow) -> VideoItem:
    """What the labeler is asked about one video of the manifest."""
    return VideoItem(row.video_id, row.video_path, row.label)


def openpose_keypoints(row: ManifestRow, settings: StepSettings, notes: list[str]) -> ManifestRow:
    """The row with an OpenPose JSON folder, run now when the binary is configured."""
    if row.skeleton_dir is not None or row.video_path is None:
        return row
    if settings.openpose_binary is None:
        notes.append("no OpenPose JSON folder and no OpenPose binary: no keypoint rows")
        return row
    from preprocess.keypoints.openpose_binary import openpose_json_dir

    assert settings.openpose_out is not None  # checked by StepSettings
    try:
        folder = openpose_json_dir(
            row.video_path,
            Path(settings.openpose_out) / row.video_id,
            binary=settings.openpose_binary,
            model_folder=settings.openpose_models,
        )
    except Exception as e:
        raise StepFailed("openpose", reason(e)) from e
    return dataclasses.replace(row, skeleton_dir=folder)


def read_record(row: ManifestRow, settings: StepSettings) -> VideoRecord:
    """The record of one manifest row: keypoints, labels, video properties, transcript."""
    return next(
        build_records(
            [row],
            source=settings.source,
            on_error=settings.skeleton_errors,
            fps=settings.fps,
            frame_size=settings.frame_size,
        )
    )


def make_crops(
    video_path: Path, record: VideoRecord, settings: StepSettings, models: Models
) -> VideoCrops:
    """The person crops of one video, from the shared detector or the record's keypoints."""
    detector = models.detector or make_detector(
        "keypoints", keypoints=record.keypoints, keypoint_frames=record.keypoint_frames
    )
    return crop_video(video_path, detector, settings.crop)


def add_crops(record: VideoRecord, crops: VideoCrops, notes: list[str]) -> None:
    if not crops.matched.any():
        notes.append(
            f"no person found by the {crops.detector} detector: crops are of the fallback box"
        )
    record.crops = crops.crops
    record.crop_frames = crops.crop_frames
    record.boxes = crops.boxes


def apply_label(
    record: VideoRecord,
    result: LabelResult | Failure,
    settings: StepSettings,
    notes: list[str],
) -> None:
    """The label's fields on the record; a failed label fails the video unless kept out."""
    if isinstance(result, LabelResult):
        for name, value in result.record_fields().items():
            setattr(record, name, value)
        return
    why = f"{result.reason}: {result.detail}"
    if not settings.keep_unlabelled:
        raise StepFailed("label", why)
    notes.append(f"no pseudo label ({why})")


def check_record(record: VideoRecord) -> None:
    try:
        validate(record)
    except ValueError as e:
        raise StepFailed("record", reason(e)) from e


def build_record(
    row: ManifestRow,
    settings: StepSettings,
    models: Models,
    notes: list[str],
    *,
    label: LabelSource | None = None,
) -> VideoRecord:
    """One video through every step → its record; raises ``StepFailed``.

    ``label`` gets the video's label (``models.label`` asks the labeler now; a run passes
    the answer to a request it sent earlier); None: no pseudo label. A video without a
    video file becomes a keypoint-only record (no crops, no label), with a note.
    """
    step = "corpus"  # skeleton files, video properties, transcript
    try:
        row = openpose_keypoints(row, settings, notes)
        record = read_record(row, settings)
        if row.video_path is None:
            notes.append("no video file: keypoint-only record (no crops, no pseudo label)")
            return record
        step = "crops"
        crops = make_crops(row.video_path, record, settings, models)
    except StepFailed:
        raise
    except Exception as e:
        raise StepFailed(step, reason(e)) from e
    add_crops(record, crops, notes)
    if label is not None:
        apply_label(record, label(label_item(row)), settings, notes)
    check_record(record)
    return record


# Bad input, reported by its message alone; anything else also logs its traceback.
_INPUT_ERRORS = (VideoError, OpenPoseError, CorpusError, OSError, ValueError)


def reason(e: BaseException) -> str:
    """The error's message; an unexpected kind also logs its traceback."""
    if not isinstance(e, _INPUT_ERRORS):
        log.error("unexpected error\n%s", "".join(traceback.format_exception(e)))
    return f"{type(e).__name__}: {e}"
