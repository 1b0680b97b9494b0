"""Command line of the preprocessing side: ``python -m preprocess <command> ...``.

Commands:
  synth     write a synthetic corpus in the iMiGUE layout (see preprocess.synthetic)
  manifest  read a corpus (iMiGUE layout) and print its per-split counts
  run       a corpus → raw shards: crops, keypoints, pseudo labels (see preprocess.run)
  beam      the same as an Apache Beam pipeline, on any runner (see preprocess.beam)
  label     pseudo labels for video files from a VLM (see preprocess.labeling.cli)
  predict   video files → a trained run's predictions and a page per video
            (see preprocess.predict.command)

Each command is one ``_add_<name>`` function that registers its arguments and
sets ``run`` to the function that carries it out; heavy modules are imported
inside ``run`` so ``--help`` stays quick.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _add_synth(commands: argparse._SubParsersAction) -> None:
    from preprocess.synthetic.plan import LENGTHS, SynthConfig

    d = SynthConfig()
    p = commands.add_parser(
        "synth",
        help="write a synthetic corpus (labels CSV, OpenPose JSON, mp4, transcripts)",
        description="Writes a synthetic interview corpus in the iMiGUE layout under --out. "
        "A rerun with the same settings resumes; other settings are refused.",
    )
    p.add_argument("--out", type=Path, required=True, help="corpus folder to create")
    p.add_argument("--videos", type=int, default=d.videos, help="number of videos")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--win-rate", type=float, default=d.win_rate, help="share of won matches")
    p.add_argument("--videos-per-subject", type=float, default=d.videos_per_subject)
    p.add_argument("--fps", type=float, default=d.fps)
    p.add_argument("--width", type=int, default=d.width)
    p.add_argument("--height", type=int, default=d.height)
    p.add_argument("--min-seconds", type=float, default=d.min_seconds)
    p.add_argument("--max-seconds", type=float, default=d.max_seconds)
    p.add_argument(
        "--lengths",
        choices=LENGTHS,
        default=d.lengths,
        help="video lengths: uniform between --min-seconds and --max-seconds, or iMiGUE's "
        "mean and spread clipped to them (with --fps 25 --min-seconds 30 --max-seconds 1500)",
    )
    p.add_argument("--no-video", action="store_true", help="skip rendering the mp4 files")
    p.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        help="processes making videos side by side (default: one per core)",
    )
    p.set_defaults(run=_run_synth)


def _run_synth(args: argparse.Namespace) -> int:
    from preprocess.synthetic.corpus import write_corpus
    from preprocess.synthetic.plan import SynthConfig

    config = SynthConfig(
        videos=args.videos,
        seed=args.seed,
        win_rate=args.win_rate,
        videos_per_subject=args.videos_per_subject,
        fps=args.fps,
        width=args.width,
        height=args.height,
        min_seconds=args.min_seconds,
        max_seconds=args.max_seconds,
        lengths=args.lengths,
    )

    def progress(done: int, total: int) -> None:
        if done == total or done % 10 == 0:
            print(f"  {done}/{total} videos", file=sys.stderr)

    counts = write_corpus(
        config, args.out, render=not args.no_video, jobs=args.jobs, progress=progress
    )
    print(
        f"wrote {counts['videos']} videos ({counts['win']} win, {counts['lose']} lose), "
        f"{counts['clips']} clips, {counts['frames']} frames to {args.out}"
    )
    return 0


def _add_corpus_arguments(p: argparse.ArgumentParser) -> None:
    """Where the corpus keeps its parts, and the split policy (manifest and run)."""
    from preprocess.corpora.imigue import SPLIT_POLICIES, CorpusLayout, SplitSpec

    layout, split = CorpusLayout(Path(".")), SplitSpec()
    p.add_argument("--root", type=Path, required=True, help="corpus folder")
    p.add_argument("--labels", type=Path, default=layout.labels_csv)
    p.add_argument("--skeletons", type=Path, default=layout.skeleton_dir)
    p.add_argument("--video-dir", type=Path, default=layout.video_dir)
    p.add_argument("--transcripts", type=Path, default=layout.transcript_dir)
    p.add_argument(
        "--protocol",
        type=Path,
        default=None,
        help="split lists (default: <root>/Label/protocol.json, else the official ones)",
    )
    # --split-policy: the name the manifest command had first, kept for existing scripts.
    p.add_argument(
        "--split",
        "--split-policy",
        choices=SPLIT_POLICIES,
        default=split.policy,
        dest="split_policy",
        help="how videos are assigned to train/test/unlabeled (see preprocess.corpora.imigue)",
    )
    p.add_argument("--k", type=int, default=split.k, help="kfold: number of folds")
    p.add_argument("--fold", type=int, default=split.fold, help="kfold: the test fold")
    p.add_argument("--seed", type=int, default=split.seed, help="kfold: shuffling seed")


def _corpus_from_args(args: argparse.Namespace):
    """(CorpusLayout, SplitSpec) from ``_add_corpus_arguments`` options."""
    from preprocess.corpora.imigue import CorpusLayout, SplitSpec

    layout = CorpusLayout(
        root=args.root,
        labels_csv=args.labels,
        skeleton_dir=args.skeletons,
        video_dir=args.video_dir,
        transcript_dir=args.transcripts,
        protocol=args.protocol,
    )
    spec = SplitSpec(policy=args.split_policy, k=args.k, fold=args.fold, seed=args.seed)
    return layout, spec


def _add_manifest(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "manifest",
        help="read a corpus and print counts per split",
        description="Reads a corpus in the iMiGUE layout; paths are relative to --root.",
    )
    _add_corpus_arguments(p)
    p.add_argument("--json", action="store_true", help="print the manifest rows as JSON")
    p.set_defaults(run=_run_manifest)


def _run_manifest(args: argparse.Namespace) -> int:
    from preprocess.corpora.imigue import build_manifest, summarise

    layout, spec = _corpus_from_args(args)
    try:
        rows = build_manifest(layout, spec)
    except (ValueError, FileNotFoundError) as e:  # CorpusError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(
            json.dumps(
                [
                    {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(r).items()}
                    for r in rows
                ],
                indent=1,
            )
        )
        return 0
    print(f"{len(rows)} videos in {args.root} ({args.split_policy})")
    print("| split | videos | win | lose | subjects | skeleton | video | transcript |")
    print("|---|---|---|---|---|---|---|---|")
    for name, c in summarise(rows).items():
        print(
            f"| {name} | {c['videos']} | {c['win']} | {c['lose']} | {c['subjects']} | "
            f"{c['with_skeleton']} | {c['with_video']} | {c['with_transcript']} |"
        )
    return 0


def _add_run(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "run",
        help="a corpus → raw shards: crops, keypoints, pseudo labels, transcripts",
        description="Builds one VideoRecord per video of a corpus in the iMiGUE layout "
        "(person crops, OpenPose keypoints, a VLM pseudo label, the transcript) into the raw "
        "shard set --out. A rerun skips the videos already stored and retries the failed ones; "
        "the status and the summary are in --out/preprocess_status.json. Exits 1 when a video "
        "failed.",
    )
    _add_record_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=_run_run)


def _add_beam(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "beam",
        help="the same as run, as an Apache Beam pipeline (any runner)",
        description="Builds the same raw shard set as `run`, with the same per-video steps, "
        "as an Apache Beam pipeline. Options this command does not know go to Beam "
        "(--runner, --direct_running_mode, --direct_num_workers, --project, ...; see "
        "README: Preprocessing on a cluster). --out must be a file system every worker sees. "
        "Exits 1 when a video failed.",
    )
    _add_record_arguments(p)
    p.add_argument(
        "--staging",
        default=None,
        help="where workers write shards before they join the set: a folder or URL (gs://, "
        "s3://, hdfs://) both the workers and this process reach (default: OUT/.beam-staging)",
    )
    p.set_defaults(run=_run_beam, beam_args=True)


def _add_record_arguments(p: argparse.ArgumentParser) -> None:
    """What `run` and `beam` share: the corpus, the output and every per-video setting."""
    from preprocess.labeling.config import DEFAULT_MODEL, LabelerConfig
    from preprocess.run import CORPORA, DEFAULT_DETECTOR, LABEL_CACHE_SUBDIR, LABELERS
    from preprocess.video.decode import DEFAULT_IMAGE_FPS
    from preprocess.video.detect import DEFAULT_YOLO_WEIGHTS, DETECTORS

    label = LabelerConfig(cache_dir=Path("."))
    p.add_argument(
        "--corpus",
        choices=CORPORA,
        required=True,
        help="also the records' source; videos: --root is a folder of video files, one "
        "file or a glob, with no labels",
    )
    _add_corpus_arguments(p)
    p.add_argument("--subject", default="", help="videos: every video's subject (default: itself)")
    _add_pose_and_speech(p)
    p.add_argument("--out", type=Path, required=True, help="raw shard set folder")
    p.add_argument(
        "--detector",
        choices=DETECTORS,
        default=None,
        help="person boxes for the crops (default: "
        + ", ".join(f"{k} for {c}" for c, k in DEFAULT_DETECTOR.items())
        + ")",
    )
    p.add_argument("--yolo-weights", default=DEFAULT_YOLO_WEIGHTS, help="local YOLO weights file")
    p.add_argument("--device", default=None, help="cuda, cuda:N, mps or cpu (default: the best)")
    p.add_argument(
        "--image-fps",
        default=str(DEFAULT_IMAGE_FPS),
        help="crops per second of video, or 'dense' for every frame",
    )
    p.add_argument("--labeler", choices=LABELERS, default="gemini")
    p.add_argument(
        "--base-url", help="send label requests to this endpoint instead of the Gemini API"
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help="the labeler's model")
    p.add_argument(
        "--label-cache",
        type=Path,
        default=None,
        help=f"the labeler's answer cache (default: OUT/{LABEL_CACHE_SUBDIR})",
    )
    p.add_argument("--concurrency", type=int, default=label.concurrency, help="label requests")
    p.add_argument("--timeout", type=float, default=label.timeout_s, help="seconds per request")
    p.add_argument("--max-attempts", type=int, default=label.max_attempts)
    p.add_argument(
        "--keep-unlabelled",
        action="store_true",
        help="write a video whose label failed with pseudo_label -1 instead of failing it",
    )
    p.add_argument(
        "--openpose-bin",
        type=Path,
        default=None,
        help="OpenPose binary, run for videos without an OpenPose JSON folder",
    )
    p.add_argument("--openpose-models", type=Path, default=None, help="OpenPose models folder")
    p.add_argument(
        "--skeleton-errors",
        choices=("raise", "skip"),
        default="raise",
        help="a malformed skeleton file fails its video (raise) or becomes a zero row (skip)",
    )
    p.add_argument("--records-per-shard", type=int, default=16)
    p.add_argument("-v", "--verbose", action="store_true", help="log every step")


def _run_config(args: argparse.Namespace, *, progress: bool):
    """The RunConfig of `_add_record_arguments` options."""
    from preprocess.labeling.config import LabelerConfig
    from preprocess.run import LABEL_CACHE_SUBDIR, RunConfig, parse_image_fps
    from preprocess.video.crops import CropParams

    layout, spec = _corpus_from_args(args)
    return RunConfig(
        corpus=args.corpus,
        root=args.root,
        out=args.out,
        detector=args.detector,
        labeler=args.labeler,
        split=spec,
        layout=layout,
        crop=CropParams(image_fps=parse_image_fps(args.image_fps)),
        yolo_weights=args.yolo_weights,
        device=args.device,
        labeler_config=LabelerConfig(
            cache_dir=args.label_cache or args.out / LABEL_CACHE_SUBDIR,
            model=args.model,
            base_url=args.base_url,
            concurrency=args.concurrency,
            timeout_s=args.timeout,
            max_attempts=args.max_attempts,
        ),
        keep_unlabelled=args.keep_unlabelled,
        openpose_binary=args.openpose_bin,
        openpose_models=args.openpose_models,
        skeleton_errors=args.skeleton_errors,
        records_per_shard=args.records_per_shard,
        progress=progress,
        pose=args.pose,
        pose_weights=args.pose_weights,
        asr=args.asr,
        videos=(str(args.root),) if args.corpus == "videos" else (),
        subject=args.subject,
    )


def _add_pose_and_speech(p: argparse.ArgumentParser) -> None:
    """Where keypoints and transcripts come from (run and predict)."""
    from preprocess.run import POSE_CHOICES

    p.add_argument(
        "--pose",
        choices=POSE_CHOICES,
        default=None,
        help="keypoints: OpenPose's JSON folders, those or the OpenPose binary "
        "(--openpose-bin), or a pip pose estimator on the person crops (default: "
        "openpose-bin when --openpose-bin is given, else openpose-json)",
    )
    p.add_argument(
        "--pose-weights",
        default=None,
        help="the pose estimator's weights (a local file; default: its library's download)",
    )
    p.add_argument(
        "--asr",
        default=None,
        metavar="MODEL",
        help="transcripts from speech with this Whisper model (a Hugging Face name or a "
        "folder), for videos without a transcript file; off by default",
    )


def _run_run(args: argparse.Namespace) -> int:
    from preprocess.run import run_corpus

    return _run_engine(args, lambda: run_corpus(_run_config(args, progress=not args.no_progress)))


def _run_beam(args: argparse.Namespace) -> int:
    from preprocess.beam import run_beam

    def run():
        return run_beam(_run_config(args, progress=False), args.beam_args, staging=args.staging)

    return _run_engine(args, run)


def _run_engine(args: argparse.Namespace, run) -> int:
    """Runs `run()` → RunSummary, with the errors and the summary of `run` and `beam`."""
    import logging

    from preprocess.labeling.config import MissingAPIKeyError
    from preprocess.run import RunError, format_summary

    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        summary = run()
    except (RunError, MissingAPIKeyError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted; rerun the same command to resume ({args.out})", file=sys.stderr)
        return 130
    print(format_summary(summary))
    return 1 if summary.failed else 0


def _add_label(commands: argparse._SubParsersAction) -> None:
    from preprocess.labeling import cli

    p = commands.add_parser(
        "label",
        help="VLM pseudo labels (win/lose) for video files",
        description="Chain-of-Thought then Reflection pseudo labels from Gemini (or any "
        "endpoint speaking its API, --base-url), cached and resumable.",
    )
    cli.add_arguments(p)
    p.set_defaults(run=_run_label)


def _run_label(args: argparse.Namespace) -> int:
    import logging

    from preprocess.labeling import cli

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return cli.main(args)


def _add_predict(commands: argparse._SubParsersAction) -> None:
    from preprocess.run import LABELERS
    from preprocess.video.detect import DETECTORS

    p = commands.add_parser(
        "predict",
        help="video files → a trained run's predictions and a page per video",
        description="Preprocesses the videos as the run was trained (keypoint source, "
        "detector, image rate), encodes their crops and predicts with `python -m "
        "hemo_jax.encode` and `python -m hemo_jax.predict`, then writes OUT/predictions.csv "
        "and OUT/pages/<video>.html. A video that cannot be used is listed with the reason "
        "and the others go on; exits 1 when one failed.",
    )
    p.add_argument("videos", nargs="+", metavar="VIDEO", help="video files, folders or globs")
    p.add_argument(
        "--workdir", type=Path, required=True, help="a training run's workdir or a stacked one"
    )
    p.add_argument(
        "--out", type=Path, default=None, help="output folder (default: WORKDIR/predictions)"
    )
    p.add_argument("--checkpoint", default="latest", help="latest, best or a step number")
    _add_pose_and_speech(p)
    p.add_argument(
        "--detector", choices=DETECTORS, default=None, help="default: the run's, else yolo"
    )
    p.add_argument("--yolo-weights", default=None, help="default: the run's, else yolo11x.pt")
    p.add_argument("--device", default=None, help="cuda, cuda:N, mps or cpu (default: the best)")
    p.add_argument("--image-fps", default=None, help="crops per second (default: the run's)")
    p.add_argument(
        "--labeler",
        choices=[name for name in LABELERS if name != "gemini-batch"],
        default="none",
        help="a VLM's verdict and reasoning for each video (gemini needs GEMINI_API_KEY)",
    )
    p.add_argument("--base-url", help="send label requests to this endpoint instead")
    p.add_argument("--openpose-bin", type=Path, default=None, help="for --pose openpose-bin")
    p.add_argument("--openpose-models", type=Path, default=None, help="OpenPose models folder")
    p.add_argument("--windows-per-video", type=int, default=32, help="timeline windows at most")
    p.add_argument("--subject", default="", help="every video's subject (default: itself)")
    p.set_defaults(run=_run_predict)


def _run_predict(args: argparse.Namespace) -> int:
    import logging

    from preprocess.labeling.config import LabelerConfig, MissingAPIKeyError
    from preprocess.predict.command import PredictConfig, predict_videos
    from preprocess.run import RunError, parse_image_fps

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    out = args.out or args.workdir / "predictions"
    try:
        summary = predict_videos(
            PredictConfig(
                workdir=args.workdir,
                videos=tuple(args.videos),
                out=out,
                pose=args.pose,
                pose_weights=args.pose_weights,
                asr=args.asr,
                detector=args.detector,
                yolo_weights=args.yolo_weights,
                device=args.device,
                image_fps=parse_image_fps(args.image_fps) if args.image_fps else None,
                labeler=args.labeler,
                labeler_config=LabelerConfig(
                    cache_dir=out / "raw" / "label_cache", base_url=args.base_url
                ),
                checkpoint=args.checkpoint,
                openpose_binary=args.openpose_bin,
                openpose_models=args.openpose_models,
                windows_per_video=args.windows_per_video,
                subject=args.subject,
            )
        )
    # PredictError and TrainedRunError are ValueErrors: settings that fail every video.
    except (RunError, MissingAPIKeyError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary.text())
    return 1 if summary.failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m preprocess", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_synth(commands)
    _add_manifest(commands)
    _add_run(commands)
    _add_beam(commands)
    _add_label(commands)
    _add_predict(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if getattr(args, "beam_args", None):
        args.beam_args = rest  # the Beam pipeline's own options
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
