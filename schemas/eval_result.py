"""Evaluation results table v1: one row per (run, checkpoint, step, suite, metric, category). pyarrow only.

A run keeps its results under `RUN/eval/results/`, one Parquet file per (checkpoint, suite) named
`<checkpoint>__<suite>.parquet` (e.g. `step_00000100__tv_align_understanding.parquet`), so listing the folder
tells which checkpoints have results for which suites without opening a file. Each file is committed whole
(a rerun replaces it), so a reader never sees half a result and rows are never duplicated. Names starting
with "." or "_" are temporary: every reader here, pyarrow.dataset's defaults and a `*.parquet` glob
(DuckDB, pandas) skip them. The file metadata holds the schema version; a reader refuses another one.

DuckDB without vtok: `SELECT * FROM read_parquet('RUN/eval/results/*.parquet')`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

from schemas.checkpoint import STEP_PREFIX, parse_step

EVAL_RESULT_VERSION: int = 1
EVAL_DIR = "eval"
"""RUN/eval/: everything evaluation writes into a run."""
RESULTS_DIR = "eval/results"
"""RUN/eval/results/<checkpoint>__<suite>.parquet: the committed results, one file per (checkpoint, suite)."""
RESULTS_SUFFIX = ".parquet"
NAME_SEPARATOR = "__"
TEMP_PREFIXES = (".", "_")
"""A file in RESULTS_DIR whose name starts with one of these is not a result (a temp file, a lease)."""
OVERALL_CATEGORY = "overall"
"""The category of a metric pooled over every category of its suite."""

META_FORMAT = b"vtok.format"
FORMAT = "vtok.eval_result"
META_VERSION = b"vtok.eval_result_version"

KEY_COLUMNS: tuple[str, ...] = ("run", "checkpoint", "suite", "metric", "category")
"""A row's identity: a table holds each key once."""

_NAME_RE = re.compile(r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*")


@dataclass(frozen=True)
class ResultRow:
    """One measured value of one metric for one category, of one checkpoint of one run."""

    run: str
    """The run's name (its folder or id), the same for every row of the run."""
    checkpoint: str
    """The checkpoint's folder name, e.g. step_00000100 (schemas.checkpoint.step_dir_name)."""
    step: int
    """The training step of the checkpoint (equals the one its folder name spells, when it spells one)."""
    suite: str
    """The evaluation that produced the row, e.g. tv_align_understanding, vbench."""
    metric: str
    """What is measured, e.g. accuracy, temporal_flickering."""
    category: str
    """The slice it is measured on, e.g. color, motion, or "overall" (OVERALL_CATEGORY)."""
    value: float
    """The measurement (finite)."""
    n: int
    """How many samples (questions, clips) the value is over, >= 1."""
    lo: float | None
    """Lower bound of the confidence interval, or None when there is none (then hi is None too)."""
    hi: float | None
    """Upper bound of the confidence interval, >= lo, or None."""
    token_mode: str
    """How clips were given to the model: vtok (S + R tokens) or frame_sampling (T x S)."""
    token_budget: int | None
    """Visual tokens per clip the model saw (S + R, or K * S), or None when not fixed."""
    data_fingerprint: str
    """Fingerprint of the token dataset the checkpoint was trained on."""
    tokenizer_fingerprint: str
    """Fingerprint of the tokenizer that made the tokens (the shards' vtok.tokenizer_fingerprint)."""
    time: str
    """When the value was measured: ISO-8601 in UTC, e.g. 2026-01-01T12:00:00+00:00 (now_iso())."""


_TYPES: dict[str, pa.DataType] = {
    "run": pa.string(), "checkpoint": pa.string(), "step": pa.int64(), "suite": pa.string(),
    "metric": pa.string(), "category": pa.string(), "value": pa.float64(), "n": pa.int64(),
    "lo": pa.float64(), "hi": pa.float64(), "token_mode": pa.string(), "token_budget": pa.int64(),
    "data_fingerprint": pa.string(), "tokenizer_fingerprint": pa.string(), "time": pa.string(),
}
_NULLABLE = frozenset({"lo", "hi", "token_budget"})
COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(ResultRow))
assert set(COLUMNS) == set(_TYPES), "ResultRow and the schema disagree"


def now_iso() -> str:
    """The current time as ResultRow.time wants it (UTC, seconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def result_schema() -> pa.Schema:
    """The v1 schema: COLUMNS in order, the version in the schema metadata."""
    return pa.schema(
        [pa.field(name, _TYPES[name], nullable=name in _NULLABLE) for name in COLUMNS],
        metadata={META_FORMAT: FORMAT.encode(), META_VERSION: str(EVAL_RESULT_VERSION).encode()},
    )


def name_problem(kind: str, name: Any) -> str | None:
    """Why `name` cannot be a checkpoint or suite name (`kind`), or None when it can.

    Letters and digits, with single '.', '_' or '-' between them: no '__' (the separator of results_name), no
    leading '.' or '_' (temp names), nothing a path or a glob would read differently.
    """
    if not isinstance(name, str) or _NAME_RE.fullmatch(name) is None or NAME_SEPARATOR in name:
        return (f"{kind} {name!r} is not a name of letters and digits with single '.', '_' or '-' between them")
    if kind == "checkpoint" and name.startswith(STEP_PREFIX) and parse_step(name) is None:
        return f"checkpoint {name!r} looks like a step folder but is not spelled step_00000100 (8 digits)"
    return None


def results_name(checkpoint: str, suite: str) -> str:
    """The file name of one (checkpoint, suite)'s results: step_00000100__tv_align.parquet."""
    for kind, name in (("checkpoint", checkpoint), ("suite", suite)):
        problem = name_problem(kind, name)
        if problem is not None:
            raise ValueError(problem)
    return f"{checkpoint}{NAME_SEPARATOR}{suite}{RESULTS_SUFFIX}"


def parse_results_name(name: str) -> tuple[str, str] | None:
    """(checkpoint, suite) of a committed results file name, or None for anything else (temp files included)."""
    if not isinstance(name, str) or not name.endswith(RESULTS_SUFFIX):
        return None
    checkpoint, sep, suite = name[: -len(RESULTS_SUFFIX)].partition(NAME_SEPARATOR)
    if not sep or name_problem("checkpoint", checkpoint) or name_problem("suite", suite):
        return None
    return checkpoint, suite


def _time_problem(value: str) -> str | None:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError:
        return f"time {value!r} is not ISO-8601"
    if parsed.utcoffset() is None or parsed.utcoffset().total_seconds() != 0:
        return f"time {value!r} is not in UTC (give it a +00:00 offset)"
    return None


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _type_problem(row: ResultRow) -> str | None:
    for name in COLUMNS:
        value = getattr(row, name)
        if value is None and name in _NULLABLE:
            continue
        kind = _TYPES[name]
        ok = (isinstance(value, str) if kind == pa.string() else _is_int(value) if kind == pa.int64()
              else _is_number(value))
        if not ok:
            wanted = {pa.string(): "a str", pa.int64(): "an int"}.get(kind, "a float")
            return f"{name} is {value!r}, not {wanted}" + (" or None" if name in _NULLABLE else "")
    return None


def _describe(row: dict[str, Any]) -> str:
    return ", ".join(f"{k} {row.get(k)!r}" for k in ("checkpoint", "suite", "metric", "category"))


def _row_problems(row: dict[str, Any]) -> list[str]:
    """What is wrong with one row's values (types already checked)."""
    problems: list[str] = []
    for kind in ("checkpoint", "suite"):
        problem = name_problem(kind, row[kind])
        if problem:
            problems.append(problem)
    for name in ("run", "metric", "category", "token_mode", "data_fingerprint", "tokenizer_fingerprint"):
        if not row[name] or row[name] != row[name].strip():
            problems.append(f"{name} {row[name]!r} is empty or has surrounding spaces")
    step = row["step"]
    if step < 0:
        problems.append(f"step {step} is negative")
    named = parse_step(row["checkpoint"]) if isinstance(row["checkpoint"], str) else None
    if named is not None and named != step:
        problems.append(f"step {step} is not the step of checkpoint {row['checkpoint']!r} ({named})")
    if not math.isfinite(row["value"]):
        problems.append(f"value {row['value']!r} is not finite")
    if row["n"] < 1:
        problems.append(f"n {row['n']} is not >= 1")
    lo, hi = row["lo"], row["hi"]
    if (lo is None) != (hi is None):
        problems.append(f"lo {lo!r} and hi {hi!r}: give both bounds or neither")
    elif lo is not None and not (math.isfinite(lo) and math.isfinite(hi)):
        problems.append(f"lo {lo!r} / hi {hi!r} are not finite")
    elif lo is not None and lo > hi:
        problems.append(f"lo {lo!r} > hi {hi!r}")
    if row["token_budget"] is not None and row["token_budget"] < 0:
        problems.append(f"token_budget {row['token_budget']} is negative")
    time_problem = _time_problem(row["time"])
    if time_problem:
        problems.append(time_problem)
    return problems


def _duplicate_problems(keys: Sequence[tuple[Any, ...]]) -> list[str]:
    seen: set[tuple[Any, ...]] = set()
    reported: set[tuple[Any, ...]] = set()
    problems: list[str] = []
    for key in keys:
        if key in seen and key not in reported:
            reported.add(key)
            problems.append("duplicate key (" + ", ".join(f"{c} {v!r}" for c, v in zip(KEY_COLUMNS, key)) + ")")
        seen.add(key)
    return problems


def to_table(rows: Sequence[ResultRow]) -> pa.Table:
    """The rows as a v1 table, in their order; ValueError (one line, naming the rows) for a bad value or a key
    (run, checkpoint, suite, metric, category) given twice."""
    problems: list[str] = []
    for i, row in enumerate(rows):
        if not isinstance(row, ResultRow):
            raise ValueError(f"result row {i} is a {type(row).__name__}, not a ResultRow")
        type_problem = _type_problem(row)
        if type_problem:
            problems.append(f"row {i} ({_describe(asdict(row))}): {type_problem}")
            continue
        problems.extend(f"row {i} ({_describe(asdict(row))}): {p}" for p in _row_problems(asdict(row)))
    problems.extend(_duplicate_problems([tuple(getattr(r, c) for c in KEY_COLUMNS) for r in rows]))
    if problems:
        raise ValueError("bad result rows: " + "; ".join(problems))
    schema = result_schema()
    columns = {
        name: pa.array([_arrow_value(getattr(r, name), name) for r in rows], type=_TYPES[name]) for name in COLUMNS
    }
    return pa.table(columns, schema=schema)


def _arrow_value(value: Any, name: str) -> Any:
    # An int given for a float column (value=1) is stored as the float it means.
    return float(value) if _TYPES[name] == pa.float64() and value is not None else value


def validate_table(table: pa.Table) -> list[str]:
    """What makes `table` not a v1 results table, as sentences; [] when it is one."""
    meta = table.schema.metadata or {}
    if META_VERSION not in meta:
        return [f"no {META_VERSION.decode()} in the schema metadata: not a vtok results table"]
    version = meta[META_VERSION].decode(errors="replace")
    if version != str(EVAL_RESULT_VERSION):
        return [f"results schema version {version!r}; this vtok reads version {EVAL_RESULT_VERSION}"]
    problems: list[str] = []
    names = table.schema.names
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        problems.append(f"missing columns {missing}")
    extra = [c for c in names if c not in _TYPES]
    if extra:
        problems.append(f"unexpected columns {extra}")
    if len(set(names)) != len(names):
        problems.append("a column appears twice")
    for name in COLUMNS:
        if name in names and table.schema.field(name).type != _TYPES[name]:
            problems.append(f"column {name!r} is {table.schema.field(name).type}, not {_TYPES[name]}")
    if problems:
        return problems
    for name in COLUMNS:
        nulls = table.column(name).null_count
        if nulls and name not in _NULLABLE:
            problems.append(f"column {name!r} has {nulls} nulls")
    if problems:
        return problems
    rows = table.select(list(COLUMNS)).to_pylist()
    for i, row in enumerate(rows):
        problems.extend(f"row {i} ({_describe(row)}): {p}" for p in _row_problems(row))
    problems.extend(_duplicate_problems([tuple(r[c] for c in KEY_COLUMNS) for r in rows]))
    return problems


def rows_from_table(table: pa.Table) -> list[ResultRow]:
    """The rows of a valid v1 table (validate_table first), in table order."""
    return [ResultRow(**row) for row in table.select(list(COLUMNS)).to_pylist()]
