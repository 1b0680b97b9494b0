"""One self-contained HTML page per predicted video: the verdict, the timeline of evidence,
the keypoint motion energy, the crops at the strongest moments, the labeler's reasoning and
the transcript. Charts are inline SVG and pictures inline JPEG, so the page is one file."""

from __future__ import annotations

import base64
import html

import numpy as np

from hemo_jax.contract.schema import VideoRecord
from preprocess.predict.evidence import Window, crop_at, motion_energy, strongest_windows

WIDTH, HEIGHT, PAD = 720, 160, 30
WIN, LOSE = "#2a9d4b", "#c0392b"


def _x(seconds: float, duration: float) -> float:
    return PAD + (WIDTH - 2 * PAD) * seconds / max(duration, 1e-9)


def _axis(duration: float, label: str) -> str:
    ticks = np.linspace(0, duration, 6)
    digits = 0 if duration >= 10 else 1
    parts = [
        f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" '
        'stroke="#888"/>',
        f'<text x="{WIDTH / 2}" y="{HEIGHT - 4}" font-size="11" text-anchor="middle">'
        f"{html.escape(label)}</text>",
    ]
    for t in ticks:
        x = _x(t, duration)
        parts.append(
            f'<text x="{x:.1f}" y="{HEIGHT - PAD + 12}" font-size="10" '
            f'text-anchor="middle">{t:.{digits}f}</text>'
        )
    return "".join(parts)


def timeline_svg(windows: list[Window], fps: float, duration: float) -> str:
    """Each window as a bar at its place in the video: up (green) toward win, down (red)
    toward lose, as tall as its log-odds."""
    if not windows:
        return "<p>No windows were predicted for this video.</p>"
    scale = max(max(abs(w.log_odds) for w in windows), 1e-6)
    middle = (HEIGHT - PAD) / 2 + 5
    half = middle - 18  # room for the labels above and the axis below
    bars = []
    for w in windows:
        x1, x2 = _x(w.first_frame / fps, duration), _x((w.last_frame + 1) / fps, duration)
        h = half * abs(w.log_odds) / scale
        y = middle - h if w.log_odds > 0 else middle
        color = WIN if w.log_odds > 0 else LOSE
        tip = (
            f"frames {w.first_frame}-{w.last_frame}: P(win) {w.probability_win:.3f}, "
            f"log-odds {w.log_odds:+.3f}"
        )
        bars.append(
            f'<rect x="{x1:.1f}" y="{y:.1f}" width="{max(x2 - x1, 1):.1f}" height="{h:.1f}" '
            f'fill="{color}" fill-opacity="0.45"><title>{html.escape(tip)}</title></rect>'
        )
    return (
        f'<svg width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="timeline of evidence">'
        f'<line x1="{PAD}" y1="{middle}" x2="{WIDTH - PAD}" y2="{middle}" stroke="#444"/>'
        f'<text x="4" y="14" font-size="11" fill="{WIN}">win (log-odds +{scale:.2f})</text>'
        f'<text x="4" y="{HEIGHT - PAD - 4}" font-size="11" fill="{LOSE}">lose</text>'
        + "".join(bars)
        + _axis(duration, "seconds")
        + "</svg>"
    )


def motion_svg(record: VideoRecord, duration: float) -> str:
    energy = motion_energy(record)
    if len(energy) < 2:
        return "<p>No keypoint motion: the video has fewer than two rows of keypoints.</p>"
    top = max(float(energy.max()), 1e-9)
    points = " ".join(
        f"{_x(f / record.fps, duration):.1f},{HEIGHT - PAD - (HEIGHT - 2 * PAD) * e / top:.1f}"
        for f, e in zip(record.keypoint_frames, energy, strict=True)
    )
    return (
        f'<svg width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="keypoint motion energy">'
        f'<polyline points="{points}" fill="none" stroke="#3366cc"/>'
        f'<text x="4" y="14" font-size="11">top: {float(energy.max()):.4f} of the frame '
        "diagonal between keypoint rows</text>" + _axis(duration, "seconds") + "</svg>"
    )


def _moments(record: VideoRecord, windows: list[Window]) -> str:
    cells = []
    for w in strongest_windows(windows):
        jpeg = crop_at(record, w)
        if jpeg is None:
            continue
        side = "win" if w.log_odds > 0 else "lose"
        when = f"{w.first_frame / record.fps:.1f}-{(w.last_frame + 1) / record.fps:.1f} s"
        cells.append(
            f'<figure><img alt="crop at {when}" width="160" '
            f'src="data:image/jpeg;base64,{base64.b64encode(jpeg).decode()}">'
            f"<figcaption>{when}: toward {side} (log-odds {w.log_odds:+.2f})</figcaption>"
            "</figure>"
        )
    return "".join(cells) or "<p>No crops to show.</p>"


def render_page(
    record: VideoRecord,
    windows: list[Window],
    *,
    probability_win: float,
    model: str,
    checkpoint: str,
    notes: list[str],
) -> str:
    """The page of one video (``record`` read with its crops)."""
    last = max(
        [int(record.keypoint_frames[-1]) if record.num_frames else 0]
        + [int(record.crop_frames[-1]) if record.num_images else 0]
        + [w.last_frame for w in windows]
    )
    duration = (last + 1) / record.fps
    verdict = "win" if probability_win >= 0.5 else "lose"
    reasoning = record.reasoning or "No labeler ran for this video."
    transcript = record.transcript or "No transcript."
    notes_html = "".join(f"<li>{html.escape(n)}</li>" for n in notes) or "<li>none</li>"
    e = html.escape
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(record.video_id)}: {verdict}</title>
<style>body{{font-family:sans-serif;max-width:780px;margin:2em auto}}
figure{{display:inline-block;margin:0 8px 8px 0;width:160px;font-size:12px}}
pre{{white-space:pre-wrap;background:#f4f4f4;padding:8px}}</style></head><body>
<h1>{e(record.video_id)}</h1>
<p><b>P(win) {probability_win:.3f}</b>, P(lose) {1 - probability_win:.3f}: predicted
<b>{verdict}</b>. Model: {e(model)}; checkpoint: {e(checkpoint)}; keypoints:
{e(record.keypoint_source or "unknown")}; {duration:.1f} s at {record.fps:.2f} frames/s.</p>
<h2>Timeline of evidence</h2>
<p>Each bar is one window the model read, placed where it lies in the video; its height is
the window's log-odds toward win (up) or lose (down). The video's prediction reads the
windows of the run's evaluation together (their mean P(win); a stacked run fuses its
branches' means).</p>
{timeline_svg(windows, record.fps, duration)}
<h2>Keypoint motion energy</h2>
{motion_svg(record, duration)}
<h2>Strongest moments</h2>
{_moments(record, windows)}
<h2>Labeler's reasoning</h2>
<pre>{e(reasoning)}</pre>
<h2>Transcript</h2>
<pre>{e(transcript)}</pre>
<h2>Notes</h2>
<ul>{notes_html}</ul>
</body></html>
"""
