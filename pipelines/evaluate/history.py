"""A run's evaluation history: RUN/eval/history.json and RUN/eval/history.html, and its lines in `vtok report`.

Built from every committed result of the run (read_results), so it is the same whoever evaluated which
checkpoint when (one `vtok eval`, or a scan evaluating checkpoints one by one): per (suite, metric), one
series per category of value vs step, the baseline run's series beside them when the run has one, and the
best checkpoint. The baseline is the `compare=` run of an eval; history.json remembers it, so later evals
without compare= (a scan's) keep drawing it.

Best checkpoint of a metric: the highest value of its "overall" category (or of its only category, as VBench's
"all"), ties to the earliest step; none when a metric has several categories and no overall.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from pipelines.evaluate.rows import TV_ALIGN, TV_ALIGN_METRICS, run_name
from pipelines.report_html import (
    PALETTE,
    SERIES_COLOURS,
    card,
    chart_frame,
    esc,
    page,
    svg_open,
    table,
)
from schemas.eval_result import EVAL_DIR, OVERALL_CATEGORY
from vtok.secrets import mask_text
from vtok.storage import NotFoundError, join, read_json, write_bytes_atomic, write_json

HISTORY_FILE = "history.json"
HISTORY_HTML = "history.html"
HISTORY_KIND = "eval_history"
HISTORY_VERSION = 1


def history_uri(run_uri: str, name: str = HISTORY_FILE) -> str:
    """RUN/eval/history.json (or another file of RUN/eval)."""
    return join(run_uri, EVAL_DIR, name)


def _metric_order(key: tuple[str, str]) -> tuple[Any, ...]:
    suite, metric = key
    known = TV_ALIGN_METRICS.index(metric) if suite == TV_ALIGN and metric in TV_ALIGN_METRICS else len(
        TV_ALIGN_METRICS)
    return (suite != TV_ALIGN, suite, known, metric)


def _series(rows: Sequence[Mapping[str, Any]], run: str, role: str) -> list[dict[str, Any]]:
    """One series per category (in the rows' order, "overall" last) of one run's rows of one (suite, metric),
    points by step."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        s = out.setdefault(r["category"], {"run": run, "role": role, "category": r["category"],
                                           "token_mode": r["token_mode"], "points": []})
        s["points"].append({"step": r["step"], "checkpoint": r["checkpoint"], "value": r["value"], "n": r["n"],
                            "lo": r["lo"], "hi": r["hi"]})
    for s in out.values():
        s["points"].sort(key=lambda p: p["step"])
    return sorted(out.values(), key=lambda s: s["category"] == OVERALL_CATEGORY)


def best_point(series: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The best checkpoint of one run's series of a metric (the module docstring's rule), or None."""
    by_category = {s["category"]: s for s in series}
    chosen = by_category.get(OVERALL_CATEGORY) or (series[0] if len(series) == 1 else None)
    if chosen is None or not chosen["points"]:
        return None
    point = max(chosen["points"], key=lambda p: (p["value"], -p["step"]))
    return {"category": chosen["category"], "checkpoint": point["checkpoint"], "step": point["step"],
            "value": point["value"]}


def build_history(run_uri: str, storage_options: dict[str, Any] | None = None,
                  baseline_run: str | None = None) -> dict[str, Any]:
    """history.json's content: the run's committed results (and `baseline_run`'s) as series per metric.

    A baseline run that has gone or has no results yet is named in the history with no series, not an error."""
    from pipelines.evaluate.results import ResultsError, read_results

    rows = read_results(run_uri, storage_options).to_pylist()
    base_rows: list[dict[str, Any]] = []
    baseline_note = None
    if baseline_run:
        try:
            base_rows = read_results(baseline_run, storage_options).to_pylist()
        except (NotFoundError, ResultsError) as err:
            baseline_note = str(err)
    name = run_name(run_uri)
    base_name = run_name(baseline_run) if baseline_run else None
    metrics = []
    for suite, metric in sorted({(r["suite"], r["metric"]) for r in rows}, key=_metric_order):
        mine = _series([r for r in rows if (r["suite"], r["metric"]) == (suite, metric)], name, "run")
        theirs = _series([r for r in base_rows if (r["suite"], r["metric"]) == (suite, metric)], str(base_name),
                         "baseline")
        metrics.append({"suite": suite, "metric": metric, "series": mine + theirs, "best": best_point(mine)})
    return {"kind": HISTORY_KIND, "version": HISTORY_VERSION, "generated_unix": time.time(),
            "run": mask_text(run_uri), "run_name": name,
            "baseline": None if not baseline_run else {"run": mask_text(baseline_run), "name": base_name,
                                                       "problem": baseline_note},
            "checkpoints": [{"step": step, "checkpoint": name}
                            for step, name in sorted({(r["step"], r["checkpoint"]) for r in rows})],
            "metrics": metrics}


def remembered_baseline(run_uri: str, storage_options: dict[str, Any] | None = None) -> str | None:
    """The baseline run the run's history.json names, or None."""
    previous = read_json(history_uri(run_uri), storage_options) or {}
    return (previous.get("baseline") or {}).get("run")


def write_history(run_uri: str, storage_options: dict[str, Any] | None = None,
                  baseline_run: str | None = None) -> tuple[dict[str, Any], str]:
    """Write RUN/eval/history.json and history.html from the committed results; returns (history, page URI).

    `baseline_run`: the compare run of the eval that just committed; None keeps the one history.json names."""
    baseline_run = baseline_run or remembered_baseline(run_uri, storage_options)
    history = build_history(run_uri, storage_options, baseline_run)
    write_json(history_uri(run_uri), history, storage_options)
    uri = history_uri(run_uri, HISTORY_HTML)
    write_bytes_atomic(uri, render_history_html(history).encode(), storage_options)
    return history, uri


# ---------------------------------------------------------------------------------------------- the page


def history_chart_svg(entry: Mapping[str, Any], width: int = 1000, height: int = 300) -> str:
    """One metric: a line per (run, category) of value vs step; a category keeps its colour across runs, the
    baseline's lines are dashed. Each line carries its values (data-values="step:value,...") for readers."""
    label = f"{entry['suite']} {entry['metric']} history"
    series = entry["series"]
    points = [(p["step"], p["value"]) for s in series for p in s["points"]]
    if not points:
        return f'{svg_open(width, 60, label)}<text x="10" y="34" fill="{PALETTE["axis"]}">no results yet</text></svg>'
    categories = list(dict.fromkeys(s["category"] for s in series))
    legend_rows = (len(series) + 4) // 5
    ml = 64
    x, y, out = chart_frame(points, label, "step", width, height, ml, 16 + 18 * legend_rows)
    for k, s in enumerate(series):
        colour = SERIES_COLOURS[categories.index(s["category"]) % len(SERIES_COLOURS)]
        dash = ' stroke-dasharray="6 4"' if s["role"] == "baseline" else ""
        values = ",".join(f"{p['step']}:{p['value']!r}" for p in s["points"])
        path = " ".join(f"{x(p['step']):.1f},{y(p['value']):.1f}" for p in s["points"])
        name = f"{s['category']} ({s['run']})" if s["role"] == "baseline" else s["category"]
        out.append(f'<polyline class="series" data-run="{esc(s["run"])}" data-role="{s["role"]}" '
                   f'data-category="{esc(s["category"])}" data-values="{esc(values)}" fill="none" '
                   f'stroke="{colour}" stroke-width="2"{dash} points="{path}"><title>{esc(name)}</title></polyline>')
        out.extend(f'<circle cx="{x(p["step"]):.1f}" cy="{y(p["value"]):.1f}" r="3" fill="{colour}"/>'
                   for p in s["points"])
        lx, ly = ml + 10 + 180 * (k % 5), 10 + 18 * (k // 5)
        out.append(f'<line x1="{lx}" x2="{lx + 16}" y1="{ly + 6}" y2="{ly + 6}" stroke="{colour}" stroke-width="2"'
                   f'{dash}/><text x="{lx + 22}" y="{ly + 10}">{esc(name)}</text>')
    out.append("</svg>")
    return "".join(out)


def _value_table(entry: Mapping[str, Any]) -> str:
    steps = sorted({p["step"] for s in entry["series"] for p in s["points"]})
    best = entry["best"]
    rows = []
    for s in entry["series"]:
        at = {p["step"]: p["value"] for p in s["points"]}
        mark = best is not None and s["role"] == "run" and s["category"] == best["category"]
        rows.append([s["category"], s["run"], *[("" if step not in at else f"{at[step]:.3f}"
                                                + (" *" if mark and step == best["step"] else "")) for step in steps]])
    return table(["category", "run", *[f"step {step}" for step in steps]], rows)


def metric_sections(history: Mapping[str, Any]) -> list[str]:
    """A section per metric: its chart, its best checkpoint, its values by step (also in the eval report)."""
    sections = []
    for entry in history["metrics"]:
        best = entry["best"]
        note = ("" if best is None else f"best checkpoint: {best['checkpoint']} ({best['category']} "
                f"{best['value']:.3f}; the highest, ties to the earliest). ")
        steps = sorted({p["step"] for s in entry["series"] if s["role"] == "run" for p in s["points"]})
        sections.append(f'<section class="history"><h2>{esc(entry["suite"])} {esc(entry["metric"])}</h2>'
                        f"{history_chart_svg(entry)}{_value_table(entry)}"
                        f'<p class="note">{esc(note)}checkpoints: {esc(", ".join(str(s) for s in steps))}</p>'
                        f"</section>")
    return sections


def render_history_html(history: Mapping[str, Any]) -> str:
    """RUN/eval/history.html: a card per best checkpoint, then metric_sections."""
    baseline = history.get("baseline")
    cards = [card("checkpoints evaluated", str(len(history["checkpoints"])), history["run_name"])]
    if baseline:
        cards.append(card("baseline", str(baseline["name"]), baseline.get("problem") or "dashed lines"))
    for entry in history["metrics"]:
        if entry["best"] is not None and entry["suite"] == TV_ALIGN:
            cards.append(card(f"best {entry['metric']}", entry["best"]["checkpoint"],
                              f"{entry['best']['category']} {entry['best']['value']:.3f}"))
    generated = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(history["generated_unix"]))
    sections = metric_sections(history) or ['<section><p class="note">No committed results yet.</p></section>']
    return page("vtok eval history", f"{history['run']} · {generated}", cards, sections)


def format_history(history: Mapping[str, Any]) -> list[str]:
    """`vtok report RUN`'s history: per metric its best checkpoint, then one line per (run, category) with the
    values by step."""
    lines = []
    for entry in history["metrics"]:
        best = entry["best"]
        head = f"history {entry['suite']} {entry['metric']}"
        lines.append(head + ("" if best is None else f": best {best['checkpoint']} ({best['category']} "
                                                     f"{best['value']:.3f})"))
        for s in entry["series"]:
            who = s["category"] if s["role"] == "run" else f"{s['category']} [baseline {s['run']}]"
            values = "  ".join(f"{p['step']}: {p['value']:.3f}" for p in s["points"])
            lines.append(f"  {who:<44} {values}")
    return lines
