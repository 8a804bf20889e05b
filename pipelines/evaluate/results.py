"""A run's evaluation results on storage: one Parquet file per (checkpoint, suite), committed whole.

`commit_results` writes the file in one step: locally a temp file in the same folder (a '.tmp-' name no reader
takes for a result) renamed over the final name, on S3 one PUT of the whole object, which becomes visible
only once complete. So a reader sees the previous file or the new one, never half of one; a rerun of the
same (checkpoint, suite) replaces its file as a whole; and a writer killed before the rename leaves only a
temp file, which `read_results` and `has_results` ignore. Layout and schema: schemas/eval_result.py.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from schemas.eval_result import (
    COLUMNS,
    RESULTS_DIR,
    ResultRow,
    parse_results_name,
    result_schema,
    results_name,
    to_table,
    validate_table,
)
from vtok.errors import InputError
from vtok.storage import NotFoundError, StorageError, get_fs, join, write_bytes_atomic


class ResultsError(InputError):
    """A committed results file that is not a v1 results table (another version, unreadable, misnamed)."""


def results_dir(run_uri: str) -> str:
    """RUN/eval/results, with run_uri's scheme."""
    return join(run_uri, RESULTS_DIR)


def results_uri(run_uri: str, checkpoint: str, suite: str) -> str:
    """Where the results of one (checkpoint, suite) are committed: RUN/eval/results/<checkpoint>__<suite>.parquet."""
    return join(results_dir(run_uri), results_name(checkpoint, suite))


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def commit_results(run_uri: str, checkpoint: str, suite: str, rows: Sequence[ResultRow],
                   storage_options: dict[str, Any] | None = None) -> str:
    """Commit `rows` as the results of (checkpoint, suite) of the run at `run_uri`; return the file's URI.

    Atomic, and a previous commit of the same (checkpoint, suite) is replaced as a whole. Every row must be of
    this checkpoint and suite and of one run; a bad row or a key given twice fails (ValueError) before any write.
    """
    uri = results_uri(run_uri, checkpoint, suite)
    if not rows:
        raise ValueError(f"no result rows to commit for checkpoint {checkpoint!r}, suite {suite!r}")
    for i, row in enumerate(rows):
        if isinstance(row, ResultRow) and (row.checkpoint, row.suite) != (checkpoint, suite):
            raise ValueError(f"result row {i} is for checkpoint {row.checkpoint!r}, suite {row.suite!r}, "
                             f"not checkpoint {checkpoint!r}, suite {suite!r}")
    data = _parquet_bytes(to_table(rows))
    runs = sorted({row.run for row in rows})
    if len(runs) > 1:
        raise ValueError(f"result rows of one commit must be of one run, got runs {runs}")
    try:
        write_bytes_atomic(uri, data, storage_options)
    except Exception as err:  # noqa: BLE001 - every backend raises its own types
        raise StorageError(f"{uri}: cannot write the results ({type(err).__name__}: {err})") from err
    return uri


def has_results(run_uri: str, checkpoint: str, suite: str, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether (checkpoint, suite) of the run has committed results (a temp file of a write in progress or
    killed does not count)."""
    fs, path = get_fs(results_uri(run_uri, checkpoint, suite), storage_options)
    # A long-lived process (a scan) must see other processes' commits, not its own cached listing.
    fs.invalidate_cache(posixpath.dirname(path))
    return bool(fs.isfile(path))


def committed_results(run_uri: str, storage_options: dict[str, Any] | None = None) -> dict[tuple[str, str], str]:
    """Every committed results file of the run: (checkpoint, suite) -> URI, sorted; {} when there is none."""
    fs, path = get_fs(results_dir(run_uri), storage_options)
    fs.invalidate_cache(path)
    try:
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        return {}
    found: dict[tuple[str, str], str] = {}
    for entry in entries:
        name = posixpath.basename(entry["name"].rstrip("/"))
        parsed = parse_results_name(name)
        if parsed is not None and entry.get("type") == "file":
            found[parsed] = join(results_dir(run_uri), name)
    return dict(sorted(found.items()))


def _parse_file(uri: str, key: tuple[str, str], data: bytes) -> pa.Table:
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as err:
        raise ResultsError(f"{uri}: not a readable Parquet file ({err})") from err
    problems = validate_table(table)
    if problems:
        raise ResultsError(f"{uri}: not a v1 results table: {'; '.join(problems)}")
    pairs = set(zip(table.column("checkpoint").to_pylist(), table.column("suite").to_pylist()))
    if pairs != {key}:
        raise ResultsError(f"{uri}: holds rows of (checkpoint, suite) {sorted(pairs)}, but its name says {key}")
    return table.select(list(COLUMNS)).cast(result_schema())


def read_results(run_uri: str, storage_options: dict[str, Any] | None = None) -> pa.Table:
    """Every committed result of the run as one v1 table (files in name order, rows in file order).

    Temp files are ignored; a file of another schema version, or not a results table, is refused with a
    ResultsError naming it. An empty table when the run has no results; NotFoundError when there is no run.
    Rows of different files never share a key: checkpoint and suite are part of both the key and the name.
    """
    files = committed_results(run_uri, storage_options)
    fs, _ = get_fs(results_dir(run_uri), storage_options)
    if not files:
        _, run_path = get_fs(run_uri, storage_options)
        if not fs.exists(run_path):
            raise NotFoundError(f"{run_uri}: no such run")
        return result_schema().empty_table()
    paths = {key: get_fs(uri, storage_options)[1] for key, uri in files.items()}
    # One call for every file: object stores fetch them concurrently.
    blobs = fs.cat(list(paths.values()))
    tables = [_parse_file(files[key], key, blobs[path]) for key, path in paths.items()]
    return pa.concat_tables(tables)
