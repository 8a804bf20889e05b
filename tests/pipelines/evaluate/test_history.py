"""The eval history (issue 15, point 4): RUN/eval/history.json and history.html from committed results, the
baseline run beside the run, the best checkpoint per metric, `vtok report` lines; locally and on S3. No Ray."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from jobs.cli import main
from pipelines.evaluate.history import build_history, write_history
from pipelines.evaluate.report import format_eval_results
from pipelines.evaluate.results import commit_results
from schemas.eval_result import ResultRow
from vtok.storage import get_fs

TIME = "2026-03-04T05:06:07+00:00"
# step -> category -> value of the run's understanding: overall ties at 20 and 30 (the earliest wins).
UNDERSTANDING = {10: {"color": 0.5, "size": 0.25, "overall": 0.375},
                 20: {"color": 0.75, "size": 0.75, "overall": 0.75},
                 30: {"color": 1.0, "size": 0.5, "overall": 0.75}}
GENERATION = {10: 0.125, 20: 0.5, 30: 0.25}
FLICKER = {10: 0.9, 20: 0.95, 30: 0.97}
BASELINE = {10: {"color": 0.25, "size": 0.5, "overall": 0.375}, 30: {"color": 0.5, "size": 0.5, "overall": 0.5}}


def _row(run: str, step: int, suite: str, metric: str, category: str, value: float, mode: str = "vtok") -> ResultRow:
    return ResultRow(run=run, checkpoint=f"step_{step:08d}", step=step, suite=suite, metric=metric, category=category,
                     value=value, n=8, lo=None, hi=None, token_mode=mode, token_budget=23,
                     data_fingerprint="d" * 64, tokenizer_fingerprint="t" * 64, time=TIME)


def _commit_all(run: str, base: str, opts: dict | None = None) -> None:
    for step, values in UNDERSTANDING.items():
        rows = [_row("vtok", step, "tv_align", "understanding", c, v) for c, v in values.items()]
        rows.append(_row("vtok", step, "tv_align", "generation", "overall", GENERATION[step]))
        commit_results(run, f"step_{step:08d}", "tv_align", rows, opts)
        commit_results(run, f"step_{step:08d}", "vbench",
                       [_row("vtok", step, "vbench", "temporal_flickering", "all", FLICKER[step])], opts)
    for step, values in BASELINE.items():
        commit_results(base, f"step_{step:08d}", "tv_align",
                       [_row("frames", step, "tv_align", "understanding", c, v, "frame_sampling")
                        for c, v in values.items()], opts)


def _series(page: str, section: str) -> dict[tuple[str, str], dict[int, float]]:
    """(role, category) -> {step: value} of every line in the page's section headed `section`."""
    part = page.split(f"<h2>{section}</h2>", 1)[1].split("</section>", 1)[0]
    found = re.findall(r'<polyline class="series" data-run="[^"]*" data-role="(\w+)" data-category="([^"]+)" '
                       r'data-values="([^"]*)"', part)
    return {(role, cat): {int(s): float(v) for s, v in (p.split(":") for p in values.split(","))}
            for role, cat, values in found}


def _check_history(history: dict, page: str) -> None:
    entries = {(m["suite"], m["metric"]): m for m in history["metrics"]}
    assert list(entries) == [("tv_align", "understanding"), ("tv_align", "generation"), ("vbench", "temporal_flickering")]
    lines = _series(page, "tv_align understanding")
    expected = {("run", c): {s: v[c] for s, v in UNDERSTANDING.items()} for c in ("color", "size", "overall")}
    expected |= {("baseline", c): {s: v[c] for s, v in BASELINE.items()} for c in ("color", "size", "overall")}
    assert lines == expected  # one line per category for each run, exact values
    assert page.count('data-role="baseline"') == 3 and page.count('stroke-dasharray="6 4"') >= 3
    assert _series(page, "tv_align generation") == {("run", "overall"): GENERATION}
    assert _series(page, "vbench temporal_flickering") == {("run", "all"): FLICKER}
    best = {k: (m["best"]["checkpoint"], m["best"]["category"], m["best"]["value"]) for k, m in entries.items()}
    assert best == {("tv_align", "understanding"): ("step_00000020", "overall", 0.75),
                    ("tv_align", "generation"): ("step_00000020", "overall", 0.5),
                    ("vbench", "temporal_flickering"): ("step_00000030", "all", 0.97)}
    assert "best checkpoint: step_00000020 (overall 0.750" in page
    assert history["baseline"]["name"] == "frames"
    assert history["checkpoints"] == [{"step": s, "checkpoint": f"step_{s:08d}"} for s in (10, 20, 30)]


def test_history_page_json_and_vtok_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, base = str(tmp_path / "vtok"), str(tmp_path / "frames")
    _commit_all(run, base)
    history, uri = write_history(run, baseline_run=base)
    assert uri == f"{run}/eval/history.html"
    page = Path(uri).read_text()
    _check_history(history, page)
    stored = json.loads((tmp_path / "vtok" / "eval" / "history.json").read_text())
    assert stored["baseline"]["run"] == base and stored["metrics"] == history["metrics"]

    # A later eval without compare= (a scan's) keeps the baseline history.json names.
    _, uri = write_history(run)
    _check_history(json.loads((tmp_path / "vtok" / "eval" / "history.json").read_text()), Path(uri).read_text())

    lines = format_eval_results(run)
    at = lines.index("history tv_align understanding: best step_00000020 (overall 0.750)")
    assert [line.split() for line in lines[at + 1:at + 7]] == [
        ["color", "10:", "0.500", "20:", "0.750", "30:", "1.000"],
        ["size", "10:", "0.250", "20:", "0.750", "30:", "0.500"],
        ["overall", "10:", "0.375", "20:", "0.750", "30:", "0.750"],
        ["color", "[baseline", "frames]", "10:", "0.250", "30:", "0.500"],
        ["size", "[baseline", "frames]", "10:", "0.500", "30:", "0.500"],
        ["overall", "[baseline", "frames]", "10:", "0.375", "30:", "0.500"]]
    assert "history vbench temporal_flickering: best step_00000030 (all 0.970)" in lines
    assert main(["report", run]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "history tv_align generation: best step_00000020 (overall 0.500)" in out
    assert [line.split() for line in out if line.strip().startswith("overall")][0] == [
        "overall", "10:", "0.375", "20:", "0.750", "30:", "0.750"]


def test_a_missing_baseline_is_named_not_fatal(tmp_path: Path) -> None:
    run = str(tmp_path / "vtok")
    _commit_all(run, str(tmp_path / "frames"))
    history = build_history(run, baseline_run=str(tmp_path / "gone"))
    assert "no such run" in history["baseline"]["problem"]
    assert all(s["role"] == "run" for m in history["metrics"] for s in m["series"])
    assert len(history["metrics"][0]["series"]) == 3


def test_history_on_s3(s3_bucket: str, s3_endpoint: str) -> None:
    opts = {"endpoint_url": s3_endpoint}
    run, base = f"s3://{s3_bucket}/runs/vtok", f"s3://{s3_bucket}/runs/frames"
    _commit_all(run, base, opts)
    history, uri = write_history(run, opts, baseline_run=base)
    fs, path = get_fs(uri, opts)
    _check_history(history, fs.cat_file(path).decode())
    fs, path = get_fs(f"{run}/eval/history.json", opts)
    assert json.loads(fs.cat_file(path))["baseline"]["run"] == base
    assert "history tv_align understanding: best step_00000020 (overall 0.750)" in format_eval_results(run, opts)
