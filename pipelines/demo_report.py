"""The demo's one page: demo_out/index.html links every report the whole loop wrote and shows the TV-Align table.

The table is read back from the runs' committed results (RUN/eval/results, pipelines/evaluate/results.py), not
from what the demo measured in memory, so the page shows exactly what `vtok report RUN` shows. Per TV-Align
metric and category: the VTok run's accuracy with its 95% Wilson interval, the frame-sampling baseline's beside
it (understanding only: the decoder is VTok's), and two floors read from the held-out clips' own questions:
chance (one over the candidates, averaged over the questions) and the majority answer (what a model that always
gives a category's most common answer scores), so "well above chance" can be read off the page.
"""

from __future__ import annotations

import os
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipelines.evaluate.rows import TV_ALIGN, TV_ALIGN_METRICS
from pipelines.report_html import Markup, card, esc, fmt_s, page, table
from vtok.storage import write_bytes_atomic

Interval = tuple[float, float | None, float | None]
"""(value, lo, hi) of one accuracy."""
DEMO_PAGE = "index.html"


@dataclass(frozen=True)
class TableRow:
    """One (metric, category) of the TV-Align table."""

    metric: str
    """understanding, generation or reconstruction."""
    category: str
    """A TV-Align category or "overall"."""
    n: int
    """Items scored (questions or judged videos)."""
    vtok: Interval | None
    """The VTok run's accuracy; None when it has no such row."""
    baseline: Interval | None
    """The baseline run's accuracy; None when it has none (generation and reconstruction)."""
    chance: float | None
    """Expected accuracy of a uniform guess over the candidates (understanding only)."""
    majority: float | None
    """Accuracy of always giving the category's most common answer (understanding only)."""


def latest_results(run: str, suite: str = TV_ALIGN,
                   storage_options: dict[str, Any] | None = None) -> tuple[str, dict[tuple[str, str], dict]]:
    """(checkpoint, {(metric, category): result row}) of the run's newest checkpoint with `suite` results;
    ("", {}) when it has none."""
    from pipelines.evaluate.results import read_results

    rows = [r for r in read_results(run, storage_options).to_pylist() if r["suite"] == suite]
    if not rows:
        return "", {}
    step = max(r["step"] for r in rows)
    latest = [r for r in rows if r["step"] == step]
    return str(latest[0]["checkpoint"]), {(r["metric"], r["category"]): r for r in latest}


def answer_floors(attributes: Sequence[Mapping[str, Any] | str]) -> dict[str, tuple[float, float]]:
    """{category: (chance, majority)} over every question of the clips (TV-Align's, vtok.eval.questions), and
    "overall" pooled. chance = mean of 1 / len(candidates); majority = share of the category's questions whose
    answer is its most common one."""
    from vtok.eval.questions import questions_for

    questions = [q for a in attributes for q in questions_for(a)]
    if not questions:
        raise ValueError("answer_floors: no questions (no clips with attributes)")
    by_category: dict[str, list[Any]] = defaultdict(list)
    for q in questions:
        by_category[q.category].append(q)
    out: dict[str, tuple[float, float]] = {}
    majority_hits = 0
    for category, qs in by_category.items():
        top = Counter(q.answer for q in qs).most_common(1)[0][1]
        majority_hits += top
        out[category] = (sum(1 / len(q.candidates) for q in qs) / len(qs), top / len(qs))
    out["overall"] = (sum(1 / len(q.candidates) for q in questions) / len(questions), majority_hits / len(questions))
    return out


def tv_align_table(run: str, baseline: str | None, floors: Mapping[str, tuple[float, float]] | None = None,
                   storage_options: dict[str, Any] | None = None) -> list[TableRow]:
    """The table's rows, in metric order then the results' category order; a run without results gives none."""
    _, mine = latest_results(run, TV_ALIGN, storage_options)
    _, theirs = latest_results(baseline, TV_ALIGN, storage_options) if baseline else ("", {})
    rows = []
    for metric in TV_ALIGN_METRICS:
        for (m, category), r in mine.items():
            if m != metric:
                continue
            other = theirs.get((metric, category))
            floor = (floors or {}).get(category) if metric == "understanding" else None
            rows.append(TableRow(metric=metric, category=category, n=int(r["n"]),
                                 vtok=(r["value"], r["lo"], r["hi"]),
                                 baseline=None if other is None else (other["value"], other["lo"], other["hi"]),
                                 chance=floor[0] if floor else None, majority=floor[1] if floor else None))
    return rows


def fmt_interval(value: Interval | None) -> str:
    """"0.94 [0.85, 0.98]", or "-" for no value."""
    if value is None:
        return "-"
    v, lo, hi = value
    return f"{v:.2f}" if lo is None or hi is None else f"{v:.2f} [{lo:.2f}, {hi:.2f}]"


def _fraction(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


TABLE_HEADERS = ["metric", "category", "n", "VTok [95% CI]", "baseline [95% CI]", "chance", "majority"]


def table_cells(row: TableRow) -> list[str]:
    """A row's cells, as the page and the terminal show them."""
    return [row.metric, row.category, str(row.n), fmt_interval(row.vtok), fmt_interval(row.baseline),
            _fraction(row.chance), _fraction(row.majority)]


def format_table(rows: Sequence[TableRow]) -> list[str]:
    """The table as aligned text lines (the demo prints it at the end)."""
    cells = [TABLE_HEADERS, *(table_cells(r) for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(TABLE_HEADERS))]
    return ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells]


@dataclass(frozen=True)
class Report:
    """One report the page links."""

    label: str
    """What made it, e.g. "train MLLM (vtok)"."""
    uri: str
    """Its report.html (a local path: the demo's output)."""


def _link(report: Report, base: str) -> Markup | str:
    if not os.path.isfile(report.uri):
        return "not written"
    rel = os.path.relpath(report.uri, base)
    return Markup(f'<a href="{esc(rel)}">{esc(rel)}</a>')


def render_demo_page(out_dir: str, reports: Sequence[Report], rows: Sequence[TableRow],
                     stages: Sequence[tuple[str, float]], labels: tuple[str, str], notes: Sequence[str] = (),
                     vbench: Sequence[tuple[str, float]] = ()) -> str:
    """The page's HTML: cards (wall time, overall accuracies), the reports (links to those that exist), the
    TV-Align table, VBench's (metric, value) rows, the stage times, notes. `labels`: (VTok run's name,
    baseline's name) for the table's header."""
    overall = {(r.metric, r.category): r for r in rows}
    cards = [card("wall time", fmt_s(sum(s for _, s in stages)), f"the {len(stages)} stages before this page")]
    for metric in TV_ALIGN_METRICS:
        row = overall.get((metric, "overall"))
        if row is not None and row.vtok is not None:
            note = f"baseline {row.baseline[0]:.2f}" if row.baseline else "VTok tokens -> decoder -> judge"
            cards.append(card(f"{metric} (VTok)", f"{row.vtok[0]:.2f}", note))
    headers = [*TABLE_HEADERS]
    headers[3], headers[4] = f"{labels[0]} [95% CI]", f"{labels[1]} [95% CI]"
    sections = [
        "<section><h2>Reports</h2>" + table(["stage", "report"], [[r.label, _link(r, out_dir)] for r in reports])
        + "</section>",
        "<section><h2>TV-Align on the held-out world</h2>" + (table(headers, [table_cells(r) for r in rows]) if rows
                                                              else "<p>no TV-Align results</p>")
        + '<p class="note">Accuracy with its 95% Wilson interval, read from the runs\' committed results. chance: a '
          "uniform guess over each question's candidates; majority: always the category's most common answer on "
          "these clips. Generation and reconstruction go through the VTok decoder and the judge; the baseline "
          "is compared on understanding.</p></section>",
        *(["<section><h2>VBench (generated and reconstructed videos)</h2>"
            + table(["metric", "value"], [[m, f"{v:.4f}"] for m, v in vbench]) + "</section>"] if vbench else []),
        "<section><h2>Stages</h2>" + table(["stage", "wall"], [[name, fmt_s(s)] for name, s in stages])
        + "".join(f'<p class="note">{esc(n)}</p>' for n in notes) + "</section>",
    ]
    generated = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return page("vtok demo: the whole loop", f"{os.path.abspath(out_dir)} · {generated}", cards, sections)


def write_demo_page(out_dir: str, reports: Sequence[Report], rows: Sequence[TableRow],
                    stages: Sequence[tuple[str, float]], labels: tuple[str, str], notes: Sequence[str] = (),
                    vbench: Sequence[tuple[str, float]] = ()) -> str:
    """Write OUT/index.html (whole, atomically; render_demo_page's arguments); returns its path."""
    path = os.path.join(out_dir, DEMO_PAGE)
    write_bytes_atomic(path, render_demo_page(out_dir, reports, rows, stages, labels, notes, vbench).encode())
    return path
