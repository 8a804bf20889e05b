"""The fidelity study's report (bench/study_report.py, bench/study_plot.py) on hand-made cells: no Ray, no model."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from bench.study_plot import study_svg
from bench.study_report import crossover_table, difference, probe_points, report, residual_gain_table
from schemas.eval_result import validate_table
from vtok.eval.stats import wilson_interval


def score(mode: str, attribute: str, hits: int, tokens: int, n: int = 100) -> dict[str, Any]:
    lo, hi = wilson_interval(hits, n)
    return dict(mode=mode, attribute=attribute, hits=hits, n=n, lo=lo, hi=hi, chance=0.2, tokens=tokens,
                train_clips=400, test_clips=n, classes=5, seed_accuracy=[hits / n], control=None)


def cells(folder: Path) -> Path:
    """S = 16 at T = 8 and 16; r = 1 and 2. VTok r=1 beats its budget's frames on motion only at T = 16."""
    for t in (8, 16):
        r1 = [score("vtok", "motion", 80 if t == 16 else 40, 16 + t - 1), score("frames_budget", "motion", 40, 16),
              score("all_frames", "motion", 90, 16 * t), score("key_only", "motion", 30, 16)]
        # r = 2 data holds all_frames too (the same frame tokens); the report keeps only vtok and frames_budget
        r2 = [score("vtok", "motion", 95, 16 + 4 * (t - 1)), score("frames_budget", "motion", 50, 16 * 2),
              score("all_frames", "motion", 1, 16 * t)]
        for r, scores in ((1, r1), (2, r2)):
            (folder / f"probe_g4_t{t}_r{r}.json").write_text(json.dumps(dict(
                g=4, t=t, r=r, S=16, clips=500, seconds=1.0, data="x", tokenizer_fingerprint="tf",
                data_fingerprint="df", scores=scores)))
    (folder / "mllm_g4_t16_vtok_r1_seed0.json").write_text(json.dumps(dict(
        g=4, t=16, r=1, mode={"label": "vtok_r1", "tokens": 31, "args": []}, seed=0, wall_s=60.0, clips=64,
        run="x", hits={"motion": 16, "color": 40}, data_fingerprint="df")))
    return folder


def test_difference_is_newcombe_and_signed() -> None:
    a = dict(acc=0.8, lo=0.71, hi=0.87)
    b = dict(acc=0.4, lo=0.31, hi=0.50)
    d, lo, hi = difference(a, b)
    assert d == pytest.approx(40.0) and lo < 40.0 < hi
    assert lo == pytest.approx(100 * (0.4 - ((0.8 - 0.71) ** 2 + (0.5 - 0.4) ** 2) ** 0.5))
    assert difference(b, a)[0] == pytest.approx(-40.0)


def test_tables_show_the_crossover_and_the_residual_gain(tmp_path: Path) -> None:
    from bench.study_report import load_cells

    probes, _ = load_cells(cells(tmp_path))
    points = probe_points(probes)
    assert {p["mode"] for p in points} == {"vtok_r1", "frames_budget_r1", "all_frames", "key_only", "vtok_r2",
                                          "frames_budget_r2"}
    assert not [p for p in points if p["mode"] == "all_frames" and p["acc"] < 0.5]  # r=2's all_frames left out
    text = crossover_table(points, ["motion"], 1)
    rows = {line.split("|")[2].strip(): line for line in text.splitlines()[2:]}
    assert "+40.0 [" in rows["16"] and rows["16"].rstrip(" |").endswith("*")  # T = 16: VTok ahead, interval > 0
    assert "+0.0 [" in rows["8"] and not rows["8"].rstrip(" |").endswith("*")
    gain = residual_gain_table(points, ["motion"])
    assert "31 -> 76 (+45)" in gain and "+15.0 [" in gain and "+3.33/10 tok" in gain


def test_report_writes_a_plot_and_a_valid_results_table(tmp_path: Path) -> None:
    out, folder = tmp_path / "out", tmp_path / "cells"
    folder.mkdir()
    payload = report(cells(folder), out, out)
    table = pq.read_table(out / "fidelity_study.parquet")
    assert validate_table(table) == []
    rows = table.to_pylist()
    assert {r["suite"] for r in rows} == {"probe", "tv_align"}
    mllm = {r["category"]: r for r in rows if r["suite"] == "tv_align"}
    assert mllm["motion"]["value"] == pytest.approx(16 / 64) and mllm["motion"]["token_budget"] == 31
    assert payload["mllm"][0]["acc"]["color"][0] == pytest.approx(40 / 64)
    root = ET.fromstring((out / "fidelity_study.svg").read_text())
    ns = "{http://www.w3.org/2000/svg}"
    # One panel (S = 16, motion): a marker per (T, mode), 2 x 6, and one in the legend per mode; each mode's
    # line joins its T = 8 and T = 16 points.
    assert len(root.findall(f"{ns}circle")) == 2 * 6 + 6
    lines = root.findall(f"{ns}polyline")
    assert len(lines) == 6 and all(len(line.attrib["points"].split()) == 2 for line in lines)
    assert "motion" in [t.text for t in root.findall(f"{ns}text")]


def test_plot_has_a_row_per_grid_and_joins_a_modes_frames() -> None:
    points = [dict(mode="vtok_r1", category="color", s=16, t=t, tokens=16 + t - 1, acc=0.9, lo=0.8, hi=0.95,
                   chance=0.2) for t in (8, 16, 32)]
    points.append(dict(mode="vtok_r1", category="color", s=64, t=8, tokens=71, acc=0.7, lo=0.6, hi=0.8, chance=0.2))
    root = ET.fromstring(study_svg(points, ["color"], "t"))
    ns = "{http://www.w3.org/2000/svg}"
    lines = root.findall(f"{ns}polyline")
    assert len(lines) == 1 and len(lines[0].attrib["points"].split()) == 3
    texts = [t.text for t in root.findall(f"{ns}text")]
    assert "S = 16" in texts and "S = 64" in texts
    assert texts.count("chance 20%") == 2  # below the axis (which starts at 50%): a note, not a line
