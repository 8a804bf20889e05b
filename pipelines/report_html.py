"""The HTML/SVG pieces every vtok report page shares (tokenize, training, evaluation).

Pages are self-contained: inline SVG, no scripts, no external assets, so they open from an object store,
an e-mail attachment or a laptop without network. Charts take plain numbers; callers escape nothing
themselves (`esc` does it for them).
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

import numpy as np


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def fmt_s(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 120:
        return f"{s / 60:.1f} min"
    if s >= 1:
        return f"{s:.1f} s"
    return f"{s * 1000:.0f} ms"


PALETTE = {
    "vtok": "#0f766e",
    "frame_sampling": "#ea580c",
    "decode": "#2563eb",
    "encode": "#7c3aed",
    "write": "#059669",
    "driver": "#94a3b8",
    "wall": "#1e293b",
    "error": "#dc2626",
    "grid": "#e2e8f0",
    "axis": "#64748b",
}


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def nice_ticks(lo: float, hi: float, n: int = 5, integer: bool = False) -> list[float]:
    """Round tick values covering [lo, hi]; `integer` for counts, whose axis has no fractions (no 2.5 clips)."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(1, n)
    if integer:
        raw = max(raw, 1.0)
    mag = 10 ** np.floor(np.log10(raw))
    steps = (1, 2, 5, 10) if integer else (1, 2, 2.5, 5, 10)
    step = float(min((m * mag for m in steps if m * mag >= raw), default=10 * mag))
    ticks = [round(float(np.floor(lo / step) * step), 10)]
    # The last tick is at or above `hi`, so the data never runs off the top of an axis.
    while ticks[-1] < hi - step * 1e-9:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def tick_label(v: float) -> str:
    if abs(v) >= 1000:
        return f"{v / 1000:g}k"
    return f"{v:g}"


def svg_open(width: int, height: int, label: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" '
            f'role="img" aria-label="{esc(label)}" font-family="system-ui, sans-serif" font-size="12">')


def hbar_svg(items: list[tuple[str, float, str, str]], unit: str, label: str, width: int = 1000) -> str:
    """Horizontal bars: (label, value, colour, note) per row."""
    row, ml, mr, mt = 30, 210, 260, 10
    height = mt + row * len(items) + 28
    pw = width - ml - mr
    v_max = max((v for _, v, _, _ in items), default=0.0) or 1.0
    ticks = nice_ticks(0, v_max, 5)
    scale = pw / ticks[-1]
    out = [svg_open(width, height, label)]
    for t in ticks:
        xx = ml + t * scale
        out.append(f'<line x1="{xx:.1f}" x2="{xx:.1f}" y1="{mt}" y2="{mt + row * len(items)}" '
                   f'stroke="{PALETTE["grid"]}"/>')
        out.append(f'<text x="{xx:.1f}" y="{mt + row * len(items) + 16}" text-anchor="middle" '
                   f'fill="{PALETTE["axis"]}">{tick_label(t)}{unit}</text>')
    for i, (name, value, colour, note) in enumerate(items):
        y = mt + i * row
        out.append(f'<text x="{ml - 8}" y="{y + row / 2 + 4:.1f}" text-anchor="end">{esc(name)}</text>')
        out.append(f'<rect x="{ml}" y="{y + 5}" width="{max(1.0, value * scale):.1f}" height="{row - 10}" '
                   f'rx="3" fill="{colour}"/>')
        out.append(f'<text x="{ml + value * scale + 8:.1f}" y="{y + row / 2 + 4:.1f}" '
                   f'fill="{PALETTE["axis"]}">{esc(note)}</text>')
    out.append("</svg>")
    return "".join(out)


def card(title: str, value: str, note: str = "") -> str:
    return (f'<div class="card"><div class="k">{esc(title)}</div><div class="v">{esc(value)}</div>'
            f'<div class="n">{esc(note)}</div></div>')


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:0;background:#f8fafc;color:#0f172a}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:16px;margin:0 0 10px}
.sub{color:#64748b;font-size:13px;margin-bottom:18px;word-break:break-all}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:12px;margin-bottom:18px}
.card{background:#fff;border:1px solid #e2e8f0;border-radius:10px;padding:12px 14px}
.card .k{color:#64748b;font-size:12px}.card .v{font-size:22px;font-weight:600;margin:2px 0}
.card .n{color:#64748b;font-size:12px}
section{background:#fff;border:1px solid #e2e8f0;border-radius:10px;padding:16px;margin-bottom:16px}
.note{color:#475569;font-size:13px;margin:8px 0 0}
.ok{color:#047857;font-weight:600}.bad{color:#b91c1c;font-weight:600}
table{border-collapse:collapse;width:100%;font-size:13px}td,th{text-align:left;padding:4px 8px;
border-bottom:1px solid #f1f5f9;vertical-align:top}th{color:#64748b;font-weight:500}
.strip{display:flex;flex-wrap:wrap;gap:10px;margin-bottom:10px}figure{margin:0;font-size:11px;color:#475569;
width:96px}img{border-radius:6px;display:block}code{font-size:12px;word-break:break-all}
pre{background:#f1f5f9;padding:12px;border-radius:8px;overflow:auto;font-size:12px}
"""


def png_data_uri(image: np.ndarray) -> str:
    """A uint8 RGB image [H, W, 3] as an inline PNG (data: URI), written with zlib alone: no imaging library."""
    import base64
    import struct
    import zlib

    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, (image.dtype, image.shape)
    height, width, _ = image.shape
    raw = b"".join(b"\x00" + image[row].tobytes() for row in range(height))  # filter type 0 per scanline

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    return "data:image/png;base64," + base64.b64encode(png).decode()


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """An HTML table; cells are escaped unless they are Markup (already HTML)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c if isinstance(c, Markup) else esc(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


class Markup(str):
    """A string that is already HTML (a link, an image), which table() must not escape."""


def environment() -> dict[str, Any]:
    """Library versions and the machine, for a report to say where its numbers come from (no import of torch:
    versions are read from the installed packages' metadata)."""
    import os
    import platform
    from importlib import metadata

    versions = {}
    for package in ("vtok", "ray", "torch", "transformers", "diffusers", "pyarrow", "av", "decord", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    machine = {"host": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
               "cpus": os.cpu_count()}
    try:
        import psutil

        machine["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    return {"versions": versions, "machine": machine}


SERIES_COLOURS = ("#0f766e", "#ea580c", "#2563eb", "#7c3aed", "#059669", "#dc2626", "#94a3b8")


def chart_frame(
    points: list[tuple[float, float]], label: str, x_label: str, width: int, height: int, left: int, top: int,
    right: int = 20, bottom: int = 40,
) -> tuple[Callable[[float], float], Callable[[float], float], list[str]]:
    """The axes every line chart shares: the svg's opening, y grid lines with their ticks, x ticks and the x
    label, scaled to `points` (y from min(0, lowest)); returns the x and y data-to-pixel maps and the parts."""
    pw, ph = width - left - right, height - top - bottom
    x_ticks = nice_ticks(min(p[0] for p in points), max(p[0] for p in points), 8, integer=True)
    y_ticks = nice_ticks(min(0.0, min(p[1] for p in points)), max(p[1] for p in points))

    def x(v: float) -> float:
        return left + pw * (v - x_ticks[0]) / ((x_ticks[-1] - x_ticks[0]) or 1)

    def y(v: float) -> float:
        return top + ph * (1 - (v - y_ticks[0]) / ((y_ticks[-1] - y_ticks[0]) or 1))

    out = [svg_open(width, height, label)]
    for t in y_ticks:
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(t):.1f}" y2="{y(t):.1f}" stroke="{PALETTE["grid"]}"/>'
                   f'<text x="{left - 6}" y="{y(t) + 4:.1f}" text-anchor="end" fill="{PALETTE["axis"]}">'
                   f"{tick_label(t)}</text>")
    for t in x_ticks:
        out.append(f'<text x="{x(t):.1f}" y="{top + ph + 16}" text-anchor="middle" fill="{PALETTE["axis"]}">'
                   f"{tick_label(t)}</text>")
    out.append(f'<text x="{left + pw / 2}" y="{height - 6}" text-anchor="middle" fill="{PALETTE["axis"]}">'
               f"{esc(x_label)}</text>")
    return x, y, out


def line_chart_svg(
    series: list[tuple[str, list[float], list[float]]], label: str, x_label: str, y_label: str,
    width: int = 1000, height: int = 280,
) -> str:
    """Lines on shared axes, e.g. loss curves of two runs; series are (name, xs, ys), colours in order."""
    points = [(x, y) for _, xs, ys in series for x, y in zip(xs, ys) if np.isfinite(y)]
    if not points:
        return f'{svg_open(width, 60, label)}<text x="10" y="34" fill="{PALETTE["axis"]}">no data yet</text></svg>'
    ml, mt = 64, 34
    x, y, out = chart_frame(points, label, x_label, width, height, ml, mt)
    ph = height - mt - 40
    out.append(f'<text x="14" y="{mt + ph / 2}" transform="rotate(-90 14 {mt + ph / 2})" text-anchor="middle" '
               f'fill="{PALETTE["axis"]}">{esc(y_label)}</text>')
    for k, (name, xs, ys) in enumerate(series):
        colour = SERIES_COLOURS[k % len(SERIES_COLOURS)]
        path = " ".join(f"{x(a):.1f},{y(b):.1f}" for a, b in zip(xs, ys) if np.isfinite(b))
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
        out.append(f'<rect x="{ml + 10 + 200 * k}" y="10" width="12" height="12" fill="{colour}"/>'
                   f'<text x="{ml + 28 + 200 * k}" y="20">{esc(name)}</text>')
    out.append("</svg>")
    return "".join(out)


def page(title: str, subtitle: str, cards: list[str], sections: list[str]) -> str:
    """A whole self-contained report page."""
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1"><title>{esc(title)}</title><style>{CSS}</style></head>'
            f'<body><main><h1>{esc(title)}</h1><div class="sub">{esc(subtitle)}</div>'
            f'<div class="cards">{"".join(cards)}</div>{"".join(sections)}</main></body></html>\n')
