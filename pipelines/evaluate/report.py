"""The eval report: RUN/eval/report.json (a summary of the latest eval) and RUN/eval/report.html, and the text of
`vtok report RUN`.

The page (the shared SVG module): per TV-Align metric, per-category bars with their 95% intervals (the
baseline's understanding beside this checkpoint's when compare= was given); TV-Align's history across checkpoints
(every committed result of the run, metric per category vs step; RUN/eval/history.html has every suite); a strip
of generated frames for a few held-out prompts, with the reconstruction below and the judge's reading beside
each; VBench's rows; the config.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

from pipelines.evaluate.rows import TV_ALIGN, run_name
from pipelines.report_html import (
    PALETTE,
    card,
    esc,
    nice_ticks,
    page,
    png_data_uri,
    svg_open,
    table,
)
from schemas.eval_result import EVAL_DIR
from schemas.layout import REPORT_FILE, REPORT_HTML
from vtok.secrets import mask_text, redact
from vtok.storage import join, write_bytes_atomic, write_json

EVAL_REPORT_KIND = "eval"
Accuracy = Mapping[str, tuple[float, int, float | None, float | None]]
"""category -> (value, n, lo, hi)."""


def interval_bars_svg(groups: Sequence[tuple[str, Sequence[tuple[str, float, float | None, float | None, str]]]],
                      label: str, width: int = 1000) -> str:
    """Horizontal bars in [0, 1] with interval whiskers: groups of (category, [(series, value, lo, hi, colour)])."""
    bar, gap, ml, mr, mt = 18, 12, 130, 200, 10
    n_bars = sum(len(bars) for _, bars in groups)
    height = mt + n_bars * bar + gap * len(groups) + 28
    pw = width - ml - mr
    out = [svg_open(width, height, label)]
    bottom = height - 28
    for t in nice_ticks(0.0, 1.0, 5):
        x = ml + t * pw
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{mt}" y2="{bottom}" stroke="{PALETTE["grid"]}"/>'
                   f'<text x="{x:.1f}" y="{bottom + 16}" text-anchor="middle" fill="{PALETTE["axis"]}">{t:g}</text>')
    y = mt
    for category, bars in groups:
        out.append(f'<text x="{ml - 10}" y="{y + len(bars) * bar / 2 + 4:.1f}" text-anchor="end">{esc(category)}'
                   f"</text>")
        for series, value, lo, hi, colour in bars:
            out.append(f'<rect x="{ml}" y="{y + 2}" width="{max(1.0, value * pw):.1f}" height="{bar - 4}" rx="2" '
                       f'fill="{colour}"><title>{esc(series)}</title></rect>')
            note = f"{series} {value:.2f}"
            if lo is not None and hi is not None:
                cy = y + bar / 2
                out.append(f'<line class="interval" x1="{ml + lo * pw:.1f}" x2="{ml + hi * pw:.1f}" y1="{cy:.1f}" '
                           f'y2="{cy:.1f}" stroke="{PALETTE["wall"]}" stroke-width="1.5"/>'
                           f'<line x1="{ml + lo * pw:.1f}" x2="{ml + lo * pw:.1f}" y1="{cy - 4:.1f}" y2="{cy + 4:.1f}" '
                           f'stroke="{PALETTE["wall"]}"/><line x1="{ml + hi * pw:.1f}" x2="{ml + hi * pw:.1f}" '
                           f'y1="{cy - 4:.1f}" y2="{cy + 4:.1f}" stroke="{PALETTE["wall"]}"/>')
                note += f" [{lo:.2f}, {hi:.2f}]"
            out.append(f'<text x="{ml + pw + 8}" y="{y + bar / 2 + 4:.1f}" fill="{PALETTE["axis"]}">{esc(note)}</text>')
            y += bar
        y += gap
    out.append("</svg>")
    return "".join(out)


def _json_ready(accuracy: Accuracy) -> dict[str, dict[str, Any]]:
    return {c: {"value": v, "n": n, "lo": lo, "hi": hi} for c, (v, n, lo, hi) in accuracy.items()}


def describe_reading(reading: Mapping[str, Any]) -> str:
    """The judge's reading in words, e.g. '1 object: red large at top-left, right'."""
    objects = [f"{o.get('color')} {o.get('size')} at {o.get('position')}, {o.get('motion')}"
               for o in reading.get("objects", [])]
    count = int(reading.get("count", len(objects)))
    return f"{count} object{'s' if count != 1 else ''}" + (": " + "; ".join(objects) if objects else "")


def _strip(rows: Sequence[Mapping[str, Any]], keys: Collection[str]) -> list[dict[str, Any]]:
    """The report's held-out prompts: caption, the judge's readings and hits, frames as PNG data URIs."""
    out = []
    for row in rows:
        if str(row["sample_key"]) not in keys:
            continue
        clip: dict[str, Any] = {"sample_key": str(row["sample_key"]), "caption": str(row.get("caption") or "")}
        for metric, column in (("generation", "generated"), ("reconstruction", "reconstructed")):
            if column in row:
                frames = np.asarray(row[column])
                clip[metric] = {"reading": json.loads(str(row[f"{metric}_reading"])),
                                "hits": json.loads(str(row[metric])),
                                "frames": [png_data_uri(np.ascontiguousarray(f)) for f in frames]}
        out.append(clip)
    return out


def strip_section(clips: Sequence[Mapping[str, Any]]) -> str:
    """Each prompt: the generated frames (and the reconstruction of the clip's own tokens), the judge's reading."""
    figures = []
    for clip in clips:
        parts = []
        for metric in ("generation", "reconstruction"):
            if metric not in clip:
                continue
            made = clip[metric]
            missed = sorted(c for c, hits in made["hits"].items() if not all(hits))
            verdict = "agrees in every category" if not missed else "misses " + ", ".join(missed)
            images = "".join(f'<img src="{uri}" width="48" height="48" style="image-rendering:pixelated" '
                              f'alt="{metric} frame">' for uri in made["frames"])
            parts.append(f'<div class="strip">{images}<span><b>{metric}</b>: the judge reads '
                         f"{esc(describe_reading(made['reading']))} ({verdict})</span></div>")
        figures.append(f'<figure class="prompt" style="width:auto"><figcaption><code>{esc(clip["sample_key"][:16])}'
                       f"</code> {esc(mask_text(clip['caption']))[:120]}</figcaption>{''.join(parts)}</figure>")
    return ("<section><h2>Generated frames</h2><p>Held-out prompts: the frames generated from the caption, the "
            "reconstruction of the clip's own tokens, and what the judge reads in each.</p>"
            f"{''.join(figures)}</section>")


def history_section(history: Mapping[str, Any]) -> str:
    """The run's TV-Align history (pipelines/evaluate/history.py): a chart per metric, one line per category,
    value vs step, the baseline's dashed; every suite is on history.html."""
    from pipelines.evaluate.history import HISTORY_HTML, metric_sections

    tv_align = {**history, "metrics": [m for m in history["metrics"] if m["suite"] == TV_ALIGN]}
    return (f'<section><h2>History across checkpoints</h2><p class="note">Every committed result of the run by '
            f'step; all suites, with the best checkpoint per metric: <a href="{HISTORY_HTML}">{HISTORY_HTML}</a>'
            f"</p></section>" + "".join(metric_sections(tv_align)))


def write_eval_report(plan: Any, rows: Sequence[Mapping[str, Any]], accuracy: Mapping[str, Accuracy],
                      vbench: Sequence[Any], score_dims: Mapping[str, Any], compare: Mapping[str, Any] | None,
                      strip_keys: Collection[str]) -> str:
    """Write RUN/eval/report.json and RUN/eval/report.html for this eval, and the run's history (history.json,
    history.html, with the compare run as its baseline); returns the report page's URI."""
    import dataclasses

    from pipelines.evaluate.history import write_history

    cfg, main = plan.cfg, plan.main
    opts = cfg.storage_options or None
    report = {
        "kind": EVAL_REPORT_KIND, "generated_unix": time.time(), "run": mask_text(main.run),
        "checkpoint": mask_text(main.uri), "step": main.step, "token_mode": main.tokens,
        "token_budget": plan.budgets[main.uri], "data": mask_text(cfg.data), "clips": len(plan.clips),
        "suites": list(cfg.suites), "metrics": plan.metrics,
        "accuracy": {m: _json_ready(a) for m, a in accuracy.items()},
        "vbench": [dataclasses.asdict(r) for r in vbench], "score_dimensions": dict(score_dims),
        "compare": None if compare is None else {**{k: compare[k] for k in ("name", "tokens", "budget", "reused")},
                                                   "run": mask_text(compare["run"]),
                                                   "accuracy": _json_ready(compare["accuracy"])},
        "config": redact(cfg),
    }
    clips = _strip(rows, strip_keys)
    report["samples"] = [{"sample_key": c["sample_key"], "caption": c["caption"],
                          **{m: {"reading": c[m]["reading"], "hits": c[m]["hits"]} for m in ("generation",
                                                                                            "reconstruction") if m in c}}
                         for c in clips]
    write_json(join(main.run, EVAL_DIR, REPORT_FILE), report, opts)
    history, _ = write_history(main.run, opts, compare["run"] if compare else None)
    html = render_eval_html(report, clips, history_section(history))
    uri = join(main.run, EVAL_DIR, REPORT_HTML)
    write_bytes_atomic(uri, html.encode(), opts)
    return uri


def render_eval_html(report: Mapping[str, Any], clips: Sequence[Mapping[str, Any]], history: str) -> str:
    """The page of the module docstring from report.json's summary, the strip's clips and the history section."""
    name = run_name(report["run"])
    sections = []
    compare = report.get("compare")
    for metric, per_category in report["accuracy"].items():
        theirs = compare["accuracy"] if compare and metric == "understanding" else {}
        groups = []
        for category, v in per_category.items():
            bars = [(f"{name} ({report['token_mode']})", v["value"], v["lo"], v["hi"], PALETTE["vtok"])]
            if category in theirs:
                t = theirs[category]
                bars.append((f"{run_name(compare['run'])} ({compare['tokens']})", t["value"], t["lo"], t["hi"],
                             PALETTE["frame_sampling"]))
            groups.append((category, bars))
        n = per_category.get("overall", {}).get("n")
        sections.append(f'<section class="metric"><h2>TV-Align {esc(metric)}</h2>'
                        f"{interval_bars_svg(groups, f'{metric} accuracy per category')}"
                        f'<p class="note">Accuracy per category with its 95% Wilson interval; overall pools every '
                        f"item ({n}).</p></section>")
    sections.append(history)
    if clips:
        sections.append(strip_section(clips))
    if report["vbench"]:
        rows = [[r["metric"], f"{r['value']:.4f}", "" if r["lo"] is None else f"[{r['lo']:.4f}, {r['hi']:.4f}]",
                 r["n"]] for r in report["vbench"]]
        used = "; ".join(f"{kind} {score}: {', '.join(dims)}" for kind, scores in report["score_dimensions"].items()
                         for score, dims in scores.items())
        sections.append("<section><h2>VBench</h2>" + table(["metric", "value", "95% interval", "videos"], rows)
                        + f'<p class="note">proxy_* are weight-free stand-ins, not VBench numbers; '
                          f"reconstruction/ rows score the decoder on the clips' own tokens. Scores over: "
                          f"{esc(used)}</p></section>")
    config = json.dumps(report["config"], indent=2, sort_keys=True, default=str)
    sections.append(f"<section><details><summary><b>Config</b> (credentials redacted)</summary><pre>{esc(config)}"
                    f"</pre></details></section>")
    cards = [card("checkpoint", f"step {report['step']}", report["token_mode"]),
             card("tokens per clip", str(report["token_budget"] or "varies"), "the MLLM sees"),
             card("held-out clips", str(report["clips"]), "")]
    for metric, per_category in report["accuracy"].items():
        if "overall" in per_category:
            card_note = f"of {per_category['overall']['n']} items"
            cards.append(card(metric, f"{per_category['overall']['value']:.2f}", card_note))
    generated = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(report["generated_unix"]))
    return page("vtok eval report", f"{report['checkpoint']} on {report['data']} · {generated}", cards, sections)


def format_eval_results(run_uri: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """`vtok report RUN`'s lines for the run's evaluations: per suite, the newest checkpoint's rows, then the
    history (each metric per category by step, the best checkpoint); [] when RUN/eval has no results."""
    from pipelines.evaluate.history import build_history, format_history, remembered_baseline
    from pipelines.evaluate.results import committed_results, read_results

    if not committed_results(run_uri, storage_options):
        return []
    rows = read_results(run_uri, storage_options).to_pylist()
    lines = []
    for suite in sorted({r["suite"] for r in rows}):
        mine = [r for r in rows if r["suite"] == suite]
        step = max(r["step"] for r in mine)
        latest = [r for r in mine if r["step"] == step]
        lines.append(f"eval {suite:<13} {latest[0]['checkpoint']} ({latest[0]['token_mode']}, "
                     f"{latest[0]['token_budget'] or 'varying'} tokens per clip)")
        for r in latest:
            interval = "" if r["lo"] is None else f" [{r['lo']:.2f}, {r['hi']:.2f}]"
            lines.append(f"  {r['metric'] + ' ' + r['category']:<44} {r['value']:.3f}{interval} (n={r['n']})")
    history = build_history(run_uri, storage_options, remembered_baseline(run_uri, storage_options))
    return lines + format_history(history)
