from __future__ import annotations

import dataclasses

import pyarrow as pa
import pytest

from schemas.eval_result import (
    COLUMNS,
    EVAL_DIR,
    EVAL_RESULT_VERSION,
    META_VERSION,
    RESULTS_DIR,
    ResultRow,
    parse_results_name,
    result_schema,
    results_name,
    rows_from_table,
    to_table,
    validate_table,
)

TIME = "2026-01-02T03:04:05+00:00"


def row(**changes: object) -> ResultRow:
    base = ResultRow(run="vtok-run", checkpoint="step_00000100", step=100, suite="tv_align_understanding",
                     metric="accuracy", category="color", value=0.1 + 0.2, n=40, lo=0.1734, hi=0.4522,
                     token_mode="vtok", token_budget=31, data_fingerprint="d" * 64, tokenizer_fingerprint="t" * 64,
                     time=TIME)
    return dataclasses.replace(base, **changes)


def test_layout_constants_and_schema_version() -> None:
    assert EVAL_RESULT_VERSION == 1
    assert RESULTS_DIR.startswith(EVAL_DIR + "/")
    schema = result_schema()
    assert schema.names == list(COLUMNS)
    assert schema.metadata[META_VERSION] == b"1"
    assert [f.name for f in schema if f.nullable] == ["lo", "hi", "token_budget"]


def test_round_trip_is_exact() -> None:
    rows = [row(), row(category="overall", lo=None, hi=None, token_budget=None, value=1e-300),
            row(metric="temporal_flickering", category="overall", value=0.987654321012345, n=1, lo=0.5, hi=0.5)]
    table = to_table(rows)
    assert validate_table(table) == []
    assert table.num_rows == 3
    assert rows_from_table(table) == rows
    assert table.column("value").to_pylist()[0] == 0.1 + 0.2  # not 0.3: stored as float64 bit for bit


def test_int_value_is_stored_as_float() -> None:
    table = to_table([row(value=1, lo=0, hi=1)])
    assert table.column("value").type == pa.float64()
    assert rows_from_table(table)[0].value == 1.0


def test_results_name_round_trips_and_is_listable() -> None:
    assert results_name("step_00000100", "tv_align_understanding") == "step_00000100__tv_align_understanding.parquet"
    for checkpoint, suite in [("step_00000100", "vbench"), ("step_123456789", "tv-align.gen"), ("final", "a")]:
        assert parse_results_name(results_name(checkpoint, suite)) == (checkpoint, suite)
    for name in (".tmp-abc", "_tmp-step_00000100__vbench.parquet", ".step_00000100__vbench.parquet",
                 "step_00000100__vbench.parquet.tmp", "step_00000100.parquet", "step_100__vbench.parquet",
                 "step_00000100___vbench.parquet", "lease.json"):
        assert parse_results_name(name) is None, name


@pytest.mark.parametrize(("checkpoint", "suite", "match"), [
    ("step_100", "vbench", "step_00000100"),
    ("step_00000100", "tv__align", "suite 'tv__align'"),
    ("../x", "vbench", "checkpoint '../x'"),
    ("step_00000100", "", "suite ''"),
    ("step_00000100", "_tmp", "suite '_tmp'"),
    ("step_00000100", "a/b", "suite 'a/b'"),
])
def test_results_name_refuses_bad_names(checkpoint: str, suite: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        results_name(checkpoint, suite)


@pytest.mark.parametrize(("changes", "match"), [
    ({"lo": 0.6, "hi": 0.5}, "lo 0.6 > hi 0.5"),
    ({"lo": None}, "give both bounds or neither"),
    ({"step": 200}, "step 200 is not the step of checkpoint 'step_00000100'"),
    ({"n": 0}, "n 0 is not >= 1"),
    ({"value": float("nan")}, "value nan is not finite"),
    ({"time": "2026-01-02 03:04:05"}, "not in UTC"),
    ({"time": "yesterday"}, "not ISO-8601"),
    ({"n": 3.0}, "n is 3.0, not an int"),
    ({"step": True}, "step is True, not an int"),
    ({"token_budget": "31"}, "token_budget is '31', not an int or None"),
    ({"metric": ""}, "metric '' is empty"),
    ({"token_budget": -1}, "token_budget -1 is negative"),
])
def test_to_table_refuses_bad_rows_naming_the_row(changes: dict, match: str) -> None:
    with pytest.raises(ValueError, match="bad result rows: row 1 .*" + match.replace("(", r"\(")):
        to_table([row(category="size"), row(**changes)])


def test_utc_z_suffix_is_accepted() -> None:
    assert rows_from_table(to_table([row(time="2026-01-02T03:04:05Z")]))[0].time == "2026-01-02T03:04:05Z"


def test_to_table_refuses_duplicate_keys() -> None:
    with pytest.raises(ValueError, match="duplicate key .*metric 'accuracy', category 'color'"):
        to_table([row(), row(category="size"), row(value=0.9)])
    # Another category, metric or run is another key.
    assert to_table([row(), row(metric="f1"), row(run="other")]).num_rows == 3


def _with(table: pa.Table, name: str, values: list, type_: pa.DataType | None = None) -> pa.Table:
    i = table.schema.get_field_index(name)
    return table.set_column(i, pa.field(name, type_ or table.schema.field(name).type), pa.array(values, type_))


def test_validate_table_names_each_problem() -> None:
    good = to_table([row(), row(category="size")])
    meta = good.schema.metadata
    assert validate_table(good.replace_schema_metadata({**meta, META_VERSION: b"2"})) == [
        "results schema version '2'; this vtok reads version 1"]
    assert "not a vtok results table" in validate_table(good.replace_schema_metadata({}))[0]
    assert validate_table(good.drop_columns(["n"])) == ["missing columns ['n']"]
    assert validate_table(good.append_column("extra", pa.array([1, 2]))) == ["unexpected columns ['extra']"]
    assert validate_table(_with(good, "n", [1.0, 2.0], pa.float64())) == ["column 'n' is double, not int64"]
    assert validate_table(_with(good, "run", ["a", None])) == ["column 'run' has 1 nulls"]
    assert validate_table(_with(good, "lo", [0.9, 0.1])) == [
        "row 0 (checkpoint 'step_00000100', suite 'tv_align_understanding', metric 'accuracy', category 'color'): "
        "lo 0.9 > hi 0.4522"]
    duplicated = _with(good, "category", ["color", "color"])
    assert validate_table(duplicated) == [
        "duplicate key (run 'vtok-run', checkpoint 'step_00000100', suite 'tv_align_understanding', "
        "metric 'accuracy', category 'color')"]


def test_to_table_refuses_non_rows() -> None:
    with pytest.raises(ValueError, match="result row 0 is a dict, not a ResultRow"):
        to_table([dataclasses.asdict(row())])  # type: ignore[list-item]
