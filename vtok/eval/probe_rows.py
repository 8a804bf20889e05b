"""Probe scores -> rows of the evaluation results table (schemas/eval_result.py), suite "probe".

One (run, checkpoint) per probed mode: run names the dataset, checkpoint is "probe.<mode>" (the probe trains no
checkpoint; step 0), and per attribute (the category) two metrics: "accuracy" (held-out, pooled over seeds, 95%
Wilson interval) and "chance" (the training majority class on the same test clips), plus "shuffled_control"
when it was run. token_budget is the tokens per clip the mode keeps. DuckDB reads them with the other suites:
`SELECT * FROM read_parquet('.../*.parquet') WHERE suite = 'probe'`.
"""

from __future__ import annotations

from collections.abc import Sequence

from schemas.eval_result import ResultRow, now_iso
from vtok.eval.probe import ProbeScore

SUITE = "probe"
"""The probe's suite name in the results table."""
_TOKEN_MODES = {"vtok": "vtok", "key_only": "key_only"}


def token_mode(mode: str) -> str:
    """The results table's token_mode of a probe mode: vtok, key_only, or frame_sampling for the frame modes."""
    return _TOKEN_MODES.get(mode, "frame_sampling")


def probe_result_rows(scores: Sequence[ProbeScore], run: str, data_fingerprint: str, tokenizer_fingerprint: str,
                      checkpoint_prefix: str = "probe") -> list[ResultRow]:
    """Rows of every score: accuracy and chance (and shuffled_control) per (mode, attribute)."""
    from vtok.eval.stats import wilson_interval

    time = now_iso()
    rows: list[ResultRow] = []
    for s in scores:
        common = dict(run=run, checkpoint=f"{checkpoint_prefix}.{s.mode}", step=0, suite=SUITE, category=s.attribute,
                      token_mode=token_mode(s.mode), token_budget=s.tokens, data_fingerprint=data_fingerprint,
                      tokenizer_fingerprint=tokenizer_fingerprint, time=time)
        rows.append(ResultRow(metric="accuracy", value=s.accuracy, n=s.n, lo=s.lo, hi=s.hi, **common))
        chance_hits = round(s.chance * s.test_clips)
        rows.append(ResultRow(metric="chance", value=s.chance, n=s.test_clips,
                              lo=wilson_interval(chance_hits, s.test_clips)[0],
                              hi=wilson_interval(chance_hits, s.test_clips)[1], **common))
        if s.control is not None:
            hits = round(s.control * s.n)
            rows.append(ResultRow(metric="shuffled_control", value=s.control, n=s.n,
                                  lo=wilson_interval(hits, s.n)[0], hi=wilson_interval(hits, s.n)[1], **common))
    return rows
