"""`vtok eval` end to end on the session's trained checkpoints (real Ray Data, real models), and its refusals.

The MLLMs (vtok_run, baseline_run) and the decoder (decoder_run) trained on training_tokens; heldout_tokens is
another shapes world (another seed and folder, so no sample key is shared), tokenized the same way.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from jobs.cli import main
from tests.conftest import HELDOUT_CLIPS, MLLM_STEPS
from vtok.eval.tv_align import category_accuracy, judge_hits, merge_hits

# With the other tests of the session's trained models (pytest-xdist): they train once.
pytestmark = pytest.mark.xdist_group("trained")

CATEGORIES = ("count", "color", "size", "position", "motion", "overall")
CHECKPOINT = f"step_{MLLM_STEPS:08d}"
S, R, K = 16, 7, 2
"""Key tokens per clip (grid 4), residual steps of an 8-frame clip, the baseline's frames."""


def _rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def _show(capsys: pytest.CaptureFixture[str], text: str) -> None:
    """Measured figures on the terminal (`pytest -s`), past the capture the test reads the CLI's output with."""
    with capsys.disabled():
        print(text)


def _eval_args(run: Path, data: Path, *extra: str) -> list[str]:
    # Overrides are one run of positionals: the flag goes after them.
    return ["eval", f"checkpoint={run}", f"data={data}", *extra, "--no-progress"]


def test_eval_end_to_end_results_report_rerun_and_vtok_report(vtok_run, baseline_run, decoder_run, heldout_tokens,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    run, base, decoder = vtok_run[0], baseline_run[0], decoder_run[0]
    # The decoder's own held-out check samples with 10 steps at guidance 8 (tests/conftest.py DECODER_ARGS).
    args = _eval_args(run, heldout_tokens, "suites=[tv_align,vbench]", f"decoder={decoder}", f"compare={base}",
                      "steps=10", "guidance=8.0", "strip=3")
    started = time.perf_counter()
    assert main(args) == 0, capsys.readouterr().err
    first_s = time.perf_counter() - started
    out = capsys.readouterr().out
    results = run / "eval" / "results"
    tv = _rows(results / f"{CHECKPOINT}__tv_align.parquet")
    counts = Counter((r["metric"], r["category"]) for r in tv)
    assert counts == {(m, c): 1 for m in ("understanding", "generation", "reconstruction") for c in CATEGORIES}
    for r in tv:
        # Single-object clips: one question (understanding) or one item (a judged video) per category and clip.
        assert r["n"] == (5 * HELDOUT_CLIPS if r["category"] == "overall" else HELDOUT_CLIPS), r
        assert r["lo"] <= r["value"] <= r["hi"], r
        assert (r["run"], r["checkpoint"], r["step"], r["suite"]) == ("vtok", CHECKPOINT, MLLM_STEPS, "tv_align")
        assert (r["token_mode"], r["token_budget"]) == ("vtok", S + R)
    value = {(r["metric"], r["category"]): r["value"] for r in tv}
    _show(capsys, "measured tv_align " + json.dumps({f"{m}/{c}": round(v, 3) for (m, c), v in value.items()}))
    # The MLLM reads size at 0.89-1.00 in the training test.
    assert value["understanding", "size"] > 0.75, value
    # The judge behind generation and reconstruction reads the held-out clips' own 16 px frames (the decoder's
    # target) perfectly, so what it reads in a decoded video is the decoder's doing. The toy decoder's videos are
    # a tinted noise field in which it finds no object (measured: count 0 in 24 of 24 reconstructions, so every
    # category 0.00); the decoder test's colour check reads only the mean tint (0.54-0.69).
    truth = pq.read_table(heldout_tokens / "shards" / "part-00000.parquet",
                          columns=["attributes", "frames_lowres"]).to_pylist()
    ceiling = merge_hits(*(judge_hits(np.asarray(r["frames_lowres"], np.uint8), r["attributes"])[0] for r in truth))
    assert category_accuracy(ceiling)["color"][0] >= 0.9 and len(truth) == HELDOUT_CLIPS

    vb = _rows(results / f"{CHECKPOINT}__vbench.parquet")
    metrics = {r["metric"]: r for r in vb}
    assert len(metrics) == len(vb) and {r["category"] for r in vb} == {"all"}
    names = {"temporal_flickering", "proxy_subject_consistency", "proxy_motion_smoothness", "proxy_dynamic_degree",
             "quality_score", "proxy_quality_score"}
    assert set(metrics) == names | {f"reconstruction/{n}" for n in names}
    assert all(r["n"] == HELDOUT_CLIPS and 0 <= r["value"] <= 1 for r in vb), vb
    assert all(r["lo"] <= r["value"] <= r["hi"] for r in vb if r["lo"] is not None)
    _show(capsys, "measured vbench " + json.dumps({m: round(r["value"], 4) for m, r in metrics.items()}))

    # The baseline's understanding on the same clips, committed under its own run.
    theirs = _rows(base / "eval" / "results" / f"{CHECKPOINT}__tv_align.parquet")
    assert {(r["metric"], r["category"]) for r in theirs} == {("understanding", c) for c in CATEGORIES}
    assert {(r["run"], r["token_mode"], r["token_budget"]) for r in theirs} == {("frames", "frame_sampling", K * S)}
    _show(capsys, "measured baseline " + json.dumps({r["category"]: round(r["value"], 3) for r in theirs}))

    page = (run / "eval" / "report.html").read_text()
    assert page.count('<section class="metric">') == 3 and page.count('class="interval"') >= 3 * len(CATEGORIES)
    assert "frames (frame_sampling)" in page  # the baseline's bars beside this run's
    assert "History across checkpoints" in page and f"checkpoints: {MLLM_STEPS}" in page
    assert page.count('class="prompt"') == 3 and page.count("data:image/png;base64,") >= 3 * 2 * 8
    assert page.count("</b>: the judge reads") == 6
    summary = json.loads((run / "eval" / "report.json").read_text())
    assert summary["clips"] == HELDOUT_CLIPS and summary["compare"]["tokens"] == "frame_sampling"
    assert summary["accuracy"]["understanding"]["size"]["value"] == value["understanding", "size"]
    for clip in summary["samples"]:  # each prompt's hits are its reading's, against one true object
        for metric in ("generation", "reconstruction"):
            assert clip[metric]["hits"]["count"] == [clip[metric]["reading"]["count"] == 1], clip
    assert "understanding" in out and "results tv_align" in out
    # The run's history (history.py), written by the eval job, with the compare= run as its baseline.
    history = json.loads((run / "eval" / "history.json").read_text())
    assert history["baseline"]["name"] == "frames" and history["metrics"][0]["best"]["checkpoint"] == CHECKPOINT
    assert 'data-role="baseline"' in (run / "eval" / "history.html").read_text()

    # A rerun replaces the results (same rows, one file per suite); the baseline's are read, not recomputed.
    baseline_bytes = (base / "eval" / "results" / f"{CHECKPOINT}__tv_align.parquet").read_bytes()
    started = time.perf_counter()
    assert main(args) == 0
    rerun_s = time.perf_counter() - started
    assert "its results of the same clips" in capsys.readouterr().out
    again = _rows(results / f"{CHECKPOINT}__tv_align.parquet")
    assert len(again) == len(tv) and Counter((r["metric"], r["category"]) for r in again) == counts
    assert sorted(p.name for p in results.iterdir()) == [f"{CHECKPOINT}__tv_align.parquet",
                                                        f"{CHECKPOINT}__vbench.parquet"]
    assert len(_rows(results / f"{CHECKPOINT}__vbench.parquet")) == len(vb)
    assert (base / "eval" / "results" / f"{CHECKPOINT}__tv_align.parquet").read_bytes() == baseline_bytes
    _show(capsys, f"measured eval {first_s:.1f} s, rerun {rerun_s:.1f} s")

    assert main(["report", str(run)]) == 0
    text = capsys.readouterr().out
    assert "steps" in text  # the training report is still there
    assert "eval tv_align" in text and "understanding size" in text and "reconstruction/temporal_flickering" in text
    assert "history tv_align understanding: best " + CHECKPOINT in text


def test_bad_inputs_fail_before_any_work_naming_the_key(vtok_run, baseline_run, decoder_run, heldout_tokens,
                                                        training_tokens: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    run, base, decoder = vtok_run[0], baseline_run[0], decoder_run[0]
    torn = tmp_path / "torn" / "checkpoints" / "step_00000300"
    shutil.copytree(run / "checkpoints" / CHECKPOINT, torn, ignore=shutil.ignore_patterns("complete"))
    cases = [
        (_eval_args(torn, heldout_tokens), f"checkpoint={torn}: not a complete checkpoint"),
        (_eval_args(run, training_tokens), f"data={training_tokens}: 160 of its 160 clips are training clips of "
                                           f"checkpoint={run}"),
        (_eval_args(run, heldout_tokens, "suites=[tv_align,nosuch]"), "suites: unknown suite 'nosuch'; known: "
                                                                      "tv_align, vbench"),
        (_eval_args(base, heldout_tokens, f"decoder={decoder}"), f"decoder={decoder} reads vtok tokens, but "
                                                                 f"checkpoint={base} is a frame_sampling MLLM"),
        (_eval_args(run, heldout_tokens, "suites=[vbench]"), "decoder: not set; vbench needs videos"),
        (_eval_args(run, heldout_tokens, "suites=[vbench]", f"decoder={decoder}", "vbench.python=/nowhere/python"),
         "vbench.python: /nowhere/python does not exist"),
    ]
    before = sorted(p.name for p in (run / "eval" / "results").glob("*")) if (run / "eval").exists() else []
    for args, message in cases:
        started = time.perf_counter()
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, (args, err)
        assert time.perf_counter() - started < 20, args  # checks only: no Ray work
    after = sorted(p.name for p in (run / "eval" / "results").glob("*")) if (run / "eval").exists() else []
    assert after == before
