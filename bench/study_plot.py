"""The study's plot: accuracy vs tokens per clip, one column of panels per category, one line per mode (SVG).

One row of panels per key grid (S = 4, 16, 64); in each panel a mode's line joins its T = 8, 16, 32 points, so
moving right along a line is adding frames, and at any x the modes compare at an equal budget. Whiskers are 95%
intervals. The y axis starts at 50% (lower when a point is lower) so that the differences at the top show;
chance is the grey dashed line, or a note where it is below the axis. The x axis is log2 tokens per clip (one step right is twice the
tokens), the same in every panel.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

COLOURS: dict[str, str] = {"vtok_r1": "#1f77b4", "vtok_r2": "#17becf", "frames_budget_r1": "#d62728",
                           "frames_budget_r2": "#ff9896", "all_frames": "#2ca02c", "key_only": "#7f7f7f"}
"""A fixed colour per mode, so every panel and every rerun reads alike."""
DRAW_ORDER: tuple[str, ...] = ("key_only", "all_frames", "frames_budget_r2", "vtok_r2", "frames_budget_r1", "vtok_r1")
"""Bottom to top."""
NAMES: dict[str, str] = {"vtok_r1": "VTok r=1 (S + R)", "vtok_r2": "VTok r=2 (S + 4R)",
                         "frames_budget_r1": "frames at VTok r=1's budget", "frames_budget_r2":
                         "frames at VTok r=2's budget", "all_frames": "all frames (T x S)",
                         "key_only": "key tokens only (S)"}


def study_svg(points: Sequence[Mapping[str, Any]], categories: Sequence[str], title: str,
              panel_w: int = 280, panel_h: int = 150) -> str:
    """SVG of `points`: dicts with mode, category, tokens, acc, lo, hi, t, s, chance (chance may be None)."""
    modes = [m for m in COLOURS if any(p["mode"] == m for p in points)]
    grids = sorted({p["s"] for p in points}) or [0]
    xs = [p["tokens"] for p in points] or [1]
    x0, x1 = math.floor(math.log2(min(xs))), math.ceil(math.log2(max(xs)))
    x1 = max(x1, x0 + 1)
    y0 = min(0.5, math.floor(10 * min((p["lo"] for p in points), default=0.5)) / 10)
    ml, mt, gap_x, gap_y = 78, 50, 22, 34
    legend_h = 22 * ((len(modes) + 2) // 3) + 20
    width = ml + len(categories) * (panel_w + gap_x)
    height = mt + len(grids) * (panel_h + gap_y) + 10 + legend_h
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11" role="img" '
           f'aria-label="{escape(title)}">', '<rect width="100%" height="100%" fill="white"/>',
           f'<text x="{ml}" y="18" font-size="14" font-weight="bold">{escape(title)}</text>']
    for i, category in enumerate(categories):
        out.append(f'<text x="{ml + i * (panel_w + gap_x) + panel_w / 2}" y="{mt - 10}" text-anchor="middle" '
                   f'font-size="13">{escape(category)}</text>')
    for j, s in enumerate(grids):
        top = mt + j * (panel_h + gap_y)
        out.append(f'<text x="8" y="{top + panel_h / 2}" font-size="13">S = {s}</text>')
        for i, category in enumerate(categories):
            out += _panel(points, modes, category, s, ml + i * (panel_w + gap_x), top, panel_w, panel_h, (x0, x1),
                          y0, axis_labels=i == 0)
    top = mt + len(grids) * (panel_h + gap_y) + 10
    for j, mode in enumerate(modes):
        x, y = ml + (j % 3) * 300, top + 22 * (j // 3)
        out.append(f'<line x1="{x}" x2="{x + 22}" y1="{y}" y2="{y}" stroke="{COLOURS[mode]}" stroke-width="2"/>')
        out.append(f'<circle cx="{x + 11}" cy="{y}" r="3.5" fill="{COLOURS[mode]}"/>')
        out.append(f'<text x="{x + 28}" y="{y + 4}">{escape(NAMES.get(mode, mode))}</text>')
    y = top + 22 * ((len(modes) + 2) // 3)
    out.append(f'<text x="{ml}" y="{y}" fill="#555">each line: one mode at T = 8, 16, 32 frames (left to right); '
               'x: tokens per clip (log scale); whiskers: 95% interval; dashed grey: chance</text>')
    out.append("</svg>")
    return "\n".join(out)


def _panel(points: Sequence[Mapping[str, Any]], modes: Sequence[str], category: str, s: int, left: int, top: int,
           w: int, h: int, x_range: tuple[int, int], y0: float, axis_labels: bool) -> list[str]:
    """The SVG elements of one (S, category) panel: x log2 tokens over x_range, y accuracy from y0 to 1."""
    x0, x1 = x_range

    def px(tokens: float) -> float:
        return left + w * (math.log2(tokens) - x0) / (x1 - x0)

    def py(acc: float) -> float:
        return top + h * (1.0 - acc) / (1.0 - y0)

    out = [f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#999"/>']
    for tick in sorted({y0, (1.0 + y0) / 2, 1.0}):
        out.append(f'<line x1="{left}" x2="{left + w}" y1="{py(tick):.1f}" y2="{py(tick):.1f}" stroke="#eee"/>')
        if axis_labels:
            out.append(f'<text x="{left - 4}" y="{py(tick) + 4:.1f}" text-anchor="end">{round(tick * 100)}%</text>')
    for e in range(x0, x1 + 1):
        x = px(2.0 ** e)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + h}" stroke="#f3f3f3"/>')
        out.append(f'<text x="{x:.1f}" y="{top + h + 13}" text-anchor="middle" font-size="9">{2 ** e}</text>')
    mine_all = [p for p in points if p["category"] == category and p["s"] == s]
    chances = [p["chance"] for p in mine_all if p.get("chance") is not None]
    chance = sum(chances) / len(chances) if chances else None
    if chance is not None and chance >= y0:
        out.append(f'<line x1="{left}" x2="{left + w}" y1="{py(chance):.1f}" y2="{py(chance):.1f}" stroke="#888" '
                   'stroke-dasharray="5,4"/>')
    elif chance is not None:
        out.append(f'<text x="{left + w - 4}" y="{top + h - 4}" text-anchor="end" fill="#888">chance '
                   f'{100 * chance:.0f}%</text>')
    # Where two modes are the same tokens (key tokens only and one frame; one frame at either r's budget), the
    # one drawn last shows: the r = 1 modes go on top.
    for mode in sorted(modes, key=DRAW_ORDER.index):
        colour = COLOURS[mode]
        mine = sorted((p for p in mine_all if p["mode"] == mode), key=lambda p: (p["t"], p["tokens"]))
        if len(mine) > 1:
            path = " ".join(f"{px(p['tokens']):.1f},{py(p['acc']):.1f}" for p in mine)
            out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for p in mine:
            x, y = px(p["tokens"]), py(p["acc"])
            out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{py(p["lo"]):.1f}" y2="{py(p["hi"]):.1f}" '
                       f'stroke="{colour}" stroke-opacity="0.5"/>')
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"><title>'
                       f'{escape(NAMES.get(mode, mode))}, S={p["s"]}, T={p["t"]}: {100 * p["acc"]:.1f}% '
                       f'[{100 * p["lo"]:.1f}, {100 * p["hi"]:.1f}], {p["tokens"]} tokens</title></circle>')
    return out
