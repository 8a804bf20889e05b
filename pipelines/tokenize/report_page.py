"""The tokenize run report's page: report.json rendered as one self-contained HTML page with inline SVG charts."""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from pipelines.report_html import (
    CSS,
    PALETTE,
    Markup,
    card,
    esc,
    fmt_bytes,
    fmt_s,
    hbar_svg,
    nice_ticks,
    svg_open,
    table,
    tick_label,
)
from schemas.tokens import vtok_formula


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
    n_ticks = nice_ticks(0, n_end, integer=True)
    r_ticks = nice_ticks(0, max(rates, default=0.0) or 1.0)
    t_ticks = nice_ticks(0, t_end, 8)

    def x(t: float) -> float:
        return ml + pw * t / t_end

    def y_left(n: float) -> float:
        return mt + ph * (1 - n / n_ticks[-1])

    def y_right(r: float) -> float:
        return mt + ph * (1 - r / r_ticks[-1])

    out = [svg_open(width, height, "throughput over time")]
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
                   f'{tick_label(n)}</text>')
    for r in r_ticks:
        out.append(f'<text x="{ml + pw + 6}" y="{y_right(r) + 4:.1f}" fill="{PALETTE["encode"]}">'
                   f'{tick_label(r)}</text>')
    for t in t_ticks:
        if t > t_end * 1.0001:
            continue
        out.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{mt + ph}" y2="{mt + ph + 4}" '
                   f'stroke="{PALETTE["axis"]}"/>')
        out.append(f'<text x="{x(t):.1f}" y="{mt + ph + 18}" text-anchor="middle" fill="{PALETTE["axis"]}">'
                   f'{tick_label(t)}</text>')
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


def histogram_svg(report: dict[str, Any], width: int = 1000, height: int = 280) -> str:
    """Tokens per clip: VTok S+R next to frame-sampling T*S, on one axis so the gap is visible."""
    hist = report["tokens"]["histogram"]
    label = f"VTok {vtok_formula(report['tokens'].get('residual_grid', 1))}"
    series = [(label, hist["vtok"], PALETTE["vtok"]), ("frame sampling T*S", hist["frame_sampling"],
                                                          PALETTE["frame_sampling"])]
    values = [v for _, h, _ in series for v, _ in h]
    if not values:
        return (f'{svg_open(width, 60, "tokens per clip")}<text x="10" y="34" fill="{PALETTE["axis"]}">'
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
    c_ticks = nice_ticks(0, c_max, integer=True)
    v_ticks = nice_ticks(0, v_max, 10)

    def x(v: float) -> float:
        return ml + pw * v / v_max

    def y(c: float) -> float:
        return mt + ph * (1 - c / c_ticks[-1])

    out = [svg_open(width, height, "tokens per clip histogram")]
    for c in c_ticks:
        out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{y(c):.1f}" y2="{y(c):.1f}" stroke="{PALETTE["grid"]}"/>')
        out.append(f'<text x="{ml - 6}" y="{y(c) + 4:.1f}" text-anchor="end" fill="{PALETTE["axis"]}">'
                   f'{tick_label(c)}</text>')
    for v in v_ticks:
        if v > v_max:
            continue
        out.append(f'<text x="{x(v):.1f}" y="{mt + ph + 18}" text-anchor="middle" fill="{PALETTE["axis"]}">'
                   f'{tick_label(v)}</text>')
    bar = pw / n_bins
    for name, counts, colour in binned:
        for i, c in enumerate(counts):
            if c:
                out.append(f'<rect x="{ml + i * bar + 1:.1f}" y="{y(c):.1f}" width="{max(1.0, bar - 2):.1f}" '
                           f'height="{mt + ph - y(c):.1f}" fill="{colour}" fill-opacity="0.85">'
                           f'<title>{esc(name)}: {c} clips near {i * bin_w:.0f} tokens</title></rect>')
    t = report["tokens"]
    means = [(label, t["vtok_per_clip"]["mean"], PALETTE["vtok"]),
             ("frame sampling T*S", t["frame_sampling_per_clip"]["mean"], PALETTE["frame_sampling"])]
    lx = ml
    for name, mean, colour in means:
        out.append(f'<line x1="{x(mean):.1f}" x2="{x(mean):.1f}" y1="{mt}" y2="{mt + ph}" stroke="{colour}" '
                   f'stroke-dasharray="4 3"/>')
        out.append(f'<rect x="{lx}" y="8" width="12" height="12" fill="{colour}"/>')
        out.append(f'<text x="{lx + 18}" y="18">{esc(name)}: mean {mean:.1f}</text>')
        lx += 260
    out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{mt + ph}" y2="{mt + ph}" stroke="{PALETTE["axis"]}"/>')
    out.append(f'<text x="{ml + pw / 2}" y="{height - 6}" text-anchor="middle" fill="{PALETTE["axis"]}">'
               f'tokens per clip (clips on the vertical axis)</text>')
    out.append("</svg>")
    return "".join(out)


def _stage_items(report: dict[str, Any]) -> list[tuple[str, float, str, str]]:
    st, tm = report["stages"], report["time"]
    return [
        ("listing (driver)", tm["listing_s"], PALETTE["driver"], fmt_s(tm["listing_s"])),
        ("setup: load tokenizer (driver)", tm["setup_s"], PALETTE["driver"], fmt_s(tm["setup_s"])),
        ("decode (CPU tasks, summed)", st["decode"]["busy_s"], PALETTE["decode"],
         f"{fmt_s(st['decode']['busy_s'])} · {st['decode']['clips_per_busy_s']:.1f} clips/busy-s"),
        ("encode (actors, summed)", st["encode"]["busy_s"], PALETTE["encode"],
         f"{fmt_s(st['encode']['busy_s'])} · {st['encode']['clips_per_busy_s']:.1f} clips/busy-s"),
        ("write + commit (driver)", st["write"]["busy_s"], PALETTE["write"],
         f"{fmt_s(st['write']['busy_s'])} · {st['write']['shards']} shards"),
        ("wall time", tm["wall_s"], PALETTE["wall"], fmt_s(tm["wall_s"])),
    ]


def _runs_section(report: dict[str, Any]) -> str:
    """Every run that wrote into this dataset, the one the charts show marked."""
    runs = report.get("runs", [])
    if len(runs) < 2:
        return ""
    shown = report.get("shown_run", len(runs) - 1)
    rows = "".join(
        f"<tr><td>{i + 1}{' (charted)' if i == shown else ''}</td>"
        f"<td>{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(r.get('started_unix', 0)))}</td>"
        f"<td>{r.get('clips', 0):,}</td><td>{r.get('shards_written', '')}</td><td>{fmt_s(r.get('wall_s', 0.0))}</td>"
        f"<td>{'yes' if r.get('did_work') else 'nothing to do'}</td></tr>"
        for i, r in enumerate(runs)
    )
    return (f"<section><h2>Runs</h2><table><tr><th>run</th><th>started (UTC)</th><th>clips</th>"
            f"<th>shards written</th><th>wall time</th><th>did work</th></tr>{rows}</table>"
            f'<p class="note">Timings and charts above are of run {shown + 1}, the last that did work; '
            f"report.json keeps every run's record.</p></section>")


def _shards_section(report: dict[str, Any]) -> str:
    files = report.get("shard_files", [])
    if not files:
        return ""
    rows = [[Markup(f'<a href="{esc(f["file"])}">{esc(f["file"])}</a>'), f"{f['rows']:,}", fmt_bytes(f["bytes"])]
            for f in files]
    more = report["counts"]["shard_files"] - len(files)
    note = f'<p class="note">and {more:,} more: manifest.json lists every shard.</p>' if more > 0 else ""
    return f"<section><h2>Shards</h2>{table(['file', 'rows', 'bytes'], rows)}{note}</section>"


def _run_section(report: dict[str, Any]) -> str:
    """The key frames of a few clips, the encoder, the command that reproduces the run, and where it ran."""
    frames = "".join(
        f'<figure><img src="{k["png"]}" width="96" height="96" alt="key frame"><figcaption>{esc(k["caption"])[:60]}'
        f"</figcaption></figure>"
        for k in report.get("key_frames", [])
    )
    env = report.get("environment") or {}
    versions = ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items())
    machine = ", ".join(f"{k} {v}" for k, v in env.get("machine", {}).items())
    rows = [["encoder", report.get("encoder", "")], ["reproduce", Markup(f"<code>{esc(report.get('command', ''))}</code>")],
            ["libraries", versions], ["machine", machine]]
    strip = f'<div class="strip">{frames}</div>' if frames else ""
    return f"<section><h2>The run</h2>{strip}{table(['', ''], rows)}</section>"


def render_html(report: dict[str, Any]) -> str:
    """The self-contained report page."""
    c, t, tm = report["counts"], report["tokens"], report["time"]
    errors = report["errors"]["by_reason"]
    cards = "".join([
        card("clips out", f"{c['clips_out']:,}", f"of {c['videos_in']:,} inputs"),
        card("quarantined", f"{c['quarantined']:,}", ", ".join(f"{k} {v}" for k, v in errors.items()) or "none"),
        card("tokens per clip", f"{t['dataset_mean_vtok_per_clip']:.1f}",
              f"VTok {vtok_formula(t.get('residual_grid', 1))} vs {t['dataset_mean_frame_sampling_per_clip']:.1f} T*S "
              f"({t['dataset_reduction']:.1f}x fewer)") if t.get("dataset_reduction") is not None
        else card("tokens per clip", "n/a", "no clips were tokenized"),
        card("wall time", fmt_s(tm["wall_s"]), f"pipeline {fmt_s(tm['pipeline_s'])}"),
        card("throughput", f"{report['throughput']['clips_per_s_wall']:.2f}", "clips/s over the wall time"),
        card("shards", f"{c['shards_committed']}/{c['shards_planned']}",
              f"{fmt_bytes(report['bytes']['dataset_shard_bytes'])}, "
              f"{'complete' if c['complete'] else 'INCOMPLETE'}"),
    ])
    if errors:
        error_chart = hbar_svg([(k, float(v), PALETTE["error"], f"{v} input{'s' if v != 1 else ''}") for k, v in errors.items()],
                               "", "errors by reason")
        rows = "".join(
            f"<tr><td>{esc(reason)}</td><td>{esc(s['source_uri'])}</td><td>{esc(s['message'])}</td></tr>"
            for reason, samples in report["errors"].get("samples", {}).items() for s in samples
        )
        error_body = (f"{error_chart}<table><tr><th>reason</th><th>input</th><th>message</th></tr>{rows}</table>"
                      f'<p class="note">Every failed input is a row of quarantine/*.parquet; rerunning does not '
                      f"retry them unless the shard is rewritten (sink.mode=overwrite).</p>")
    else:
        error_body = '<p class="ok">No errors: every input became tokens.</p>'
    skipped = report.get("skipped", {})
    if skipped.get("by_label"):
        examples = "".join(f"<li>{esc(u)}</li>" for u in skipped.get("examples", []))
        error_body += (f'<p class="note">The listing skipped {sum(skipped["by_label"].values())} file(s): '
                       + esc(", ".join(f"{k} {v}" for k, v in skipped["by_label"].items()))
                       + f" (not videos by source.extensions, directory symlinks, duplicates).</p><ul>{examples}</ul>")
    config = json.dumps(report["config"], indent=2, sort_keys=True, default=str)
    generated = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(report["generated_unix"]))
    vt, fs = t["vtok_per_clip"], t["frame_sampling_per_clip"]
    stage_chart = hbar_svg(_stage_items(report), " s", "busy time per stage")
    stride, residual_grid = t["residual_stride"], t.get("residual_grid", 1)
    stride_text = "later sampled frame" if stride == 1 else f"{stride} sampled frames"
    per_step = "one residual token" if residual_grid == 1 else (
        f"r*r = {residual_grid * residual_grid} residual tokens (a {residual_grid}x{residual_grid} grid)")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>vtok report: {esc(report['output'])}</title><style>{CSS}</style></head>
<body><main>
<h1>vtok tokenize report</h1>
<div class="sub">{esc(report['output'])} · fingerprint {esc(str(report['fingerprint'])[:16])} · schema
v{esc(report['schema_version'])} · vtok {esc(report['vtok_version'])} · {generated}</div>
<div class="cards">{cards}</div>
<section><h2>Throughput over time</h2>{timeline_svg(report)}
<p class="note">{c['clips_this_run']:,} clips processed in this run; {c['shards_written']} shards written,
{c['shards_skipped']} already committed by an earlier run.</p></section>
<section><h2>Where the time went (busy time per stage)</h2>{stage_chart}
<p class="note">Decode and encode are summed over parallel workers, so they can exceed the wall time.
Sizing: {esc(sizing_advice(report))}.</p></section>
<section><h2>Tokens per clip: VTok {vtok_formula(residual_grid)} vs frame sampling T*S</h2>{histogram_svg(report)}
<p class="note">This run: VTok p50 {vt['p50']:.0f}, p90 {vt['p90']:.0f}, max {vt['max']:.0f};
T*S p50 {fs['p50']:.0f}, p90 {fs['p90']:.0f}, max {fs['max']:.0f}. Totals {t['vtok_total_this_run']:,} vs
{t['frame_sampling_total_this_run']:,} tokens (S = {t['key_tokens_per_clip']}, {per_step} per
{stride_text}).</p></section>
<section><h2>Errors by reason</h2>{error_body}</section>
{_runs_section(report)}
{_shards_section(report)}
{_run_section(report)}
<section><details><summary><b>Config</b> (credentials redacted)</summary><pre>{esc(config)}</pre></details>
</section>
</main></body></html>
"""
