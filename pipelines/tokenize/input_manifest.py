"""Manifests (csv, jsonl, json, parquet) as a source: one clip per row; a bad row is quarantined, not fatal."""

from __future__ import annotations

import io
import json
import math
from typing import Any

from pipelines.tokenize.clips import BAD_ROW, ClipItem, Skips, SourceConfig, make_sample_key, normalize_uri
from vtok.storage import get_fs, parent, resolve

_UTF8_BOM = b"\xef\xbb\xbf"


def read_manifest(
    uri: str, cfg: SourceConfig, storage_options: dict[str, Any] | None, skips: Skips
) -> list[ClipItem]:
    """One item per distinct manifest row, in manifest order; a row that cannot be used is a bad_row item.

    The same clip listed twice (under any spelling of its URI) is kept once and counted as a duplicate;
    two rows for one clip that disagree (another caption, say) are an error, since only one can win.
    """
    columns, rows = _manifest_rows(uri, storage_options)
    if rows and cfg.uri_column not in columns:
        raise ValueError(f"manifest {uri}: no {cfg.uri_column!r} column (columns: {columns})")
    base = parent(uri)
    items: list[ClipItem] = []
    first: dict[str, tuple[int, ClipItem]] = {}
    for n, row in enumerate(rows, start=1):
        item, spelled = _manifest_item(uri, base, n, row, cfg)
        seen = first.get(item.sample_key)
        if seen is None:
            first[item.sample_key] = (n, item)
            items.append(item)
        elif seen[1] == item:
            skips.add("duplicate", f"{spelled} (row {n}, same as row {seen[0]})")
        else:
            differ = [f for f in ("caption", "clip_start_s", "clip_end_s", "attributes")
                      if getattr(seen[1], f) != getattr(item, f)]
            raise ValueError(
                f"manifest {uri}: rows {seen[0]} and {n} list the same clip of {item.source_uri} with a "
                f"different {', '.join(differ) or 'value'}; a clip is tokenized once, so keep one row per clip"
            )
    return items


def _manifest_rows(uri: str, storage_options: dict[str, Any] | None) -> tuple[list[str], list[Any]]:
    """The column names and the rows (dicts; anything else for a JSON line that is not an object)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, path = get_fs(uri, storage_options)
    lower = uri.lower()
    with fs.open(path, "rb") as f:
        data = f.read()
    if lower.endswith(".parquet"):
        try:
            table = pq.read_table(pa.BufferReader(data))
        except pa.ArrowException as err:
            raise ValueError(f"manifest {uri}: not a readable Parquet file ({_one_line(err)})") from err
        return table.column_names, table.to_pylist()
    # A BOM is what Excel and PowerShell put in front of UTF-8: drop it, or the first column is misnamed.
    bom = len(_UTF8_BOM) if data.startswith(_UTF8_BOM) else 0
    try:
        text = data[bom:].decode("utf-8")
    except UnicodeDecodeError as err:
        at = bom + err.start
        raise ValueError(f"manifest {uri}: not UTF-8 text (byte 0x{data[at]:02x} at offset {at})") from err
    if lower.endswith(".csv"):
        return _csv_rows(uri, data[bom:], text)
    rows = _json_rows(uri, text, whole=lower.endswith(".json"))
    # Every key of every row, not the first row's: rows may differ in which optional columns they have.
    columns = list(dict.fromkeys(k for r in rows if isinstance(r, dict) for k in r))
    return columns, rows


def _csv_rows(uri: str, data: bytes, text: str) -> tuple[list[str], list[dict[str, Any]]]:
    """Every cell as text ("" when empty): type inference per block fails on a column that is text in
    one row and a number in another, so numbers are parsed per row by _manifest_item instead."""
    import csv

    import pyarrow as pa
    import pyarrow.csv

    try:
        header = next(csv.reader(io.StringIO(text)), None)
    except csv.Error as err:
        raise ValueError(f"manifest {uri}: not a readable CSV ({_one_line(err)})") from err
    if not header:
        return [], []
    try:
        table = pyarrow.csv.read_csv(
            pa.py_buffer(data),
            # Quoted captions may hold newlines.
            parse_options=pyarrow.csv.ParseOptions(newlines_in_values=True),
            # No null strings: "NA" is a caption and "nan" a bad clip time, not missing values ("" is).
            convert_options=pyarrow.csv.ConvertOptions(
                column_types={name: pa.string() for name in header}, strings_can_be_null=False
            ),
        )
    except pa.ArrowException as err:
        raise ValueError(f"manifest {uri}: not a readable CSV ({_one_line(err)})") from err
    return table.column_names, table.to_pylist()


def _json_rows(uri: str, text: str, whole: bool) -> list[Any]:
    """JSON Lines, or for a .json file one document: an array of rows, or a single row."""
    if whole and text.lstrip().startswith("["):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(_json_error(uri, err.lineno, err)) from err
        return list(doc)
    rows = []
    # split("\n"), not splitlines(): that also splits at U+2028 and the like, which JSON strings may hold.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(_json_error(uri, lineno, err)) from err
    return rows


def _json_error(uri: str, lineno: int, err: json.JSONDecodeError) -> str:
    return f"manifest {uri}: line {lineno} is not valid JSON ({err.msg}, column {err.colno})"


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _manifest_item(uri: str, base: str, n: int, row: Any, cfg: SourceConfig) -> tuple[ClipItem, str]:
    """The item of manifest row `n` (1-based) and the URI as the row spells it.

    Every problem of the row goes into one error_message; the item of a bad row is keyed by its URI and
    row number (by the manifest and row number when the URI itself is bad), so it can collide neither
    with a good row of the same video nor with another bad row.
    """
    here = f"{uri}#row{n}"
    if not isinstance(row, dict):
        return _bad_row(here, None, n, uri, [f"not a JSON object but {type(row).__name__} {row!r:.40}"]), here
    problems: list[str] = []
    raw = row.get(cfg.uri_column)
    source: str | None = None
    spelled = here
    if raw is None:
        problems.append(f"{cfg.uri_column} is missing")
    elif isinstance(raw, bool) or not isinstance(raw, (str, int)):
        problems.append(f"{cfg.uri_column} {raw!r:.60} is not text")
    elif not str(raw).strip():
        problems.append(f"{cfg.uri_column} is empty")
    else:
        spelled = resolve(base, str(raw))
        source = normalize_uri(spelled)
    start = _clip_time(row, "clip_start_s", problems)
    if start is not None and start < 0:
        problems.append(f"clip_start_s {start} is negative")
        start = None
    end = _clip_time(row, "clip_end_s", problems)
    # Compared only with a usable start: a bad start is reported once, not again through the end.
    if end is not None and not any(p.startswith("clip_start_s") for p in problems) and end <= (start or 0.0):
        problems.append(f"clip_end_s {end} is not after clip_start_s {start or 0.0}")
    caption = _caption(row.get(cfg.caption_column), cfg.caption_column, problems)
    attributes = row.get("attributes") or None
    if attributes is not None and not isinstance(attributes, str):
        try:
            attributes = json.dumps(attributes, sort_keys=True)
        except (TypeError, ValueError):
            problems.append(f"attributes of type {type(attributes).__name__} is not JSON")
            attributes = None
    if problems or source is None:
        return _bad_row(here, source, n, uri, problems), spelled
    item = ClipItem(
        sample_key=make_sample_key(source, start, end),
        source_uri=source,
        caption=caption,
        clip_start_s=start,
        clip_end_s=end,
        attributes=attributes,
    )
    return item, spelled


def _bad_row(here: str, source: str | None, n: int, uri: str, problems: list[str]) -> ClipItem:
    return ClipItem(
        sample_key=make_sample_key(f"{source}#row{n}" if source else here),
        source_uri=source or here,
        error_reason=BAD_ROW,
        error_message=f"manifest {uri}: row {n}: {'; '.join(problems)}",
    )


def _clip_time(row: dict[str, Any], column: str, problems: list[str]) -> float | None:
    """A clip bound in seconds, None when absent; a value that is not a finite number is a problem."""
    value = row.get(column)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        problems.append(f"{column} {value!r} is not a number")
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        problems.append(f"{column} {value!r:.40} is not a number")
        return None
    if not math.isfinite(seconds):
        problems.append(f"{column} {value!r:.40} is not a finite number")
        return None
    return seconds


def _caption(value: Any, column: str, problems: list[str]) -> str | None:
    """Captions are text; a number (a CSV of ids, a JSON 42) is written as text rather than lost."""
    if value is None or isinstance(value, str):
        return value or None  # an empty CSV cell is no caption, as a missing key is
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (bool, int, float)):
        return str(value)
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            problems.append(f"{column} is bytes that are not UTF-8 text")
            return None
    try:
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)
