from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.evaluate.results import (
    ResultsError,
    commit_results,
    committed_results,
    has_results,
    read_results,
    results_uri,
)
from schemas.eval_result import META_VERSION, ResultRow, rows_from_table, to_table
from vtok.eval.stats import accuracy_rows
from vtok.storage import NotFoundError

REPO = Path(__file__).resolve().parents[3]
TIME = "2026-03-04T05:06:07+00:00"


def rows(checkpoint: str = "step_00000100", suite: str = "tv_align_understanding", *, shift: int = 0,
         categories: tuple[str, ...] = ("color", "count", "size")) -> list[ResultRow]:
    """Accuracy rows as an evaluation would make them (`shift` changes every value)."""
    outcomes = {c: [(i + j + shift) % 3 != 0 for j in range(7 + i)] for i, c in enumerate(categories)}
    step = int(checkpoint.split("_")[1])
    return [ResultRow(run="run-a", checkpoint=checkpoint, step=step, suite=suite, metric="accuracy", category=c,
                      value=value, n=n, lo=lo, hi=hi, token_mode="vtok", token_budget=31,
                      data_fingerprint="d" * 64, tokenizer_fingerprint="t" * 64, time=TIME)
            for c, (value, n, lo, hi) in accuracy_rows(outcomes).items()]


def test_commit_then_read_round_trips_exactly(tmp_path: Path) -> None:
    run = str(tmp_path / "run")
    assert not has_results(run, "step_00000100", "tv_align_understanding")
    first = rows()
    uri = commit_results(run, "step_00000100", "tv_align_understanding", first)
    assert uri == f"{run}/eval/results/step_00000100__tv_align_understanding.parquet"
    assert os.listdir(tmp_path / "run" / "eval" / "results") == ["step_00000100__tv_align_understanding.parquet"]
    assert has_results(run, "step_00000100", "tv_align_understanding")
    assert not has_results(run, "step_00000100", "vbench")
    assert not has_results(run, "step_00000200", "tv_align_understanding")
    assert rows_from_table(read_results(run)) == first
    assert pq.read_metadata(uri).schema.to_arrow_schema().metadata[META_VERSION] == b"1"


def test_rerun_replaces_rows_and_suites_stay_apart(tmp_path: Path) -> None:
    run = str(tmp_path / "run")
    commit_results(run, "step_00000100", "tv_align_understanding", rows())
    commit_results(run, "step_00000100", "vbench", rows(suite="vbench"))
    commit_results(run, "step_00000200", "tv_align_understanding", rows("step_00000200"))
    again = rows(shift=1, categories=("color", "motion"))
    commit_results(run, "step_00000100", "tv_align_understanding", again)
    table = read_results(run)
    assert table.num_rows == 3 + 4 + 4
    keys = list(zip(*(table.column(c).to_pylist() for c in ("checkpoint", "suite", "metric", "category"))))
    assert len(set(keys)) == len(keys)
    got = [r for r in rows_from_table(table) if (r.checkpoint, r.suite) == ("step_00000100", "tv_align_understanding")]
    assert got == again  # the old file is gone as a whole: no 'count' or 'size' row survives
    assert list(committed_results(run)) == [("step_00000100", "tv_align_understanding"), ("step_00000100", "vbench"),
                                            ("step_00000200", "tv_align_understanding")]


def test_temp_files_are_never_read(tmp_path: Path) -> None:
    run = str(tmp_path / "run")
    commit_results(run, "step_00000100", "vbench", rows(suite="vbench"))
    folder = tmp_path / "run" / "eval" / "results"
    # What a write in progress, a dead writer or a lease (issue 15) leaves beside the results.
    (folder / ".tmp-k3j2h1").write_bytes(b"PAR1 half a file")
    (folder / "_tmp-step_00000200__vbench.parquet").write_bytes(b"PAR1 half")
    (folder / ".step_00000300__vbench.parquet").write_bytes(b"")
    (folder / "notes.txt").write_text("not a result")
    assert not has_results(run, "step_00000200", "vbench")
    assert list(committed_results(run)) == [("step_00000100", "vbench")]
    assert read_results(run).num_rows == 4


def _commit_and_die_before_rename(run: Path, checkpoint: str, shift: int) -> None:
    """A real process that dies (no cleanup, no exception handler runs) after writing the temp file, before the
    rename."""
    code = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(REPO)!r})
        from tests.pipelines.evaluate.test_results import rows
        from pipelines.evaluate.results import commit_results
        os.replace = lambda *a, **k: os._exit(137)
        commit_results({str(run)!r}, {checkpoint!r}, "vbench", rows({checkpoint!r}, suite="vbench", shift={shift}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 137, proc.stderr


def test_a_writer_killed_before_the_rename_leaves_no_result(tmp_path: Path) -> None:
    run = tmp_path / "run"
    folder = run / "eval" / "results"
    first = rows(suite="vbench")
    commit_results(str(run), "step_00000100", "vbench", first)
    before = (folder / "step_00000100__vbench.parquet").read_bytes()
    _commit_and_die_before_rename(run, "step_00000100", shift=2)  # a rerun of a committed pair
    _commit_and_die_before_rename(run, "step_00000200", shift=0)  # a new pair
    names = sorted(p.name for p in folder.iterdir())
    assert len(names) == 3 and names[-1] == "step_00000100__vbench.parquet", names
    assert all(n.startswith(".tmp-") and (folder / n).stat().st_size > 0 for n in names[:2])
    assert (folder / "step_00000100__vbench.parquet").read_bytes() == before
    assert not has_results(str(run), "step_00000200", "vbench")
    assert rows_from_table(read_results(str(run))) == first
    # The rerun commits as if nothing had happened.
    commit_results(str(run), "step_00000200", "vbench", rows("step_00000200", suite="vbench"))
    assert read_results(str(run)).num_rows == 8


def test_commit_refuses_rows_of_another_file_or_none(tmp_path: Path) -> None:
    run = str(tmp_path / "run")
    with pytest.raises(ValueError, match="result row 0 is for checkpoint 'step_00000100', suite 'vbench', "
                                         "not checkpoint 'step_00000100', suite 'tv_align'"):
        commit_results(run, "step_00000100", "tv_align", rows(suite="vbench"))
    with pytest.raises(ValueError, match="no result rows to commit for checkpoint 'step_00000100'"):
        commit_results(run, "step_00000100", "vbench", [])
    mixed = rows(suite="vbench")
    mixed[1] = dataclasses.replace(mixed[1], run="run-b")
    with pytest.raises(ValueError, match=r"of one run, got runs \['run-a', 'run-b'\]"):
        commit_results(run, "step_00000100", "vbench", mixed)
    with pytest.raises(ValueError, match="duplicate key"):
        commit_results(run, "step_00000100", "vbench", [*rows(suite="vbench"), rows(suite="vbench")[0]])
    with pytest.raises(ValueError, match="step_00000100"):
        commit_results(run, "step_100", "vbench", rows(suite="vbench"))
    assert not (tmp_path / "run").exists()  # nothing was written


def _write_raw(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def test_read_refuses_another_version_and_foreign_files_naming_them(tmp_path: Path) -> None:
    run = tmp_path / "run"
    commit_results(str(run), "step_00000100", "vbench", rows(suite="vbench"))
    newer = tmp_path / "run" / "eval" / "results" / "step_00000200__vbench.parquet"
    table = to_table(rows("step_00000200", suite="vbench"))
    _write_raw(newer, table.replace_schema_metadata({**table.schema.metadata, META_VERSION: b"2"}))
    with pytest.raises(ResultsError, match=f"^{newer}: not a v1 results table: results schema version '2'; "
                                           "this vtok reads version 1$"):
        read_results(str(run))
    newer.write_bytes(b"garbage, not parquet")
    with pytest.raises(ResultsError, match=f"^{newer}: not a readable Parquet file"):
        read_results(str(run))
    _write_raw(newer, to_table(rows("step_00000300", suite="vbench")))  # renamed by hand
    with pytest.raises(ResultsError, match=r"holds rows of \(checkpoint, suite\) \[\('step_00000300', 'vbench'\)\]"):
        read_results(str(run))


def test_read_of_a_run_without_results_and_of_no_run(tmp_path: Path) -> None:
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    empty = read_results(str(tmp_path / "run"))
    assert empty.num_rows == 0 and empty.schema.names[:3] == ["run", "checkpoint", "step"]
    with pytest.raises(NotFoundError, match="nope: no such run"):
        read_results(str(tmp_path / "nope"))


_READER = """
import json, sys
import pyarrow.dataset as ds
import pyarrow.parquet as pq
folder = sys.argv[1] + "/eval/results"
table = ds.dataset(folder, format="parquet").to_table()  # default ignore_prefixes=['.', '_'] skip temp files
first = pq.read_table(folder + "/step_00000100__vbench.parquet")
assert not [m for m in sys.modules if m.split(".")[0] in ("vtok", "schemas", "pipelines", "duckdb")]
print(json.dumps({"rows": table.num_rows, "value": first.column("value").to_pylist(),
                  "meta": {k.decode(): v.decode() for k, v in first.schema.metadata.items()}}))
"""

_SQL = """
import json, sys
import duckdb
import pandas as pd
glob = sys.argv[1] + "/eval/results/*.parquet"
got = duckdb.sql(f"SELECT checkpoint, count(*) AS n, max(value) AS best FROM read_parquet('{glob}') "
                 "WHERE category = 'overall' GROUP BY checkpoint ORDER BY checkpoint").fetchall()
df = pd.read_parquet(sys.argv[1] + "/eval/results/step_00000100__vbench.parquet")
assert not [m for m in sys.modules if m.split(".")[0] in ("vtok", "schemas", "pipelines")]
print(json.dumps({"duckdb": got, "pandas": df["lo"].tolist()}))
"""


def test_results_read_without_vtok(tmp_path: Path) -> None:
    run = tmp_path / "run"
    committed = {c: rows(c, suite="vbench") for c in ("step_00000100", "step_00000200")}
    for checkpoint, rs in committed.items():
        commit_results(str(run), checkpoint, "vbench", rs)
    (run / "eval" / "results" / ".tmp-deadbeef").write_bytes(b"PAR1 partial")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def run_reader(code: str) -> dict:
        proc = subprocess.run([sys.executable, "-c", code, str(run)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    plain = run_reader(_READER)
    assert plain["rows"] == 8
    assert plain["value"] == [r.value for r in committed["step_00000100"]]
    assert plain["meta"] == {"vtok.format": "vtok.eval_result", "vtok.eval_result_version": "1"}
    sql = run_reader(_SQL)
    best = {c: max(r.value for r in rs if r.category == "overall") for c, rs in committed.items()}
    assert sql["duckdb"] == [[c, 1, best[c]] for c in committed]
    assert sql["pandas"] == [r.lo for r in committed["step_00000100"]]


def test_s3_commit_rerun_and_read(s3_bucket: str, s3_endpoint: str) -> None:
    run = f"s3://{s3_bucket}/runs/vtok"
    opts = {"endpoint_url": s3_endpoint}
    assert not has_results(run, "step_00000100", "vbench", opts)
    uri = commit_results(run, "step_00000100", "vbench", rows(suite="vbench"), opts)
    assert uri == f"s3://{s3_bucket}/runs/vtok/eval/results/step_00000100__vbench.parquet"
    assert uri == results_uri(run, "step_00000100", "vbench")
    assert has_results(run, "step_00000100", "vbench", opts)
    again = rows(suite="vbench", shift=1)
    commit_results(run, "step_00000100", "vbench", again)  # endpoint from AWS_ENDPOINT_URL this time
    commit_results(run, "step_00000200", "tv_align", rows("step_00000200", suite="tv_align"), opts)
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.put_object(Bucket=s3_bucket, Key="runs/vtok/eval/results/.tmp-abandoned", Body=b"PAR1 partial")
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket)["Contents"])
    assert keys == ["runs/vtok/eval/results/.tmp-abandoned", "runs/vtok/eval/results/step_00000100__vbench.parquet",
                    "runs/vtok/eval/results/step_00000200__tv_align.parquet"]  # one object per commit, no temp
    table = read_results(run, opts)
    assert rows_from_table(table) == again + rows("step_00000200", suite="tv_align")
    with pytest.raises(NotFoundError, match="no such run"):
        read_results(f"s3://{s3_bucket}/runs/missing", opts)
