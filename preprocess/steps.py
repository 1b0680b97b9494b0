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

With a pose estimator (``pose`` other than OpenPose's), step 1 is skipped and
``estimate_keypoints`` [pose] runs after the crops: the estimator on the subject's box in
each cropped frame (``preprocess.keypoints.wholebody``), so keypoint rows sit at the crop
frames. With ``asr``, ``add_transcript`` [asr] writes what Whisper heard to a record that has
no transcript file (``preprocess.speech``); a video without an audio track is noted, not
failed.

A video that cannot be used raises ``StepFailed(step, reason)``; notes (a missing video file,
no person found, a label kept out) are appended to the ``notes`` list the caller passes.
"""

from __future__ import annotations

import dataclasses
import logging
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np

from hemo_jax.contract.keypoint_layout import NUM_KEYPOINTS
from hemo_jax.contract.schema import VideoRecord, validate
from preprocess.corpora.imigue import CorpusError, ManifestRow, build_records
from preprocess.keypoints.openpose import OpenPoseError
from preprocess.keypoints.wholebody import POSE_ESTIMATORS, PoseEstimator
from preprocess.labeling.config import LabelerConfig, resolve_api_key
from preprocess.labeling.labeler import Labeler
from preprocess.labeling.results import Failure, LabelResult, VideoItem
from preprocess.video.crops import CropParams, VideoCrops, crop_video
from preprocess.video.decode import VideoError, VideoReader
from preprocess.video.detect import DEFAULT_YOLO_WEIGHTS, PersonDetector, make_detector

log = logging.getLogger(__name__)

OPENPOSE = "openpose"  # keypoints from OpenPose: its JSON folder, or its binary
KEYPOINT_SOURCES = (OPENPOSE, *POSE_ESTIMATORS)  # VideoRecord.keypoint_source, when known

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
    pose: str = OPENPOSE  # OPENPOSE, or a pose estimator of preprocess.keypoints.wholebody
    pose_weights: str | None = None  # None: the estimator's own download
    asr: str | None = None  # a Whisper model name or directory; None: no speech transcripts

    def __post_init__(self) -> None:
        if self.openpose_binary is not None and self.openpose_out is None:
            raise ValueError("StepSettings: openpose_binary needs openpose_out")
        if self.pose not in KEYPOINT_SOURCES:
            raise ValueError(f"StepSettings: pose {self.pose!r} is not one of {KEYPOINT_SOURCES}")
        if self.pose != OPENPOSE and self.detector == "keypoints":
            raise ValueError(
                f"StepSettings: the pose estimator {self.pose!r} places its keypoints in the "
                "person boxes, so they cannot come from the keypoints detector: choose yolo or "
                "full-frame"
            )


@dataclasses.dataclass
class Models:
    """What is loaded once and shared by every video: detector, labeler, pose, speech."""

    detector: PersonDetector | None = None  # None: each video's keypoint box
    labeler: Labeler | None = None  # None: no pseudo labels
    pose: PoseEstimator | None = None  # None: OpenPose's keypoints
    asr: object = None  # a transformers speech-recognition pipeline; None: no transcripts

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
    if detector and settings.pose != OPENPOSE:
        from preprocess.keypoints.wholebody import make_pose_estimator

        models.pose = make_pose_estimator(
            settings.pose, weights=settings.pose_weights, device=settings.device or "cpu"
        )
    if detector and settings.asr is not None:
        from preprocess.speech.whisper_asr import load_asr

        models.asr = load_asr(settings.asr, settings.device or "cpu")
    return models


def label_item(row: ManifestRow) -> VideoItem:
    """What the labeler is asked about one video of the manifest."""
    return VideoItem(row.video_id, row.video_path, row.label)


def openpose_keypoints(row: ManifestRow, settings: StepSettings, notes: list[str]) -> ManifestRow:
    """The row with an OpenPose JSON folder, run now when the binary is configured."""
    if settings.pose != OPENPOSE:  # the estimator's keypoints replace OpenPose's
        return dataclasses.replace(row, skeleton_dir=None)
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


def estimate_keypoints(
    video_path: Path, crops: VideoCrops, settings: StepSettings, models: Models
) -> tuple[np.ndarray, np.ndarray]:
    """(keypoints [T_img, 137, 3], keypoint_frames [T_img]): the pose estimator on the
    subject's box in each cropped frame, decoded again in batches so memory stays bounded."""
    assert models.pose is not None
    wanted = {int(f): i for i, f in enumerate(crops.crop_frames)}
    keypoints = np.zeros((len(wanted), NUM_KEYPOINTS, 3), np.float32)
    batch: list[tuple[int, np.ndarray]] = []

    def flush() -> None:
        rows = [wanted[index] for index, _ in batch]
        keypoints[rows] = models.pose.estimate([f for _, f in batch], crops.boxes[rows])
        batch.clear()

    with VideoReader(video_path, strict=settings.crop.strict) as reader:
        for index, frame in reader.frames(settings.crop.image_fps):
            if index in wanted:
                batch.append((index, frame))
            if len(batch) == settings.crop.batch_size:
                flush()
    if batch:
        flush()
    return keypoints, crops.crop_frames.astype(np.int32)


def add_estimated_keypoints(
    record: VideoRecord, keypoints: np.ndarray, frames: np.ndarray, name: str, notes: list[str]
) -> None:
    record.keypoints, record.keypoint_frames = keypoints, frames
    record.keypoint_source = name
    if not (keypoints[..., 2] > 0).any():
        notes.append(f"the {name} pose estimator found no keypoints")


def add_transcript(video_path: Path, record: VideoRecord, models: Models, notes: list[str]) -> None:
    """What Whisper hears in the video, for a record without a transcript file."""
    from preprocess.speech.audio import NoAudioTrack
    from preprocess.speech.whisper_asr import transcribe

    if record.transcript:
        notes.append("transcript from the corpus's file, not from speech")
        return
    try:
        record.transcript = transcribe(video_path, models.asr).text
    except NoAudioTrack:
        notes.append("no audio track: no transcript")
        return
    if not record.transcript:
        notes.append("no speech heard: empty transcript")


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
        if record.num_frames:
            record.keypoint_source = OPENPOSE
        if row.video_path is None:
            notes.append("no video file: keypoint-only record (no crops, no pseudo label)")
            return record
        step = "crops"
        crops = make_crops(row.video_path, record, settings, models)
        if models.pose is not None:
            step = "pose"
            found = estimate_keypoints(row.video_path, crops, settings, models)
        if models.asr is not None:
            step = "asr"
            add_transcript(row.video_path, record, models, notes)
    except StepFailed:
        raise
    except Exception as e:
        raise StepFailed(step, reason(e)) from e
    add_crops(record, crops, notes)
    if models.pose is not None:
        add_estimated_keypoints(record, *found, settings.pose, notes)
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
