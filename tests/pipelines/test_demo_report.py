"""The demo's page (pipelines/demo_report.py) from the session's trained MLLMs: understanding scored in-process on the
held-out world, committed as real results, read back into the page; and the demo's own checks (no Ray)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from jobs.demo import baseline_frames, prepare_out
from pipelines.demo_report import (
    Report,
    answer_floors,
    format_table,
    latest_results,
    tv_align_table,
    write_demo_page,
)
from tests.conftest import MLLM_STEPS
from vtok.errors import InputError

pytestmark = pytest.mark.xdist_group("trained")


def _commit_understanding(run: Path, into: Path, held_rows: list[dict]) -> dict[str, tuple]:
    """Score `run`'s checkpoint on the held-out rows (TV-Align's scoring, in this process) and commit the
    accuracy as `into`'s tv_align results, as vtok eval does; returns category -> (value, n, lo, hi)."""
    from pipelines.evaluate.checks import mllm_checkpoint
    from pipelines.evaluate.results import commit_results
    from pipelines.evaluate.rows import tv_align_rows
    from pipelines.train.evaluate_quick import load_latest
    from vtok.eval.tv_align import category_accuracy, understanding_hits

    ckpt = mllm_checkpoint(str(run), "checkpoint", None)
    accuracy = category_accuracy(understanding_hits(load_latest(str(run)).eval(), held_rows))
    commit_results(str(into), ckpt.name, "tv_align", tv_align_rows(ckpt, {"understanding": accuracy}, None, "fp"))
    return accuracy


def test_page_links_existing_reports_and_holds_the_results_values(vtok_run, baseline_run, heldout_tokens,
                                                                 tmp_path: Path) -> None:
    import torch

    from vtok.dataset import read_shard_samples, shard_uris

    # A dozen held-out clips: the page reads what was committed, whatever the count (scoring costs ~0.2 s a clip).
    held = [r for uri in shard_uris(str(heldout_tokens)) for r in read_shard_samples(uri)][:12]
    runs = {"vtok": tmp_path / "runs" / "vtok", "frames": tmp_path / "runs" / "frames"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        measured = {}
        for (name, into), (src, _) in zip(runs.items(), (vtok_run, baseline_run)):
            into.mkdir(parents=True)
            shutil.copy(src / "report.html", into / "report.html")
            measured[name] = _commit_understanding(src, into, held)
    finally:
        torch.set_num_threads(threads)
    assert latest_results(str(runs["vtok"]))[0] == f"step_{MLLM_STEPS:08d}"

    floors = answer_floors([r["attributes"] for r in held])
    rows = tv_align_table(str(runs["vtok"]), str(runs["frames"]), floors)
    assert [r.category for r in rows] == ["count", "color", "size", "position", "motion", "overall"]
    for row in rows:
        assert (row.vtok[0], row.n) == measured["vtok"][row.category][:2]
        assert row.baseline[0] == measured["frames"][row.category][0]
    # One object per clip: the count question always has the answer "one", so its majority is 1 and chance 1/4.
    assert floors["count"] == (0.25, 1.0)
    assert rows[0].chance == 0.25 and rows[0].majority == 1.0

    reports = [Report("tokenize (held-out world)", str(heldout_tokens / "report.html")),  # run_tokenize: no report
               Report("train MLLM (vtok)", str(runs["vtok"] / "report.html")),
               Report("train MLLM (frame sampling)", str(runs["frames"] / "report.html")),
               Report("evaluate", str(runs["vtok"] / "eval" / "report.html"))]  # no vtok eval here
    path = write_demo_page(str(tmp_path), reports, rows, [("train", 61.0), ("evaluate", 89.0)], ("VTok", "frames K=2"),
                           vbench=[("temporal_flickering", 0.97124)])
    html = Path(path).read_text()
    assert Path(path) == tmp_path / "index.html"
    assert re.findall(r'href="([^"]+)"', html) == ["runs/vtok/report.html", "runs/frames/report.html"]
    assert html.count("not written") == 2
    for row in rows:
        v, lo, hi = row.vtok
        assert f"<td>{row.category}</td><td>{row.n}</td><td>{v:.2f} [{lo:.2f}, {hi:.2f}]</td>" in html
        b, blo, bhi = row.baseline
        assert f"<td>{b:.2f} [{blo:.2f}, {bhi:.2f}]</td>" in html
    assert "2.5 min" in html  # the stages' total, 150 s
    assert "<td>temporal_flickering</td><td>0.9712</td>" in html
    text = format_table(rows)
    assert len(text) == 1 + len(rows) and text[0].split()[:3] == ["metric", "category", "n"]
    overall = rows[-1]
    assert text[-1].split()[:4] == ["understanding", "overall", str(overall.n), f"{overall.vtok[0]:.2f}"]


def test_answer_floors_chance_and_majority_of_known_clips() -> None:
    def clip(color: str, size: str) -> dict:
        return {"count": 1, "objects": [{"shape": "circle", "color": color, "size": size, "position": "center",
                                         "motion": "static"}]}

    floors = answer_floors([clip("red", "small"), clip("red", "large"), clip("blue", "small"), clip("red", "small")])
    assert floors["color"] == pytest.approx((1 / 6, 0.75))
    assert floors["size"] == pytest.approx((1 / 2, 0.75))
    assert floors["position"][1] == 1.0 and floors["motion"][1] == 1.0
    # 20 questions: count 4 + colour 3 + size 3 + position 4 + motion 4 majority hits.
    assert floors["overall"][1] == pytest.approx(18 / 20)
    with pytest.raises(ValueError, match="no questions"):
        answer_floors([])


def test_baseline_budget_and_out_folder_checks(tmp_path: Path) -> None:
    assert baseline_frames(16, 7) == 1 and baseline_frames(16, 16) == 2 and baseline_frames(4, 15) == 4
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match=r"--out .*mine: not empty and not made by vtok demo \(holds notes.txt\)"):
        prepare_out(foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
    demo = tmp_path / "demo"
    prepare_out(demo)
    (demo / "runs").mkdir()
    (demo / "index.html").write_text("old")
    (demo / "extra").write_text("the user's")
    prepare_out(demo)  # the marker says the demo made it: its own entries go, anything else stays
    assert sorted(p.name for p in demo.iterdir()) == [".vtok-demo", "extra"]
