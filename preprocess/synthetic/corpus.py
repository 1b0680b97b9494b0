"""The synthetic corpus on disk in the exact iMiGUE layout, so every command runs without
real data.

``python -m preprocess synth --out DIR --videos N --seed S`` writes::

    DIR/Label/labels_20200831.csv        one row per micro-gesture clip (iMiGUE columns)
    DIR/Label/protocol.json              split lists in the format of imigue_protocol.json
    DIR/Data/skeleton/raw/<vid>/<vid>_<12-digit frame>_keypoints.json   (OpenPose 1.3)
    DIR/Data/transcripts/<vid>.txt       the press-conference transcript (Q:/A: lines)
    DIR/videos/<vid>.mp4                 the rendered interview (mp4v)
    DIR/synth_config.json                the settings, so a rerun resumes or refuses

Video ids are zero-padded (``0007``) in names and the CSV; subject ids are plain
integers; the protocol lists integers, as iMiGUE's does (``preprocess.corpora.imigue``
canonicalises all of them to ``"7"``).

Splits. ``Label/protocol.json`` is built like iMiGUE's emotion protocol:
subjects are split in two halves; in each half every losing video is taken
with as many winning ones (seeded), giving a balanced train list and a
balanced, subject-disjoint test list (majority class scores 0.50 there); the
remaining wins are in neither list and become the ``unlabeled`` pool under
the ``emotion-protocol`` split policy. The two subject halves are also the
cross-subject lists.
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import multiprocessing
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from hemo_jax.contract import atomic
from preprocess.corpora.synthetic import CONFIG_JSON
from preprocess.synthetic.motion import generate_video
from preprocess.synthetic.plan import (
    PLAN_STREAM,
    CorpusPlan,
    SynthConfig,
    SyntheticVideo,
    plan_corpus,
    stream,
)
from preprocess.synthetic.render import write_video

CSV_COLUMNS = (
    "video_id", "label_id", "start_time", "start_frame", "end_time", "end_frame",
    "class", "subject_id", "subject_gender", "subject_nationality", "win_or_lose",
)  # fmt: skip
LABELS_CSV = Path("Label/labels_20200831.csv")
PROTOCOL_JSON = Path("Label/protocol.json")
SKELETON_DIR = Path("Data/skeleton/raw")
TRANSCRIPT_DIR = Path("Data/transcripts")
VIDEO_DIR = Path("videos")


# ---------------------------------------------------------------------------
# Protocol: balanced, subject-disjoint train/test lists like iMiGUE's.


def make_protocol(plan: CorpusPlan) -> dict:
    rng = stream(plan.config.seed, PLAN_STREAM, 1)
    subjects = rng.permutation(len(plan.subjects))
    halves = {
        "test": set(subjects[: len(subjects) // 2]),
        "train": set(subjects[len(subjects) // 2 :]),
    }
    lists: dict[str, list[int]] = {}
    for name, members in halves.items():
        videos = [i for i in range(plan.config.videos) if plan.video_subject[i] in members]
        wins = [i for i in videos if plan.labels[i] == 1]
        losses = [i for i in videos if plan.labels[i] == 0]
        k = min(len(wins), len(losses))
        chosen = list(rng.choice(wins, k, replace=False)) + list(
            rng.choice(losses, k, replace=False)
        )
        lists[name] = sorted(int(i) + 1 for i in chosen)  # video ids are index + 1
    return {
        "source": f"synthetic corpus, seed {plan.config.seed}: balanced, subject-disjoint lists "
        "built like the iMiGUE emotion protocol",
        "emotion": {"train_video_ids": lists["train"], "test_video_ids": lists["test"]},
        "micro_gesture_cross_subject": {
            "train_subject_ids": sorted(int(plan.subjects[i].subject_id) for i in halves["train"]),
            "test_subject_ids": sorted(int(plan.subjects[i].subject_id) for i in halves["test"]),
        },
    }


# ---------------------------------------------------------------------------
# Writing the corpus.


def _person_json(kp: np.ndarray) -> dict:
    a = np.round(kp.astype(np.float64), 3)
    return {
        "person_id": [-1],
        "pose_keypoints_2d": a[0:25].ravel().tolist(),
        "face_keypoints_2d": a[25:95].ravel().tolist(),
        "hand_left_keypoints_2d": a[95:116].ravel().tolist(),
        "hand_right_keypoints_2d": a[116:137].ravel().tolist(),
        "pose_keypoints_3d": [],
        "face_keypoints_3d": [],
        "hand_left_keypoints_3d": [],
        "hand_right_keypoints_3d": [],
    }


def frame_json(video: SyntheticVideo, frame: int) -> str:
    """The OpenPose 1.3 JSON of one frame; people in a seeded random order."""
    people = []
    if video.present[frame]:
        people.append(_person_json(video.keypoints[frame]))
    if video.second_present[frame]:
        people.append(_person_json(video.second_keypoints[frame]))
        if (video.scene_seed + frame) % 2:  # the player is not always listed first
            people.reverse()
    return json.dumps({"version": 1.3, "people": people}, separators=(",", ":"))


def write_skeletons(video: SyntheticVideo, folder: Path) -> None:
    """All frame files of one video, made in a temporary folder and renamed into place."""
    with atomic.replacing_dir(folder) as tmp:
        for frame in video.keypoint_frames:
            name = f"{video.video_id}_{int(frame):012d}_keypoints.json"
            (tmp / name).write_text(frame_json(video, int(frame)), encoding="utf-8")


def clip_rows(video: SyntheticVideo) -> list[dict[str, str]]:
    rows = []
    for e in video.events:
        rows.append(
            {
                "video_id": video.video_id,
                "label_id": str(e.gesture.label_id),
                "start_time": f"{e.start_frame / video.fps:.3f}",
                "start_frame": str(e.start_frame),
                "end_time": f"{e.end_frame / video.fps:.3f}",
                "end_frame": str(e.end_frame),
                "class": e.gesture.name,
                "subject_id": video.subject.subject_id,
                "subject_gender": video.subject.gender,
                "subject_nationality": video.subject.nationality,
                "win_or_lose": "win" if video.label == 1 else "lose",
            }
        )
    return rows


def _csv_text(rows: list[dict[str, str]]) -> str:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _write_video_files(
    plan: CorpusPlan, out: Path, render: bool, index: int
) -> tuple[list[dict[str, str]], int, int]:
    """One video's skeleton folder, transcript and mp4 (those not there yet); returns its
    clip rows, label and frame count."""
    video = generate_video(plan, index)
    skeleton = out / SKELETON_DIR / video.video_id
    if not skeleton.is_dir():
        write_skeletons(video, skeleton)
    transcript = out / TRANSCRIPT_DIR / f"{video.video_id}.txt"
    if not transcript.is_file():
        atomic.write_text(transcript, video.transcript)
    mp4 = out / VIDEO_DIR / f"{video.video_id}.mp4"
    if render and not mp4.is_file():
        write_video(video, mp4)
    return clip_rows(video), video.label, video.num_frames


def write_corpus(
    config: SynthConfig,
    out: Path,
    *,
    render: bool = True,
    jobs: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, int]:
    """Writes (or resumes writing) the corpus under ``out``; returns counts.

    Each video's skeleton folder, transcript and mp4 appear atomically, so a
    rerun skips what exists; the labels CSV and protocol are written last. A
    folder made with other settings is refused. ``jobs`` processes make the
    videos side by side (each video depends only on the plan, so the files are
    the same for any number).
    """
    if jobs < 1:
        raise ValueError(f"jobs={jobs} must be >= 1")
    out = Path(out)
    settings = json.dumps(config.to_json(), indent=2, sort_keys=True) + "\n"
    config_path = out / CONFIG_JSON
    if config_path.exists():
        if config_path.read_text(encoding="utf-8") != settings:
            raise FileExistsError(
                f"{config_path}: {out} holds a corpus made with other settings; "
                "choose another --out or delete it"
            )
    elif out.exists() and any(out.iterdir()):
        raise FileExistsError(
            f"{out} is not empty and holds no {CONFIG_JSON}; choose another --out"
        )
    atomic.write_text(config_path, settings)

    plan = plan_corpus(config)
    write_one = functools.partial(_write_video_files, plan, out, render)
    rows: list[dict[str, str]] = []
    counts = {"videos": config.videos, "win": 0, "lose": 0, "clips": 0, "frames": 0}

    def collect(results: Iterable[tuple[list[dict[str, str]], int, int]]) -> None:
        for done, (video_rows, label, frames) in enumerate(results, 1):  # in video order
            rows.extend(video_rows)
            counts["win" if label == 1 else "lose"] += 1
            counts["frames"] += frames
            if progress is not None:
                progress(done, config.videos)

    if jobs == 1:
        collect(map(write_one, range(config.videos)))
    else:
        # spawn: a fresh interpreter per worker, whatever threads the caller has started.
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context) as pool:
            collect(pool.map(write_one, range(config.videos)))
    counts["clips"] = len(rows)
    atomic.write_text(out / PROTOCOL_JSON, json.dumps(make_protocol(plan), indent=1) + "\n")
    atomic.write_text(out / LABELS_CSV, _csv_text(rows))
    return counts
