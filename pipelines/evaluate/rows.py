"""Measurements -> result rows (schemas/eval_result.py) of one checkpoint, and what each commit was made of.

TV-Align (suite "tv_align"): metric "understanding" / "generation" / "reconstruction", category each of TV-Align's
categories and "overall", value/n/lo/hi the accuracy with its 95% Wilson interval (tv_align.category_accuracy).

VBench (suite "vbench", category "all"): on the generated videos the metrics keep VBench's names
(temporal_flickering exact, proxy_* weight-free stand-ins, official dimensions when configured); on the
reconstructions (true tokens -> decoder) the same metrics prefixed "reconstruction/", e.g.
"reconstruction/temporal_flickering": the decoder's own ceiling, as in TV-Align. Each set also gets
"quality_score" (VBench's normalization and weights over the VBench dimensions present: exact
temporal_flickering and any official ones; never a proxy), "proxy_quality_score" (the same formula over the
weight-free metrics, proxies included: not a VBench number) and "total_score" when a semantic dimension is
present; a score's n is the videos' count and it has no interval. Which dimensions entered each score is in
the report (score_dimensions).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pipelines.evaluate.checks import MLLMCheckpoint
from schemas.eval_result import ResultRow, now_iso
from vtok.errors import InputError

TV_ALIGN = "tv_align"
VBENCH = "vbench"
SUITES: tuple[str, ...] = (TV_ALIGN, VBENCH)
"""The suites `vtok eval` knows."""
TV_ALIGN_METRICS: tuple[str, ...] = ("understanding", "generation", "reconstruction")
"""TV-Align's measurements, in the report's order."""
RECONSTRUCTION_PREFIX = "reconstruction/"
"""Prefix of the VBench metrics of the reconstructions (the generated videos' metrics have none)."""


def run_name(run_uri: str) -> str:
    """A run's name in its result rows: its folder's name."""
    return run_uri.rstrip("/").rsplit("/", 1)[-1]


def result_row(ckpt: MLLMCheckpoint, suite: str, metric: str, category: str, value: float, n: int,
               lo: float | None, hi: float | None, budget: int | None, tokenizer_fingerprint: str,
               time: str) -> ResultRow:
    """One row of `ckpt`'s results."""
    return ResultRow(run=run_name(ckpt.run), checkpoint=ckpt.name, step=ckpt.step, suite=suite, metric=metric,
                     category=category, value=float(value), n=int(n), lo=None if lo is None else float(lo),
                     hi=None if hi is None else float(hi), token_mode=ckpt.tokens, token_budget=budget,
                     data_fingerprint=str(ckpt.data.get("fingerprint") or "unknown"),
                     tokenizer_fingerprint=tokenizer_fingerprint, time=time)


def tv_align_rows(ckpt: MLLMCheckpoint, accuracy: Mapping[str, Mapping[str, tuple[float, int, float, float]]],
                  budget: int | None, tokenizer_fingerprint: str) -> list[ResultRow]:
    """Rows of {metric: category_accuracy(...)}: one per (metric, category), "overall" included."""
    time = now_iso()
    return [result_row(ckpt, TV_ALIGN, metric, category, *values, budget, tokenizer_fingerprint, time)
            for metric, per_category in accuracy.items() for category, values in per_category.items()]


def vbench_rows(ckpt: MLLMCheckpoint, videos: Mapping[str, Sequence[np.ndarray]], cfg: Any, budget: int | None,
                tokenizer_fingerprint: str) -> tuple[list[ResultRow], dict[str, dict[str, list[str]]]]:
    """(rows, {set: {score: dimensions it used}}) of VBench over each set of videos ("generation",
    "reconstruction"), named as the module docstring says."""
    from vtok.eval.vbench import vbench_metrics

    time = now_iso()
    rows: list[ResultRow] = []
    used: dict[str, dict[str, list[str]]] = {}
    for kind, clips in videos.items():
        if not clips:
            continue
        prefix = "" if kind == "generation" else RECONSTRUCTION_PREFIX
        measured = vbench_metrics(list(clips), cfg)
        scored, used[kind] = vbench_scores({r["metric"]: r["value"] for r in measured}, len(clips))
        for r in [*measured, *scored]:
            rows.append(result_row(ckpt, VBENCH, prefix + r["metric"], r["category"], r["value"], r["n"], r["lo"],
                                   r["hi"], budget, tokenizer_fingerprint, time))
    return rows, used


def vbench_scores(values: Mapping[str, float], n: int) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """VBench's aggregate scores over the measured `values` as rows (category "all", no interval), and the
    dimensions each used; a score with no dimension to use is left out."""
    from vtok.eval.vbench import CATEGORY, proxy_quality_score, quality_score, total_score

    official = {k: v for k, v in values.items() if not k.startswith("proxy_")}
    rows, used = [], {}
    for name, fn, given in (("quality_score", quality_score, official), ("total_score", total_score, official),
                            ("proxy_quality_score", proxy_quality_score, values)):
        try:
            value, dims = fn(given)
        except InputError:
            continue  # no dimension of its group was measured
        rows.append({"metric": name, "category": CATEGORY, "value": value, "n": n, "lo": None, "hi": None})
        used[name] = dims
    return rows, used


def commit_record(ckpt: MLLMCheckpoint, suite: str, settings: Mapping[str, Any], rows: Sequence[ResultRow],
                  storage_options: dict[str, Any] | None) -> str:
    """Commit `rows` as (ckpt, suite)'s results, then RUN/eval/records/<checkpoint>__<suite>.json: what they
    were made of (data, its contents' id, clips, settings), so a later `compare=` can tell whether they were
    made the same way. Returns the results file's URI."""
    from pipelines.evaluate.results import commit_results
    from vtok.storage import write_json

    uri = commit_results(ckpt.run, ckpt.name, suite, list(rows), storage_options)
    write_json(record_uri(ckpt, suite), {"checkpoint": ckpt.uri, "suite": suite, "results": uri, **settings},
               storage_options)
    return uri


def record_uri(ckpt: MLLMCheckpoint, suite: str) -> str:
    """RUN/eval/records/<checkpoint>__<suite>.json."""
    from schemas.eval_result import EVAL_DIR, results_name
    from vtok.storage import join

    return join(ckpt.run, EVAL_DIR, "records", results_name(ckpt.name, suite).rsplit(".", 1)[0] + ".json")


def made_the_same_way(ckpt: MLLMCheckpoint, suite: str, match: Mapping[str, Any], metric: str,
                      storage_options: dict[str, Any] | None) -> bool:
    """Whether (ckpt, suite) has committed results that measured `metric` with a record agreeing with every
    entry of `match` (the data's contents, the clips)."""
    from pipelines.evaluate.results import has_results
    from vtok.storage import read_json

    if not has_results(ckpt.run, ckpt.name, suite, storage_options):
        return False
    record = read_json(record_uri(ckpt, suite), storage_options) or {}
    return metric in record.get("metrics", []) and all(record.get(k) == v for k, v in match.items())
