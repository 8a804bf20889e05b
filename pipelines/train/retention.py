"""Checkpoint retention that waits for evaluation: `checkpoint.keep_last`, except that a complete checkpoint
lacking committed results (RUN/eval/results) for any of the run's `eval.required_suites` is kept.

The training loop calls `retain_evaluated` after each save. It reads the results folder at that moment, so a
scan committing results while training runs frees those checkpoints at the next save. A scan that has not
committed yet (still evaluating, or failed) leaves its checkpoint protected: retention errs on keeping. The
note says which checkpoints are kept past keep_last and for which suites, for the log, metrics.jsonl and the
training report.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from schemas.checkpoint import step_dir_name

REQUIRED_SUITES_KEY = "eval.required_suites"


@dataclass(frozen=True)
class Retention:
    """What one retention pass did."""

    deleted: list[int]
    """Steps whose folders it deleted, ascending."""
    kept: list[int]
    """Steps of the complete checkpoints left, ascending."""
    awaiting: dict[int, list[str]] = field(default_factory=dict)
    """Complete checkpoints kept that still lack results: step -> the required suites missing."""
    note: str | None = None
    """Why more than checkpoint.keep_last are kept, in one line; None when keep_last alone decided."""


def awaiting_evaluation(run_uri: str, required_suites: Sequence[str],
                        storage_options: dict[str, Any] | None = None,
                        checkpoints: Sequence[Any] | None = None) -> dict[int, list[str]]:
    """Every complete checkpoint of the run without committed results for some suite of `required_suites`:
    step -> those suites, in `required_suites` order ({} when none is required). `checkpoints`: the run's
    list_checkpoints, when the caller has it."""
    from pipelines.evaluate.results import committed_results
    from vtok.training.checkpoint import list_checkpoints

    if not required_suites:
        return {}
    done = committed_results(run_uri, storage_options)
    infos = list_checkpoints(run_uri, storage_options) if checkpoints is None else checkpoints
    out: dict[int, list[str]] = {}
    for info in infos:
        missing = [s for s in required_suites if (step_dir_name(info.step), s) not in done]
        if info.complete and missing:
            out[info.step] = missing
    return out


def retention_note(kept: Sequence[int], keep_last: int, extra: dict[int, list[str]]) -> str | None:
    """The log line for checkpoints kept past keep_last because `extra` (step -> missing suites) lack results."""
    if not extra:
        return None
    groups: dict[tuple[str, ...], list[int]] = {}
    for step in sorted(extra):
        groups.setdefault(tuple(extra[step]), []).append(step)
    reasons = []
    for suites, steps in groups.items():
        names = ", ".join(step_dir_name(s) for s in steps)
        verb = "has" if len(steps) == 1 else "have"
        what = f"suite {suites[0]}" if len(suites) == 1 else f"suites {', '.join(suites)}"
        reasons.append(f"{names} {verb} no results for {what} yet")
    return (f"keeping {len(kept)} checkpoints, not checkpoint.keep_last={keep_last}: {'; '.join(reasons)} "
            f"({REQUIRED_SUITES_KEY})")


def retain_evaluated(run_uri: str, keep_last: int, required_suites: Sequence[str] = (),
                     protect: Collection[int] = (), storage_options: dict[str, Any] | None = None) -> Retention:
    """vtok.training.checkpoint.retain with every checkpoint awaiting a required suite protected too.

    Kept: the keep_last newest complete checkpoints, the steps in `protect`, every complete checkpoint without
    committed results for one of `required_suites`, and what retain always keeps (the newest complete one,
    newer incomplete ones). Deleted: the rest older than the newest complete one.
    """
    from vtok.training.checkpoint import list_checkpoints, retain

    infos = list_checkpoints(run_uri, storage_options)
    awaiting = awaiting_evaluation(run_uri, required_suites, storage_options, infos)
    deleted = retain(run_uri, keep_last, protect={*protect, *awaiting}, storage_options=storage_options)
    complete = [i.step for i in infos if i.complete and i.step not in deleted]
    # Kept because of the suites: only what keep_last and `protect` alone would have deleted.
    usual = {*complete[-keep_last:], *protect}
    extra = {s: suites for s, suites in awaiting.items() if s not in usual}
    return Retention(deleted=deleted, kept=complete, awaiting=awaiting, note=retention_note(complete, keep_last, extra))


def retention_summary(records: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The last retention pass in metrics.jsonl's records (its checkpoint step's record): {"step", "kept",
    "awaiting_eval", "note"}, or None before the first checkpoint."""
    last = next((r for r in reversed(records) if "checkpoints_kept" in r), None)
    if last is None:
        return None
    return {"step": last["step"], "kept": last["checkpoints_kept"],
            "awaiting_eval": last.get("checkpoints_awaiting_eval"), "note": last.get("retention")}
