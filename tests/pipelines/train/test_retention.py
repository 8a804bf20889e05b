"""Retention that waits for evaluation (issue 15, point 3): real checkpoints (save_checkpoint), real results
commits (commit_results), locally and on the moto S3 server; no Ray Train."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from jobs.config import ConfigError
from jobs.train import load_train_mllm_config
from pipelines.evaluate.results import commit_results
from pipelines.train.config import CheckpointSettings, TrainSettings
from pipelines.train.data import loop_spec
from pipelines.train.loop import LoopSpec, _retain
from pipelines.train.metrics import MetricsLog
from pipelines.train.report import format_train_report, summarize
from pipelines.train.retention import awaiting_evaluation, retain_evaluated
from schemas.eval_result import ResultRow
from vtok.training.checkpoint import list_checkpoints, save_checkpoint

TIME = "2026-03-04T05:06:07+00:00"


def _checkpoints(run: str, steps: tuple[int, ...], opts: dict | None = None) -> None:
    for step in steps:
        save_checkpoint(run, step, json_files={"state.json": {"step": step}}, storage_options=opts)


def _commit(run: str, step: int, suite: str, opts: dict | None = None) -> None:
    name = f"step_{step:08d}"
    row = ResultRow(run="vtok", checkpoint=name, step=step, suite=suite, metric="understanding", category="overall",
                    value=0.5, n=10, lo=0.2, hi=0.8, token_mode="vtok", token_budget=23, data_fingerprint="d" * 64,
                    tokenizer_fingerprint="t" * 64, time=TIME)
    commit_results(run, name, suite, [row], opts)


def _steps(run: str, opts: dict | None = None) -> list[int]:
    return [i.step for i in list_checkpoints(run, opts)]


def test_unevaluated_checkpoints_are_kept_until_their_results_are_committed(tmp_path: Path) -> None:
    run = str(tmp_path / "run")
    _checkpoints(run, (10, 20, 30))
    # keep_last alone would delete 10 and 20: neither has tv_align results.
    done = retain_evaluated(run, 1, ["tv_align"])
    assert (done.deleted, done.kept, done.awaiting) == ([], [10, 20, 30], {10: ["tv_align"], 20: ["tv_align"],
                                                                          30: ["tv_align"]})
    assert done.note == ("keeping 3 checkpoints, not checkpoint.keep_last=1: step_00000010, step_00000020 have no "
                         "results for suite tv_align yet (eval.required_suites)")
    assert _steps(run) == [10, 20, 30]

    _commit(run, 10, "tv_align")
    _commit(run, 20, "vbench")  # another suite's results do not count
    done = retain_evaluated(run, 1, ["tv_align"])
    assert (done.deleted, done.kept) == ([10], [20, 30])
    assert done.note == ("keeping 2 checkpoints, not checkpoint.keep_last=1: step_00000020 has no results for "
                         "suite tv_align yet (eval.required_suites)")
    assert _steps(run) == [20, 30]

    # Two suites: step 20 has vbench only, step 40 (new) has neither; the newest is kept anyway, no note for it.
    _checkpoints(run, (40,))
    done = retain_evaluated(run, 1, ["tv_align", "vbench"])
    assert (done.deleted, done.kept) == ([], [20, 30, 40])
    assert done.awaiting == {20: ["tv_align"], 30: ["tv_align", "vbench"], 40: ["tv_align", "vbench"]}
    assert done.note == ("keeping 3 checkpoints, not checkpoint.keep_last=1: step_00000020 has no results for suite "
                         "tv_align yet; step_00000030 has no results for suites tv_align, vbench yet "
                         "(eval.required_suites)")

    # keep_last covers every unevaluated one: nothing extra kept, no note; without suites keep_last alone decides.
    done = retain_evaluated(run, 3, ["tv_align"])
    assert (done.deleted, done.kept, done.note) == ([], [20, 30, 40], None)
    done = retain_evaluated(run, 1)
    assert (done.deleted, done.kept, done.awaiting, done.note) == ([20, 30], [40], {}, None)


def test_incomplete_checkpoints_are_not_protected(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _checkpoints(str(run), (10, 20))
    (run / "checkpoints" / "step_00000010" / "complete").unlink()  # a crash's leftover
    assert awaiting_evaluation(str(run), ["tv_align"]) == {20: ["tv_align"]}
    done = retain_evaluated(str(run), 1, ["tv_align"])
    assert (done.deleted, done.kept, done.note) == ([10], [20], None)


def test_retention_on_s3(s3_bucket: str, s3_endpoint: str) -> None:
    run, opts = f"s3://{s3_bucket}/runs/vtok", {"endpoint_url": s3_endpoint}
    _checkpoints(run, (1, 2, 3), opts)
    done = retain_evaluated(run, 1, ["tv_align"], storage_options=opts)
    assert (done.deleted, done.kept) == ([], [1, 2, 3])
    assert "step_00000001, step_00000002 have no results for suite tv_align yet" in str(done.note)
    _commit(run, 2, "tv_align", opts)
    done = retain_evaluated(run, 1, ["tv_align"], storage_options=opts)
    assert (done.deleted, done.kept) == ([2], [1, 3])
    assert _steps(run, opts) == [1, 3]


def test_the_loop_passes_the_suites_and_logs_why(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """What train_loop runs after each save (rank 0), from a config loaded the way `vtok train mllm` loads it."""
    run = str(tmp_path / "run")
    cfg = load_train_mllm_config([f"data={tmp_path}/tokens", f"output={run}", "checkpoint.keep_last=1",
                                  "eval.required_suites=[tv_align]"])
    assert cfg.eval.required_suites == ["tv_align"]
    spec = loop_spec(cfg, cfg.eval.required_suites)
    assert (spec.required_suites, spec.checkpoint.keep_last) == (("tv_align",), 1)
    _checkpoints(run, (10, 20))
    log = MetricsLog(run)
    record: dict = {"step": 20, "loss": 1.0}
    log.add(record)
    with caplog.at_level(logging.WARNING, logger="pipelines.train.loop"):
        _retain(spec, record)
    log.flush()
    note = ("keeping 2 checkpoints, not checkpoint.keep_last=1: step_00000010 has no results for suite tv_align yet "
            "(eval.required_suites)")
    assert record == {"step": 20, "loss": 1.0, "checkpoints_kept": 2, "checkpoints_awaiting_eval": 2, "retention": note}
    assert note in caplog.text
    report = summarize(run, cfg)
    assert report["retention"] == {"step": 20, "kept": 2, "awaiting_eval": 2, "note": note}
    assert f"checkpoints        {note}" in format_train_report(report)

    # Results committed meanwhile (a scan): the next save's retention deletes step 10.
    _commit(run, 10, "tv_align")
    record = {"step": 30}
    _retain(spec, record)
    assert record == {"step": 30, "checkpoints_kept": 1, "checkpoints_awaiting_eval": 1}
    assert _steps(run) == [20]

    # Without required suites the loop's spec keeps its old behaviour (keep_last and protect_steps only).
    plain = LoopSpec(run_uri=run, train=TrainSettings(), checkpoint=CheckpointSettings(keep_last=1))
    record = {"step": 40}
    _retain(plain, record)
    assert record == {"step": 40, "checkpoints_kept": 1}


def test_unknown_suite_is_refused_naming_the_key(tmp_path: Path) -> None:
    base = [f"data={tmp_path}/tokens", f"output={tmp_path}/run"]
    with pytest.raises(ConfigError, match=r"^eval.required_suites: unknown suite 'tv_algn'; known: tv_align, "
                                          r"vbench$"):
        load_train_mllm_config([*base, "eval.required_suites=[tv_algn]"])
    with pytest.raises(ConfigError, match="eval.required_suites: a suite is given twice"):
        load_train_mllm_config([*base, "eval.required_suites=[tv_align,tv_align]"])
    assert load_train_mllm_config(base).eval.required_suites == []
