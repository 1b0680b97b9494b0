"""Prints what a shard set holds: ``python -m hemo_jax.data.describe PATH [--json] [--verify]``.

Counts per split, label and pseudo label, sequence lengths, which optional
fields are present, schema version and shard count. The numbers come from the
manifest; ``--verify`` also checks every checksum and decodes every record to
confirm the manifest tells the truth.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np

from hemo_jax.contract.schema import SPLITS
from hemo_jax.contract.shards import RecordInfo, ShardError, ShardSet, open_shards

LABEL_NAMES = {1: "win", 0: "lose", -1: "unknown"}


def _lengths(values: list[int]) -> dict[str, float]:
    if not values:
        return {"min": 0, "median": 0, "max": 0, "total": 0}
    a = np.asarray(values)
    return {
        "min": int(a.min()),
        "median": float(np.median(a)),
        "max": int(a.max()),
        "total": int(a.sum()),
    }


def _count_labels(labels: Iterable[int]) -> dict[str, int]:
    counts = Counter(labels)
    return {name: counts.get(k, 0) for k, name in LABEL_NAMES.items()}


def summarize(shards: ShardSet) -> dict[str, Any]:
    """Everything the command prints, as a JSON-ready dict."""
    infos = shards.infos
    n = len(infos)
    by_split: dict[str, dict[str, Any]] = {}
    for split in [*SPLITS, *sorted({r.split for r in infos} - set(SPLITS))]:
        rows = [r for r in infos if r.split == split]
        if rows:
            by_split[split] = {
                "records": len(rows),
                "label": _count_labels(r.label for r in rows),
                "pseudo_label": _count_labels(r.pseudo_label for r in rows),
            }
    dims = Counter(r.feature_dim for r in infos if r.feature_dim is not None)
    return {
        "path": str(shards.root),
        "schema_version": shards.manifest.get("schema_version"),
        "complete": bool(shards.manifest.get("complete")),
        "created": shards.manifest.get("created", {}),
        "shards": len(shards.shards),
        "records_per_shard": shards.shard_counts,
        "bytes": sum(s.num_bytes for s in shards.shards),
        "records": n,
        "subjects": len({r.subject_id for r in infos}),
        "splits": by_split,
        "keypoint_frames": _lengths([r.num_frames for r in infos]),
        "image_rows": _lengths([r.num_images for r in infos]),
        "fields": {
            "crops": sum(r.num_crops > 0 for r in infos),
            "image_features": sum(r.feature_dim is not None for r in infos),
            "image_feature_dims": {str(d): c for d, c in dims.items()},
            "transcript": sum(r.transcript_chars > 0 for r in infos),
            "reasoning": sum(r.reasoning_chars > 0 for r in infos),
        },
    }


def verify(shards: ShardSet) -> None:
    """Checksums, then every record decoded and compared with its manifest entry."""
    shards.verify()
    for i, info in enumerate(shards.infos):
        actual = RecordInfo.of(shards.read(i))
        if actual != info:
            raise ShardError(shards.root, f"record {i} ({info.video_id!r}) differs from manifest")


def format_summary(s: dict[str, Any]) -> str:
    n = s["records"]
    lines = [
        f"shard set {s['path']}",
        f"  schema version {s['schema_version']}, {s['shards']} shards, {n} records, "
        f"{s['subjects']} subjects, {s['bytes'] / 2**20:.1f} MiB"
        + ("" if s["complete"] else "  (INCOMPLETE: writer did not finish)"),
        "",
        "| split | records | win | lose | unknown | pseudo win | pseudo lose | no pseudo |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for split, row in s["splits"].items():
        lab, ps = row["label"], row["pseudo_label"]
        lines.append(
            f"| {split} | {row['records']} | {lab['win']} | {lab['lose']} | {lab['unknown']} "
            f"| {ps['win']} | {ps['lose']} | {ps['unknown']} |"
        )
    kf, ir, f = s["keypoint_frames"], s["image_rows"], s["fields"]
    dims = ", ".join(f"D={d}: {c}" for d, c in f["image_feature_dims"].items()) or "none"
    lines += [
        "",
        f"keypoint frames per record: min {kf['min']}, median {kf['median']:g}, "
        f"max {kf['max']}, total {kf['total']}",
        f"image rows per record:      min {ir['min']}, median {ir['median']:g}, "
        f"max {ir['max']}, total {ir['total']}",
        f"records with crops {f['crops']}/{n}, image_features {f['image_features']}/{n} "
        f"({dims}), transcript {f['transcript']}/{n}, reasoning {f['reasoning']}/{n}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hemo_jax.data.describe", description=__doc__)
    parser.add_argument("path", help="shard set directory, its manifest.json, or one shard file")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--verify", action="store_true", help="check checksums and records")
    parser.add_argument(
        "--allow-incomplete", action="store_true", help="show the finished shards of a set"
    )
    args = parser.parse_args(argv)
    try:
        shards = open_shards(args.path, allow_incomplete=args.allow_incomplete)
        if args.verify:
            verify(shards)
    except ShardError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    summary = summarize(shards)
    summary["verified"] = args.verify
    print(json.dumps(summary, indent=1) if args.json else format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
