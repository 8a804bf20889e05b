"""The study's cells (bench/study.py) -> tables, the crossover, the plot, the results table and the JSON payload.

Modes are named by what a model sees and the residual grid of the data: vtok_r1 / vtok_r2 (S + r*r*R tokens),
frames_budget_r1 / frames_budget_r2 (frame sampling at that VTok's budget: K = floor((S + r*r*R) / S) frames),
all_frames (T x S) and key_only (S). A difference between two modes is given with Newcombe's interval for a
difference of two proportions (from the two Wilson intervals): it treats the two accuracies as independent,
though both modes are scored on the same test clips, so it is wide rather than narrow.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR, table
from bench.study_plot import study_svg

FIGURES_DIR = Path(__file__).resolve().parent / "figures"
"""Where the plot goes: committed, beside BENCHMARKS.md's text (bench/results/ is git-ignored)."""
PROBE_ORDER = ("vtok_r1", "frames_budget_r1", "vtok_r2", "frames_budget_r2", "all_frames", "key_only")
"""Column order of the probe table."""


def study_mode(mode: str, r: int) -> str:
    """The study's name of a probe mode on data of residual grid r."""
    return f"{mode}_r{r}" if mode in ("vtok", "frames_budget") else mode


def load_cells(folder: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(probe cells, MLLM cells) found in `folder`."""
    probes, mllms = [], []
    for path in sorted(folder.glob("*.json")):
        doc = json.loads(path.read_text())
        (probes if path.name.startswith("probe_") else mllms).append(doc)
    return probes, mllms


def probe_points(probes: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One point per (cell, mode, attribute): mode, category, s, t, tokens, acc, lo, hi, chance, n, seeds."""
    out = []
    for cell in probes:
        for s in cell["scores"]:
            if cell["r"] != 1 and s["mode"] not in ("vtok", "frames_budget"):
                continue
            out.append({"mode": study_mode(s["mode"], cell["r"]), "category": s["attribute"], "s": cell["S"],
                        "t": cell["t"], "g": cell["g"], "tokens": s["tokens"], "acc": s["hits"] / s["n"],
                        "lo": s["lo"], "hi": s["hi"], "chance": s["chance"], "n": s["n"],
                        "seeds": s["seed_accuracy"], "hits": s["hits"]})
    return out


def pct(p: Mapping[str, Any]) -> str:
    return f"{100 * p['acc']:.1f} [{100 * p['lo']:.1f}, {100 * p['hi']:.1f}]"


def difference(a: Mapping[str, Any], b: Mapping[str, Any]) -> tuple[float, float, float]:
    """(a - b, lo, hi) in points: Newcombe's hybrid score interval from the two Wilson intervals."""
    d = a["acc"] - b["acc"]
    lo = d - math.sqrt((a["acc"] - a["lo"]) ** 2 + (b["hi"] - b["acc"]) ** 2)
    hi = d + math.sqrt((a["hi"] - a["acc"]) ** 2 + (b["acc"] - b["lo"]) ** 2)
    return 100 * d, 100 * lo, 100 * hi


def signed(d: tuple[float, float, float]) -> str:
    mark = " *" if d[1] > 0 or d[2] < 0 else ""
    return f"{d[0]:+.1f} [{d[1]:+.1f}, {d[2]:+.1f}]{mark}"


def probe_table(points: Sequence[Mapping[str, Any]], categories: Sequence[str]) -> str:
    """Accuracy % [95%] per (S, T, category) and mode, with each mode's tokens per clip."""
    by = {(p["s"], p["t"], p["category"], p["mode"]): p for p in points}
    modes = [m for m in PROBE_ORDER if any(p["mode"] == m for p in points)]
    cells = sorted({(p["s"], p["t"]) for p in points})
    rows = []
    for s, t in cells:
        tokens = {m: next((p["tokens"] for p in points if (p["s"], p["t"], p["mode"]) == (s, t, m)), None)
                  for m in modes}
        for c in categories:
            chance = next((p["chance"] for p in points if (p["s"], p["t"], p["category"]) == (s, t, c)), None)
            rows.append([s, t, f"{c} ({100 * chance:.0f})" if chance is not None else c,
                         *(f"{pct(by[(s, t, c, m)])} ({tokens[m]})" if (s, t, c, m) in by else "-" for m in modes)])
    return table(["S", "T", "attribute (chance %)", *modes], rows)


def crossover_table(points: Sequence[Mapping[str, Any]], categories: Sequence[str], r: int = 1) -> str:
    """VTok minus frame sampling at its budget, in points [95%], per (S, T) and category; * = interval excludes 0."""
    by = {(p["s"], p["t"], p["category"], p["mode"]): p for p in points}
    vt, fb = f"vtok_r{r}", f"frames_budget_r{r}"
    rows = []
    for s, t in sorted({(p["s"], p["t"]) for p in points if p["mode"] == vt}):
        first_v = next(p for p in points if (p["s"], p["t"], p["mode"]) == (s, t, vt))
        first_f = next((p for p in points if (p["s"], p["t"], p["mode"]) == (s, t, fb)), None)
        if first_f is None:
            continue
        k = first_f["tokens"] // s
        rows.append([s, t, f"{first_v['tokens']} vs K={k}: {first_f['tokens']}",
                     *(signed(difference(by[(s, t, c, vt)], by[(s, t, c, fb)]))
                       if (s, t, c, vt) in by and (s, t, c, fb) in by else "-" for c in categories)])
    return table(["S", "T", f"tokens: VTok r={r} vs frames", *categories], rows)


def residual_gain_table(points: Sequence[Mapping[str, Any]], categories: Sequence[str]) -> str:
    """What r = 2 buys over r = 1: points gained, extra tokens, points per 10 extra tokens, per (S, T, category)."""
    by = {(p["s"], p["t"], p["category"], p["mode"]): p for p in points}
    rows = []
    for s, t in sorted({(p["s"], p["t"]) for p in points if p["mode"] == "vtok_r2"}):
        one = next((p for p in points if (p["s"], p["t"], p["mode"]) == (s, t, "vtok_r1")), None)
        two = next(p for p in points if (p["s"], p["t"], p["mode"]) == (s, t, "vtok_r2"))
        if one is None:
            continue
        extra = two["tokens"] - one["tokens"]
        cells = []
        for c in categories:
            if (s, t, c, "vtok_r1") not in by or (s, t, c, "vtok_r2") not in by:
                cells.append("-")
                continue
            d = difference(by[(s, t, c, "vtok_r2")], by[(s, t, c, "vtok_r1")])
            cells.append(f"{signed(d)}; {10 * d[0] / extra:+.2f}/10 tok")
        rows.append([s, t, f"{one['tokens']} -> {two['tokens']} (+{extra})", *cells])
    return table(["S", "T", "tokens r=1 -> r=2", *categories], rows)


def mllm_summary(mllms: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per (corner, mode): hits pooled over seeds per category, with Wilson intervals."""
    from vtok.eval.stats import wilson_interval

    pooled: dict[tuple[int, int, str], dict[str, Any]] = {}
    for cell in mllms:
        key = (cell["g"], cell["t"], cell["mode"]["label"])
        entry = pooled.setdefault(key, {"g": cell["g"], "t": cell["t"], "mode": cell["mode"]["label"], "r": cell["r"],
                                        "tokens": cell["mode"]["tokens"], "hits": defaultdict(int),
                                        "n": defaultdict(int), "seeds": [], "wall_s": [], "per_seed": defaultdict(list),
                                        "data_fingerprint": cell.get("data_fingerprint", "unknown")})
        entry["seeds"].append(cell["seed"])
        entry["wall_s"].append(cell["wall_s"])
        for c, h in cell["hits"].items():
            entry["hits"][c] += h
            entry["n"][c] += cell["clips"]
            entry["per_seed"][c].append(h / cell["clips"])
    out = []
    for entry in pooled.values():
        entry["s"] = entry["g"] ** 2
        entry["acc"] = {c: (h / entry["n"][c], *wilson_interval(h, entry["n"][c])) for c, h in entry["hits"].items()}
        entry["hits"], entry["n"], entry["per_seed"] = dict(entry["hits"]), dict(entry["n"]), dict(entry["per_seed"])
        out.append(entry)
    return sorted(out, key=lambda e: (e["g"], e["t"], PROBE_ORDER.index(e["mode"]) if e["mode"] in PROBE_ORDER
                                      else 99))


def mllm_cell_text(e: Mapping[str, Any], c: str) -> str:
    """Pooled accuracy % [95%], then each seed's accuracy when there are several."""
    if c not in e["acc"]:
        return "-"
    text = f"{100 * e['acc'][c][0]:.1f} [{100 * e['acc'][c][1]:.1f}, {100 * e['acc'][c][2]:.1f}]"
    seeds = e.get("per_seed", {}).get(c, [])
    return text + (" (" + ", ".join(f"{100 * v:.0f}" for v in seeds) + ")" if len(seeds) > 1 else "")


def mllm_table(summary: Sequence[Mapping[str, Any]], categories: Sequence[str]) -> str:
    """TV-Align understanding per corner and mode: pooled over seeds [95% Wilson], (each seed)."""
    rows = [[e["s"], e["t"], e["mode"], e["tokens"], len(e["seeds"]), *(mllm_cell_text(e, c) for c in categories),
             f"{sum(e['wall_s']) / len(e['wall_s']):.0f}"] for e in summary]
    return table(["S", "T", "mode", "tokens", "seeds", *categories, "train wall s / seed"], rows)


def result_rows(probes: Sequence[Mapping[str, Any]], summary: Sequence[Mapping[str, Any]]) -> list[Any]:
    """Every probe score and MLLM understanding accuracy as results-table rows (suites probe and tv_align)."""
    from bench.study import MLLM_STEPS
    from schemas.eval_result import ResultRow, now_iso
    from vtok.eval.probe import ProbeScore
    from vtok.eval.probe_rows import probe_result_rows

    rows: list[Any] = []
    fingerprints = {}
    for cell in probes:
        fingerprints[(cell["g"], cell["t"], cell["r"])] = cell["tokenizer_fingerprint"] or "unknown"
        scores = [ProbeScore(**{**s, "seed_accuracy": tuple(s["seed_accuracy"])}) for s in cell["scores"]]
        rows += probe_result_rows(scores, f"study.g{cell['g']}.t{cell['t']}.r{cell['r']}",
                                  cell["data_fingerprint"] or "unknown", fingerprints[(cell["g"], cell["t"],
                                                                                      cell["r"])])
    time = now_iso()
    for e in summary:
        for c, (acc, lo, hi) in e["acc"].items():
            rows.append(ResultRow(run=f"study.g{e['g']}.t{e['t']}.{e['mode']}", checkpoint=f"step_{MLLM_STEPS:08d}",
                                  step=MLLM_STEPS, suite="tv_align", metric="understanding", category=c, value=acc,
                                  n=e["n"][c], lo=lo, hi=hi, token_mode="vtok" if e["mode"].startswith("vtok")
                                  else "frame_sampling", token_budget=e["tokens"],
                                  data_fingerprint=e["data_fingerprint"],
                                  tokenizer_fingerprint=fingerprints.get((e["g"], e["t"], e["r"]), "unknown"),
                                  time=time))
    return rows


def report(folder: Path, out_dir: Path = RESULTS_DIR, figure_dir: Path = FIGURES_DIR) -> dict[str, Any]:
    """Print the tables; write figure_dir/fidelity_study.svg and out_dir/fidelity_study.parquet; return the
    payload."""
    import pyarrow.parquet as pq

    from bench.study import ATTRIBUTES
    from schemas.eval_result import to_table

    probes, mllms = load_cells(folder)
    points = probe_points(probes)
    categories = [c for c in ATTRIBUTES if any(p["category"] == c for p in points)] or list(ATTRIBUTES)
    summary = mllm_summary(mllms)
    tables = {"probe": probe_table(points, categories), "crossover_r1": crossover_table(points, categories, 1),
              "crossover_r2": crossover_table(points, categories, 2),
              "residual_gain": residual_gain_table(points, categories), "mllm": mllm_table(summary, categories)}
    for name, text in tables.items():
        print(f"\n## {name}\n{text}")
    out_dir.mkdir(parents=True, exist_ok=True)
    figure_dir.mkdir(parents=True, exist_ok=True)
    svg = figure_dir / "fidelity_study.svg"
    svg.write_text(study_svg(points, categories, "Probe accuracy vs tokens per clip (shapes world, tiny CLIP)"))
    rows = result_rows(probes, summary)
    parquet = out_dir / "fidelity_study.parquet"
    if rows:
        pq.write_table(to_table(rows), parquet)
    print(f"\nplot {svg}\nresults table {parquet} ({len(rows)} rows)")
    return {"points": points, "mllm": summary, "tables": tables, "probe_cells": [
        {k: v for k, v in c.items() if k != "scores"} for c in probes], "svg": str(svg), "results": str(parquet)}
