"""Command line of the preprocessing side: ``python -m preprocess <command> ...``.

Commands:
  synth     write a synthetic corpus in the iMiGUE layout (see preprocess.synth)
  manifest  read a corpus (iMiGUE layout) and print its per-split counts

Each command is one ``_add_<name>`` function that registers its arguments and
sets ``run`` to the function that carries it out; heavy modules are imported
inside ``run`` so ``--help`` stays quick.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _add_synth(commands: argparse._SubParsersAction) -> None:
    from preprocess.synth import SynthConfig

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
    p.add_argument("--no-video", action="store_true", help="skip rendering the mp4 files")
    p.set_defaults(run=_run_synth)


def _run_synth(args: argparse.Namespace) -> int:
    from preprocess.synth import SynthConfig, write_corpus

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
    )

    def progress(done: int, total: int) -> None:
        if done == total or done % 10 == 0:
            print(f"  {done}/{total} videos", file=sys.stderr)

    counts = write_corpus(config, args.out, render=not args.no_video, progress=progress)
    print(
        f"wrote {counts['videos']} videos ({counts['win']} win, {counts['lose']} lose), "
        f"{counts['clips']} clips, {counts['frames']} frames to {args.out}"
    )
    return 0


def _add_manifest(commands: argparse._SubParsersAction) -> None:
    from preprocess.imigue import SPLIT_POLICIES, CorpusLayout, SplitSpec

    layout, split = CorpusLayout(Path(".")), SplitSpec()
    p = commands.add_parser(
        "manifest",
        help="read a corpus and print counts per split",
        description="Reads a corpus in the iMiGUE layout; paths are relative to --root.",
    )
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
    p.add_argument("--split-policy", choices=SPLIT_POLICIES, default=split.policy)
    p.add_argument("--k", type=int, default=split.k, help="kfold: number of folds")
    p.add_argument("--fold", type=int, default=split.fold, help="kfold: the test fold")
    p.add_argument("--seed", type=int, default=split.seed, help="kfold: shuffling seed")
    p.add_argument("--json", action="store_true", help="print the manifest rows as JSON")
    p.set_defaults(run=_run_manifest)


def _run_manifest(args: argparse.Namespace) -> int:
    from preprocess.imigue import CorpusLayout, SplitSpec, build_manifest, summarise

    layout = CorpusLayout(
        root=args.root,
        labels_csv=args.labels,
        skeleton_dir=args.skeletons,
        video_dir=args.video_dir,
        transcript_dir=args.transcripts,
        protocol=args.protocol,
    )
    spec = SplitSpec(policy=args.split_policy, k=args.k, fold=args.fold, seed=args.seed)
    rows = build_manifest(layout, spec)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m preprocess", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_synth(commands)
    _add_manifest(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
