"""The run report: report.json (numbers) and report.html (charts) next to the token shards.

Dataset-wide counts come from the manifest, so a resumed run still reports the whole dataset;
timings, stage busy times and the tokens-per-clip distribution cover the clips this run processed.
The HTML page is self-contained (inline SVG, no scripts, no external assets), so it opens from an
object store, an e-mail attachment or a laptop without network. The config is stored with
credentials redacted: a report is meant to be shared.
"""

from __future__ import annotations

import html
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.manifest import read_json, write_bytes_atomic, write_json
from schemas.layout import REPORT_FILE, REPORT_HTML
from schemas.tokens import num_residuals
from vtok.secrets import mask_text, redact
from vtok.storage import get_fs, join

if TYPE_CHECKING:
    from pipelines.tokenize import TokenizeSummary

REPORT_VERSION = 2
# Sections that describe one run's work (the rest describe the whole dataset). A run that found nothing to
# do keeps the previous working run's, so the page never shows an 8 ms "run" in place of the real one.
RUN_SECTIONS = ("time", "stages", "throughput", "sizing")
RUN_TOKEN_FIELDS = ("vtok_per_clip", "frame_sampling_per_clip", "frames_per_clip", "vtok_total_this_run",
                    "frame_sampling_total_this_run", "histogram")

@dataclass
class ReportPaths:
    """Where a report was written."""

    json: str
    """URI of report.json."""
    html: str
    """URI of report.html."""


def _dist(values: list[float]) -> dict[str, float]:
    """count/mean/min/p50/p90/max of a list (zeros when empty, so readers need no special case)."""
    if not values:
        return {"count": 0, "mean": 0.0, "min": 0.0, "p50": 0.0, "p90": 0.0, "max": 0.0}
    a = np.asarray(values, dtype=np.float64)
    return {
        "count": int(a.size),
        "mean": float(a.mean()),
        "min": float(a.min()),
        "p50": float(np.percentile(a, 50)),
        "p90": float(np.percentile(a, 90)),
        "max": float(a.max()),
    }


def _histogram(values: list[int]) -> list[list[int]]:
    """[[value, count], ...] sorted by value: token counts are integers, so exact counts, no binning."""
    uniq, counts = np.unique(np.asarray(values, dtype=np.int64), return_counts=True)
    return [[int(v), int(c)] for v, c in zip(uniq, counts)]


def _rate(count: float, seconds: float) -> float:
    return float(count / seconds) if seconds > 0 else 0.0


def _error_samples(
    output: str, manifest: dict[str, Any], storage_options: dict[str, Any] | None, per_reason: int = 3,
    max_files: int = 20,
) -> dict[str, list[dict[str, str]]]:
    """A few quarantine rows per reason, so the report shows what went wrong, not only how often."""
    import pyarrow.parquet as pq

    samples: dict[str, list[dict[str, str]]] = {}
    # Bounded: a dataset with millions of failures must not make the report read them all.
    for entry in manifest.get("quarantine", [])[:max_files]:
        fs, path = get_fs(join(output, entry["file"]), storage_options)
        with fs.open(path, "rb") as f:
            rows = pq.read_table(f, columns=["source_uri", "reason", "message"]).to_pylist()
        for row in rows:
            bucket = samples.setdefault(row["reason"], [])
            if len(bucket) < per_reason:
                bucket.append({"source_uri": mask_text(row["source_uri"]),
                               "message": mask_text(row["message"])[:500]})
    return dict(sorted(samples.items()))


def build_report(
    summary: TokenizeSummary, config: Any, storage_options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The report.json document for one tokenize run."""

    stats = summary.stats
    manifest = summary.manifest
    grid_tokens = int(summary.key_tokens_per_clip)
    stride = int(manifest.get("tokenizer", {}).get("residual_stride", 1))
    frames = [int(t) for t in stats.frames_per_clip]
    vtok_per_clip = [grid_tokens + num_residuals(t, stride) for t in frames]
    fs_per_clip = [grid_tokens * t for t in frames]
    clips_this_run = len(stats.decode_s)
    encoded = len(frames)
    decode_busy = float(sum(stats.decode_s))
    encode_busy = float(sum(stats.encode_s))
    write_busy = float(sum(stats.write_s))
    # Per-clip encoder time is the batch time shared over its clips; errored clips carry 0 and are left out.
    encode_per_clip = [float(s) for s in stats.encode_s if s > 0]
    decode_cpus = float(getattr(getattr(config, "decode_stage", None), "num_cpus", 1.0) or 1.0)
    decode_mean = float(np.mean(stats.decode_s)) if stats.decode_s else 0.0
    encode_mean = float(np.mean(encode_per_clip)) if encode_per_clip else 0.0
    tasks_per_encoder = decode_mean / encode_mean if encode_mean > 0 else 0.0
    vt_total = int(sum(vtok_per_clip))
    fs_total = int(sum(fs_per_clip))
    vt_mean = grid_tokens + summary.mean_residual_tokens_per_clip
    dataset_bytes = int(sum(s.get("bytes", 0) for s in manifest.get("shards", [])))
    return {
        "report_version": REPORT_VERSION,
        "generated_unix": time.time(),
        "output": mask_text(summary.output),
        "fingerprint": summary.fingerprint,
        "schema_version": manifest.get("schema_version"),
        "vtok_version": manifest.get("vtok_version"),
        "format": manifest.get("format"),
        "counts": {
            "videos_in": summary.videos_in,
            "clips_out": summary.clips_out,
            "quarantined": summary.quarantined,
            "clips_this_run": clips_this_run,
            "encoded_this_run": encoded,
            "quarantined_this_run": clips_this_run - encoded,
            "shards_planned": manifest.get("num_shards_planned", 0),
            # Committed before this run plus written by it (a shard whose inputs all failed has no file).
            "shards_committed": summary.shards_written + summary.shards_skipped,
            "shard_files": len(manifest.get("shards", [])),
            "shards_written": summary.shards_written,
            "shards_skipped": summary.shards_skipped,
            "complete": bool(manifest.get("complete", False)),
        },
        "tokens": {
            "key_tokens_per_clip": grid_tokens,
            "residual_stride": stride,
            # Dataset-wide means (from every committed shard), then this run's exact distribution.
            "dataset_mean_vtok_per_clip": vt_mean,
            "dataset_mean_frame_sampling_per_clip": summary.mean_frame_tokens_per_clip,
            # None when no clip was tokenized: there is no ratio to state.
            "dataset_reduction": (summary.mean_frame_tokens_per_clip / vt_mean) if summary.clips_out else None,
            "vtok_per_clip": _dist([float(v) for v in vtok_per_clip]),
            "frame_sampling_per_clip": _dist([float(v) for v in fs_per_clip]),
            "frames_per_clip": _dist([float(v) for v in frames]),
            "vtok_total_this_run": vt_total,
            "frame_sampling_total_this_run": fs_total,
            "histogram": {"vtok": _histogram(vtok_per_clip), "frame_sampling": _histogram(fs_per_clip)},
        },
        "bytes": {
            "dataset_shard_bytes": dataset_bytes,
            "written_this_run": int(sum(stats.shard_bytes)),
            "per_clip": dataset_bytes / summary.clips_out if summary.clips_out else 0.0,
        },
        "time": {
            "started_unix": stats.started_unix,
            "wall_s": summary.wall_time_s,
            "listing_s": stats.listing_s,
            "setup_s": stats.setup_s,
            "pipeline_s": stats.pipeline_s,
        },
        "stages": {
            "decode": {
                "busy_s": decode_busy,
                "clips": clips_this_run,
                "clips_per_busy_s": _rate(clips_this_run, decode_busy),
                "per_clip_s": _dist([float(s) for s in stats.decode_s]),
            },
            "encode": {
                "busy_s": encode_busy,
                "clips": encoded,
                "clips_per_busy_s": _rate(encoded, encode_busy),
                "per_clip_s": _dist(encode_per_clip),
            },
            "write": {
                "busy_s": write_busy,
                "shards": len(stats.write_s),
                "clips": clips_this_run,
                "clips_per_busy_s": _rate(clips_this_run, write_busy),
                "bytes_per_busy_s": _rate(sum(stats.shard_bytes), write_busy),
            },
        },
        "throughput": {
            "clips_per_s_wall": _rate(clips_this_run, summary.wall_time_s),
            "clips_per_s_pipeline": _rate(clips_this_run, stats.pipeline_s),
            "timeline": [[float(t), int(n)] for t, n in stats.timeline],
        },
        "sizing": {
            "decode_s_per_clip": decode_mean,
            "encode_s_per_clip": encode_mean,
            "decode_tasks_per_encoder": tasks_per_encoder,
            "decode_cpus_per_encoder": tasks_per_encoder * decode_cpus,
            "encode_num_gpus": float(getattr(getattr(config, "encode", None), "num_gpus", 0.0) or 0.0),
        },
        "errors": {
            "by_reason": dict(sorted(summary.errors.items())),
            "samples": _error_samples(summary.output, manifest, storage_options),
        },
        "skipped": {"by_label": dict(sorted(summary.skipped.items())),
                    "examples": [mask_text(u) for u in summary.skipped_examples]},
        "config": redact(config),
        "runs": [{
            "started_unix": stats.started_unix,
            "wall_s": summary.wall_time_s,
            "clips": clips_this_run,
            "encoded": encoded,
            "quarantined": clips_this_run - encoded,
            "shards_written": summary.shards_written,
            "shards_skipped": summary.shards_skipped,
            "clips_per_s_wall": _rate(clips_this_run, summary.wall_time_s),
            "did_work": clips_this_run > 0,
            "config": redact(config),
        }],
        "shown_run": 0,
    }


def merge_previous(report: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
    """This run's report with every earlier run's record kept; a run that did nothing shows the last that did.

    `runs` lists every run oldest first; `shown_run` indexes the run whose timings the page charts.
    """
    if not previous:
        return report
    runs = previous.get("runs")
    if runs is None:  # a version-1 report: the one run it describes
        runs = [{"started_unix": previous["time"]["started_unix"], "wall_s": previous["time"]["wall_s"],
                 "clips": previous["counts"]["clips_this_run"], "did_work": previous["counts"]["clips_this_run"] > 0,
                 "config": previous.get("config")}]
    merged = dict(report)
    merged["runs"] = [*runs, *report["runs"]]
    if not report["runs"][0]["did_work"] and any(r.get("did_work") for r in runs):
        merged["shown_run"] = previous.get("shown_run", len(runs) - 1)
        for key in RUN_SECTIONS:
            merged[key] = previous[key]
        merged["tokens"] = {**report["tokens"], **{k: previous["tokens"][k] for k in RUN_TOKEN_FIELDS}}
        for key in ("clips_this_run", "encoded_this_run", "quarantined_this_run", "shards_written", "shards_skipped"):
            merged["counts"] = {**merged["counts"], key: previous["counts"][key]}
        merged["config"] = previous.get("config")
    else:
        merged["shown_run"] = len(merged["runs"]) - 1
    return merged


def write_report(
    summary: TokenizeSummary, config: Any, storage_options: dict[str, Any] | None = None
) -> ReportPaths:
    """Write report.json and report.html under the run's output (local or any fsspec URI)."""
    if storage_options is None:
        storage_options = getattr(config, "storage_options", None) or None
    paths = ReportPaths(json=join(summary.output, REPORT_FILE), html=join(summary.output, REPORT_HTML))
    report = merge_previous(build_report(summary, config, storage_options), read_json(paths.json, storage_options))
    write_json(paths.json, report, storage_options)
    write_bytes_atomic(paths.html, render_html(report).encode(), storage_options)
    return paths


def read_report(uri: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """report.json of a dataset folder, or the report file itself."""
    target = uri if uri.endswith(".json") else join(uri, REPORT_FILE)
    report = read_json(target, storage_options)
    if report is None:
        raise FileNotFoundError(f"{uri}: no {REPORT_FILE} (the dataset was made before reports, or never finished)")
    return report


# ---------------------------------------------------------------- text


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _fmt_s(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 120:
        return f"{s / 60:.1f} min"
    if s >= 1:
        return f"{s:.1f} s"
    return f"{s * 1000:.0f} ms"


def _tokens_text(t: dict[str, Any]) -> str:
    if t.get("dataset_reduction") is None:
        return "no clips were tokenized"
    return (f"VTok S+R mean {t['dataset_mean_vtok_per_clip']:.1f}; frame sampling T*S mean "
            f"{t['dataset_mean_frame_sampling_per_clip']:.1f}; {t['dataset_reduction']:.1f}x fewer")


def sizing_advice(report: dict[str, Any]) -> str:
    """The rule of thumb for decode CPUs per encoder, from this run's measured per-clip times."""
    s = report["sizing"]
    if s["encode_s_per_clip"] <= 0 or s["decode_s_per_clip"] <= 0:
        return "no clips were decoded and encoded in this run; nothing to size from"
    where = "GPU" if s["encode_num_gpus"] > 0 else "CPU"
    return (
        f"decode {s['decode_s_per_clip']:.3f} s/clip vs encode {s['encode_s_per_clip']:.3f} s/clip "
        f"({where} encoder): about {s['decode_cpus_per_encoder']:.1f} decode CPUs keep one encoder busy"
    )


def format_report(report: dict[str, Any]) -> list[str]:
    """A readable summary of report.json, for `vtok report`."""
    c, t, st, tm = report["counts"], report["tokens"], report["stages"], report["time"]
    errors = report["errors"]["by_reason"]
    vt, fs = t["vtok_per_clip"], t["frame_sampling_per_clip"]
    lines = [
        f"output             {report['output']}",
        f"fingerprint        {str(report['fingerprint'])[:16]}  (schema v{report['schema_version']}, "
        f"vtok {report['vtok_version']})",
        f"clips              {c['clips_out']} out of {c['videos_in']} inputs, {c['quarantined']} quarantined"
        f"; {c['clips_this_run']} processed in this run",
        f"shards             {c['shards_committed']} committed of {c['shards_planned']} planned "
        f"({c['shards_written']} written in this run, {c['shards_skipped']} already committed)"
        f"{'' if c['complete'] else '; INCOMPLETE'}",
        f"bytes              {_fmt_bytes(report['bytes']['dataset_shard_bytes'])} of shards "
        f"({_fmt_bytes(report['bytes']['per_clip'])} per clip)",
        f"tokens per clip    {_tokens_text(t)}",
    ]
    skipped = report.get("skipped", {}).get("by_label", {})
    if skipped:
        lines.append(f"skipped            {sum(skipped.values())} by the listing: "
                     + ", ".join(f"{k} {v}" for k, v in skipped.items()))
    runs = report.get("runs", [])
    if len(runs) > 1:
        worked = [r for r in runs if r.get("did_work")]
        lines.append(f"runs               {len(runs)} ({len(worked)} did work); timings below are of run "
                     f"{report.get('shown_run', len(runs) - 1) + 1}")
    if vt["count"]:
        lines.append(
            f"  this run         VTok p50 {vt['p50']:.0f} / p90 {vt['p90']:.0f} / max {vt['max']:.0f}; "
            f"T*S p50 {fs['p50']:.0f} / p90 {fs['p90']:.0f} / max {fs['max']:.0f}; total "
            f"{t['vtok_total_this_run']} vs {t['frame_sampling_total_this_run']}"
        )
    lines += [
        f"wall time          {_fmt_s(tm['wall_s'])} (listing {_fmt_s(tm['listing_s'])}, setup "
        f"{_fmt_s(tm['setup_s'])}, pipeline {_fmt_s(tm['pipeline_s'])})",
        f"throughput         {report['throughput']['clips_per_s_wall']:.2f} clips/s over the wall time",
        "stage busy time    "
        + ", ".join(
            f"{name} {_fmt_s(st[name]['busy_s'])} ({st[name]['clips_per_busy_s']:.1f} clips/busy-s)"
            for name in ("decode", "encode", "write")
        ),
        f"sizing             {sizing_advice(report)}",
        "errors             " + (", ".join(f"{k} {v}" for k, v in errors.items()) if errors else "none"),
    ]
    for reason, samples in report["errors"].get("samples", {}).items():
        for sample in samples[:1]:
            lines.append(f"  {reason:<16} e.g. {sample['message'][:140]}")
    return lines


# ---------------------------------------------------------------- charts (inline SVG, no dependencies)

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


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(1, n)
    mag = 10 ** np.floor(np.log10(raw))
    step = float(min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=10 * mag))
    ticks = [round(float(np.floor(lo / step) * step), 10)]
    # The last tick is at or above `hi`, so the data never runs off the top of an axis.
    while ticks[-1] < hi - step * 1e-9:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def _tick_label(v: float) -> str:
    if abs(v) >= 1000:
        return f"{v / 1000:g}k"
    return f"{v:g}"


def _svg_open(width: int, height: int, label: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" '
            f'role="img" aria-label="{_e(label)}" font-family="system-ui, sans-serif" font-size="12">')


def _bucket_rates(points: list[tuple[float, int]], t_end: float, buckets: int) -> tuple[float, list[float]]:
    """Clips finished per second in equal time buckets, from the sample-and-hold cumulative curve."""
    width = t_end / buckets
    edges = [i * width for i in range(buckets + 1)]
    done = [0] * (buckets + 1)
    k = 0
    last = 0
    for i, edge in enumerate(edges):
        while k < len(points) and points[k][0] <= edge + 1e-9:
            last = points[k][1]
            k += 1
        done[i] = last
    # Clips sampled after the last edge (rounding) belong to the last bucket.
    done[-1] = max(done[-1], points[-1][1] if points else 0)
    return width, [(done[i + 1] - done[i]) / width for i in range(buckets)]


def timeline_svg(report: dict[str, Any], width: int = 1000, height: int = 300) -> str:
    """Clips finished over time (step line, left axis) and throughput (bars, right axis), phases shaded."""
    timeline = report["throughput"]["timeline"]
    tm = report["time"]
    start = tm["listing_s"] + tm["setup_s"]
    points = [(start, 0)] + [(float(t), int(n)) for t, n in timeline]
    t_end = max(tm["wall_s"], points[-1][0], 1e-3)
    n_end = max(points[-1][1], 1)
    buckets = 50
    bucket_s, rates = _bucket_rates(points, t_end, buckets)
    ml, mr, mt, mb = 56, 64, 28, 40
    pw, ph = width - ml - mr, height - mt - mb
    n_ticks = _nice_ticks(0, n_end)
    r_ticks = _nice_ticks(0, max(rates, default=0.0) or 1.0)
    t_ticks = _nice_ticks(0, t_end, 8)

    def x(t: float) -> float:
        return ml + pw * t / t_end

    def y_left(n: float) -> float:
        return mt + ph * (1 - n / n_ticks[-1])

    def y_right(r: float) -> float:
        return mt + ph * (1 - r / r_ticks[-1])

    out = [_svg_open(width, height, "throughput over time")]
    first = timeline[0][0] if timeline else start
    # Until the first clip arrives the pool is starting (worker processes, model loads): shown, not hidden.
    phases = [(0.0, tm["listing_s"], "listing"), (tm["listing_s"], start, "setup"),
              (start, first, "workers starting")]
    for i, (a, b, name) in enumerate(phases):
        if b - a > 0:
            out.append(f'<rect x="{x(a):.1f}" y="{mt}" width="{max(0.5, x(b) - x(a)):.1f}" height="{ph}" '
                       f'fill="{("#f1f5f9", "#e2e8f0", "#f8fafc")[i]}"/>')
            if x(b) - x(a) > 60:
                out.append(f'<text x="{(x(a) + x(b)) / 2:.1f}" y="{mt + 14}" text-anchor="middle" '
                           f'fill="{PALETTE["axis"]}">{name}</text>')
    for n in n_ticks:
        out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{y_left(n):.1f}" y2="{y_left(n):.1f}" '
                   f'stroke="{PALETTE["grid"]}"/>')
        out.append(f'<text x="{ml - 6}" y="{y_left(n) + 4:.1f}" text-anchor="end" fill="{PALETTE["vtok"]}">'
                   f'{_tick_label(n)}</text>')
    for r in r_ticks:
        out.append(f'<text x="{ml + pw + 6}" y="{y_right(r) + 4:.1f}" fill="{PALETTE["encode"]}">'
                   f'{_tick_label(r)}</text>')
    for t in t_ticks:
        if t > t_end * 1.0001:
            continue
        out.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{mt + ph}" y2="{mt + ph + 4}" '
                   f'stroke="{PALETTE["axis"]}"/>')
        out.append(f'<text x="{x(t):.1f}" y="{mt + ph + 18}" text-anchor="middle" fill="{PALETTE["axis"]}">'
                   f'{_tick_label(t)}</text>')
    for i, r in enumerate(rates):
        if r > 0:
            out.append(f'<rect x="{x(i * bucket_s) + 0.5:.1f}" y="{y_right(r):.1f}" '
                       f'width="{max(1.0, x(bucket_s) - ml - 1):.1f}" height="{mt + ph - y_right(r):.1f}" '
                       f'fill="{PALETTE["encode"]}" fill-opacity="0.35"><title>{r:.2f} clips/s at '
                       f'{i * bucket_s:.1f}-{(i + 1) * bucket_s:.1f} s</title></rect>')
    step: list[str] = []
    prev = 0
    for t, n in points:
        step.append(f"{x(t):.1f},{y_left(prev):.1f} {x(t):.1f},{y_left(n):.1f}")
        prev = n
    step.append(f"{x(t_end):.1f},{y_left(prev):.1f}")
    out.append(f'<polyline points="{" ".join(step)}" fill="none" stroke="{PALETTE["vtok"]}" stroke-width="2.5"/>')
    out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{mt + ph}" y2="{mt + ph}" stroke="{PALETTE["axis"]}"/>')
    out.append(f'<text x="{ml + pw / 2}" y="{height - 6}" text-anchor="middle" fill="{PALETTE["axis"]}">'
               f'seconds since the run started</text>')
    out.append(f'<text x="{ml}" y="{mt - 10}" fill="{PALETTE["vtok"]}">clips finished (line)</text>')
    out.append(f'<text x="{ml + pw}" y="{mt - 10}" text-anchor="end" fill="{PALETTE["encode"]}">'
               f'clips/s per {bucket_s:.2g} s (bars)</text>')
    out.append("</svg>")
    return "".join(out)


def hbar_svg(items: list[tuple[str, float, str, str]], unit: str, label: str, width: int = 1000) -> str:
    """Horizontal bars: (label, value, colour, note) per row."""
    row, ml, mr, mt = 30, 210, 260, 10
    height = mt + row * len(items) + 28
    pw = width - ml - mr
    v_max = max((v for _, v, _, _ in items), default=0.0) or 1.0
    ticks = _nice_ticks(0, v_max, 5)
    scale = pw / ticks[-1]
    out = [_svg_open(width, height, label)]
    for t in ticks:
        xx = ml + t * scale
        out.append(f'<line x1="{xx:.1f}" x2="{xx:.1f}" y1="{mt}" y2="{mt + row * len(items)}" '
                   f'stroke="{PALETTE["grid"]}"/>')
        out.append(f'<text x="{xx:.1f}" y="{mt + row * len(items) + 16}" text-anchor="middle" '
                   f'fill="{PALETTE["axis"]}">{_tick_label(t)}{unit}</text>')
    for i, (name, value, colour, note) in enumerate(items):
        y = mt + i * row
        out.append(f'<text x="{ml - 8}" y="{y + row / 2 + 4:.1f}" text-anchor="end">{_e(name)}</text>')
        out.append(f'<rect x="{ml}" y="{y + 5}" width="{max(1.0, value * scale):.1f}" height="{row - 10}" '
                   f'rx="3" fill="{colour}"/>')
        out.append(f'<text x="{ml + value * scale + 8:.1f}" y="{y + row / 2 + 4:.1f}" '
                   f'fill="{PALETTE["axis"]}">{_e(note)}</text>')
    out.append("</svg>")
    return "".join(out)


def histogram_svg(report: dict[str, Any], width: int = 1000, height: int = 280) -> str:
    """Tokens per clip: VTok S+R next to frame-sampling T*S, on one axis so the gap is visible."""
    hist = report["tokens"]["histogram"]
    series = [("VTok S+R", hist["vtok"], PALETTE["vtok"]), ("frame sampling T*S", hist["frame_sampling"],
                                                          PALETTE["frame_sampling"])]
    values = [v for _, h, _ in series for v, _ in h]
    if not values:
        return (f'{_svg_open(width, 60, "tokens per clip")}<text x="10" y="34" fill="{PALETTE["axis"]}">'
                f"no clips were tokenized in this run</text></svg>")
    ml, mr, mt, mb = 56, 20, 34, 40
    pw, ph = width - ml - mr, height - mt - mb
    v_max = max(values) * 1.08 + 1
    n_bins = 60
    bin_w = v_max / n_bins
    binned = []
    for name, h, colour in series:
        counts = np.zeros(n_bins, dtype=np.int64)
        for v, c in h:
            counts[min(n_bins - 1, int(v / bin_w))] += c
        binned.append((name, counts, colour))
    c_max = max(int(c.max()) for _, c, _ in binned) or 1
    c_ticks = _nice_ticks(0, c_max)
    v_ticks = _nice_ticks(0, v_max, 10)

    def x(v: float) -> float:
        return ml + pw * v / v_max

    def y(c: float) -> float:
        return mt + ph * (1 - c / c_ticks[-1])

    out = [_svg_open(width, height, "tokens per clip histogram")]
    for c in c_ticks:
        out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{y(c):.1f}" y2="{y(c):.1f}" stroke="{PALETTE["grid"]}"/>')
        out.append(f'<text x="{ml - 6}" y="{y(c) + 4:.1f}" text-anchor="end" fill="{PALETTE["axis"]}">'
                   f'{_tick_label(c)}</text>')
    for v in v_ticks:
        if v > v_max:
            continue
        out.append(f'<text x="{x(v):.1f}" y="{mt + ph + 18}" text-anchor="middle" fill="{PALETTE["axis"]}">'
                   f'{_tick_label(v)}</text>')
    bar = pw / n_bins
    for name, counts, colour in binned:
        for i, c in enumerate(counts):
            if c:
                out.append(f'<rect x="{ml + i * bar + 1:.1f}" y="{y(c):.1f}" width="{max(1.0, bar - 2):.1f}" '
                           f'height="{mt + ph - y(c):.1f}" fill="{colour}" fill-opacity="0.85">'
                           f'<title>{_e(name)}: {c} clips near {i * bin_w:.0f} tokens</title></rect>')
    t = report["tokens"]
    means = [("VTok S+R", t["vtok_per_clip"]["mean"], PALETTE["vtok"]),
             ("frame sampling T*S", t["frame_sampling_per_clip"]["mean"], PALETTE["frame_sampling"])]
    lx = ml
    for name, mean, colour in means:
        out.append(f'<line x1="{x(mean):.1f}" x2="{x(mean):.1f}" y1="{mt}" y2="{mt + ph}" stroke="{colour}" '
                   f'stroke-dasharray="4 3"/>')
        out.append(f'<rect x="{lx}" y="8" width="12" height="12" fill="{colour}"/>')
        out.append(f'<text x="{lx + 18}" y="18">{_e(name)}: mean {mean:.1f}</text>')
        lx += 260
    out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{mt + ph}" y2="{mt + ph}" stroke="{PALETTE["axis"]}"/>')
    out.append(f'<text x="{ml + pw / 2}" y="{height - 6}" text-anchor="middle" fill="{PALETTE["axis"]}">'
               f'tokens per clip (clips on the vertical axis)</text>')
    out.append("</svg>")
    return "".join(out)


def _stage_items(report: dict[str, Any]) -> list[tuple[str, float, str, str]]:
    st, tm = report["stages"], report["time"]
    return [
        ("listing (driver)", tm["listing_s"], PALETTE["driver"], _fmt_s(tm["listing_s"])),
        ("setup: load tokenizer (driver)", tm["setup_s"], PALETTE["driver"], _fmt_s(tm["setup_s"])),
        ("decode (CPU tasks, summed)", st["decode"]["busy_s"], PALETTE["decode"],
         f"{_fmt_s(st['decode']['busy_s'])} · {st['decode']['clips_per_busy_s']:.1f} clips/busy-s"),
        ("encode (actors, summed)", st["encode"]["busy_s"], PALETTE["encode"],
         f"{_fmt_s(st['encode']['busy_s'])} · {st['encode']['clips_per_busy_s']:.1f} clips/busy-s"),
        ("write + commit (driver)", st["write"]["busy_s"], PALETTE["write"],
         f"{_fmt_s(st['write']['busy_s'])} · {st['write']['shards']} shards"),
        ("wall time", tm["wall_s"], PALETTE["wall"], _fmt_s(tm["wall_s"])),
    ]


def _card(title: str, value: str, note: str = "") -> str:
    return (f'<div class="card"><div class="k">{_e(title)}</div><div class="v">{_e(value)}</div>'
            f'<div class="n">{_e(note)}</div></div>')


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
pre{background:#f1f5f9;padding:12px;border-radius:8px;overflow:auto;font-size:12px}
"""


def _runs_section(report: dict[str, Any]) -> str:
    """Every run that wrote into this dataset, the one the charts show marked."""
    runs = report.get("runs", [])
    if len(runs) < 2:
        return ""
    shown = report.get("shown_run", len(runs) - 1)
    rows = "".join(
        f"<tr><td>{i + 1}{' (charted)' if i == shown else ''}</td>"
        f"<td>{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(r.get('started_unix', 0)))}</td>"
        f"<td>{r.get('clips', 0):,}</td><td>{r.get('shards_written', '')}</td><td>{_fmt_s(r.get('wall_s', 0.0))}</td>"
        f"<td>{'yes' if r.get('did_work') else 'nothing to do'}</td></tr>"
        for i, r in enumerate(runs)
    )
    return (f"<section><h2>Runs</h2><table><tr><th>run</th><th>started (UTC)</th><th>clips</th>"
            f"<th>shards written</th><th>wall time</th><th>did work</th></tr>{rows}</table>"
            f'<p class="note">Timings and charts above are of run {shown + 1}, the last that did work; '
            f"report.json keeps every run's record.</p></section>")


def render_html(report: dict[str, Any]) -> str:
    """The self-contained report page."""
    c, t, tm = report["counts"], report["tokens"], report["time"]
    errors = report["errors"]["by_reason"]
    cards = "".join([
        _card("clips out", f"{c['clips_out']:,}", f"of {c['videos_in']:,} inputs"),
        _card("quarantined", f"{c['quarantined']:,}", ", ".join(f"{k} {v}" for k, v in errors.items()) or "none"),
        _card("tokens per clip", f"{t['dataset_mean_vtok_per_clip']:.1f}",
              f"VTok S+R vs {t['dataset_mean_frame_sampling_per_clip']:.1f} T*S "
              f"({t['dataset_reduction']:.1f}x fewer)") if t.get("dataset_reduction") is not None
        else _card("tokens per clip", "n/a", "no clips were tokenized"),
        _card("wall time", _fmt_s(tm["wall_s"]), f"pipeline {_fmt_s(tm['pipeline_s'])}"),
        _card("throughput", f"{report['throughput']['clips_per_s_wall']:.2f}", "clips/s over the wall time"),
        _card("shards", f"{c['shards_committed']}/{c['shards_planned']}",
              f"{_fmt_bytes(report['bytes']['dataset_shard_bytes'])}, "
              f"{'complete' if c['complete'] else 'INCOMPLETE'}"),
    ])
    if errors:
        error_chart = hbar_svg([(k, float(v), PALETTE["error"], f"{v} input{'s' if v != 1 else ''}") for k, v in errors.items()],
                               "", "errors by reason")
        rows = "".join(
            f"<tr><td>{_e(reason)}</td><td>{_e(s['source_uri'])}</td><td>{_e(s['message'])}</td></tr>"
            for reason, samples in report["errors"].get("samples", {}).items() for s in samples
        )
        error_body = (f"{error_chart}<table><tr><th>reason</th><th>input</th><th>message</th></tr>{rows}</table>"
                      f'<p class="note">Every failed input is a row of quarantine/*.parquet; rerunning does not '
                      f"retry them unless the shard is rewritten (sink.mode=overwrite).</p>")
    else:
        error_body = '<p class="ok">No errors: every input became tokens.</p>'
    skipped = report.get("skipped", {})
    if skipped.get("by_label"):
        examples = "".join(f"<li>{_e(u)}</li>" for u in skipped.get("examples", []))
        error_body += (f'<p class="note">The listing skipped {sum(skipped["by_label"].values())} file(s): '
                       + _e(", ".join(f"{k} {v}" for k, v in skipped["by_label"].items()))
                       + f" (not videos by source.extensions, directory symlinks, duplicates).</p><ul>{examples}</ul>")
    config = json.dumps(report["config"], indent=2, sort_keys=True, default=str)
    generated = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(report["generated_unix"]))
    vt, fs = t["vtok_per_clip"], t["frame_sampling_per_clip"]
    stage_chart = hbar_svg(_stage_items(report), " s", "busy time per stage")
    stride = t["residual_stride"]
    stride_text = "later sampled frame" if stride == 1 else f"{stride} sampled frames"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>vtok report: {_e(report['output'])}</title><style>{CSS}</style></head>
<body><main>
<h1>vtok tokenize report</h1>
<div class="sub">{_e(report['output'])} · fingerprint {_e(str(report['fingerprint'])[:16])} · schema
v{_e(report['schema_version'])} · vtok {_e(report['vtok_version'])} · {generated}</div>
<div class="cards">{cards}</div>
<section><h2>Throughput over time</h2>{timeline_svg(report)}
<p class="note">{c['clips_this_run']:,} clips processed in this run; {c['shards_written']} shards written,
{c['shards_skipped']} already committed by an earlier run.</p></section>
<section><h2>Where the time went (busy time per stage)</h2>{stage_chart}
<p class="note">Decode and encode are summed over parallel workers, so they can exceed the wall time.
Sizing: {_e(sizing_advice(report))}.</p></section>
<section><h2>Tokens per clip: VTok S+R vs frame sampling T*S</h2>{histogram_svg(report)}
<p class="note">This run: VTok p50 {vt['p50']:.0f}, p90 {vt['p90']:.0f}, max {vt['max']:.0f};
T*S p50 {fs['p50']:.0f}, p90 {fs['p90']:.0f}, max {fs['max']:.0f}. Totals {t['vtok_total_this_run']:,} vs
{t['frame_sampling_total_this_run']:,} tokens (S = {t['key_tokens_per_clip']}, one residual token per
{stride_text}).</p></section>
<section><h2>Errors by reason</h2>{error_body}</section>
{_runs_section(report)}
<section><details><summary><b>Config</b> (credentials redacted)</summary><pre>{_e(config)}</pre></details>
</section>
</main></body></html>
"""
