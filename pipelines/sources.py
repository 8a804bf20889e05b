"""List what to tokenize: a folder of videos or a manifest, as clip rows with stable sample keys.

Listing runs on the driver and only touches metadata (names, sizes), never video bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

from vtok.storage import get_fs, is_local, parent, resolve, strip_file_scheme

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v")
MANIFEST_EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet")


@dataclass
class SourceConfig:
    """Where the videos are and which of them to take."""

    extensions: list[str] = field(default_factory=lambda: list(VIDEO_EXTENSIONS))
    """File name endings that count as videos when listing a folder."""
    recursive: bool = True
    """List sub-folders too."""
    limit: int | None = None
    """Take only the first N clips (after sorting by sample key), for trial runs."""
    uri_column: str = "uri"
    """Manifest column holding each video's URI (relative URIs resolve against the manifest's folder)."""
    caption_column: str = "caption"
    """Manifest column holding the caption, if any."""

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"source.limit must be >= 1, got {self.limit}")
        if not self.extensions:
            raise ValueError("source.extensions must not be empty")


@dataclass(frozen=True)
class ClipItem:
    """One unit of work: a video, or a time range of one."""

    sample_key: str
    source_uri: str
    caption: str | None = None
    clip_start_s: float | None = None
    clip_end_s: float | None = None
    attributes: str | None = None  # JSON text

    def to_row(self) -> dict[str, Any]:
        return {
            "sample_key": self.sample_key,
            "source_uri": self.source_uri,
            # "" not None: an all-null column would reach the sink as NaN floats after Ray's conversions.
            "caption": self.caption or "",
            "clip_start_s": -1.0 if self.clip_start_s is None else float(self.clip_start_s),
            "clip_end_s": -1.0 if self.clip_end_s is None else float(self.clip_end_s),
            "attributes": self.attributes or "",
        }


def make_sample_key(source_uri: str, clip_start_s: float | None = None, clip_end_s: float | None = None) -> str:
    """Stable, unique, WebDataset-safe key: a hash of the URI plus the clip range in milliseconds."""
    digest = hashlib.sha256(source_uri.encode()).hexdigest()[:20]
    if clip_start_s is None and clip_end_s is None:
        return digest
    start_ms = round((clip_start_s or 0.0) * 1000)
    end = "end" if clip_end_s is None else f"{round(clip_end_s * 1000):09d}"
    return f"{digest}_{start_ms:09d}_{end}"


def list_clips(uri: str, cfg: SourceConfig, storage_options: dict[str, Any] | None = None) -> list[ClipItem]:
    """All clips under `uri` (a folder of videos or a manifest file), sorted by sample key."""
    if is_local(uri):
        # Workers may run elsewhere in the tree: local sources are keyed and read by absolute path.
        uri = os.path.abspath(strip_file_scheme(uri))
    fs, path = get_fs(uri, storage_options)
    if not fs.exists(path):
        raise FileNotFoundError(f"input {uri}: does not exist")
    if fs.isdir(path):
        items = _list_folder(uri, fs, path, cfg)
    elif uri.lower().endswith(MANIFEST_EXTENSIONS):
        items = _read_manifest(uri, cfg, storage_options)
    elif uri.lower().endswith(tuple(cfg.extensions)):
        items = [ClipItem(make_sample_key(uri), uri)]
    else:
        raise ValueError(f"input {uri}: not a folder, a manifest ({', '.join(MANIFEST_EXTENSIONS)}) or a video")
    items.sort(key=lambda item: item.sample_key)
    keys = [item.sample_key for item in items]
    if len(set(keys)) != len(keys):
        dupes = sorted({k for k in keys if keys.count(k) > 1})[:5]
        raise ValueError(f"input {uri}: the same clip is listed more than once (sample keys {dupes})")
    return items[: cfg.limit] if cfg.limit else items


def _list_folder(uri: str, fs: Any, path: str, cfg: SourceConfig) -> list[ClipItem]:
    extensions = tuple(e.lower() for e in cfg.extensions)
    found = fs.find(path) if cfg.recursive else fs.ls(path, detail=False)
    items = []
    for p in sorted(found):
        if p.lower().endswith(extensions):
            full = p if is_local(uri) else fs.unstrip_protocol(p)
            items.append(ClipItem(make_sample_key(full), full))
    return items


def _read_manifest(uri: str, cfg: SourceConfig, storage_options: dict[str, Any] | None) -> list[ClipItem]:
    import pyarrow as pa
    import pyarrow.csv
    import pyarrow.parquet as pq

    fs, path = get_fs(uri, storage_options)
    lower = uri.lower()
    with fs.open(path, "rb") as f:
        if lower.endswith(".parquet"):
            table = pq.read_table(f)
        elif lower.endswith(".csv"):
            table = pyarrow.csv.read_csv(f)
        else:
            text = f.read().decode()
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
            if lower.endswith(".json") and len(rows) == 1 and isinstance(rows[0], list):
                rows = rows[0]
            table = pa.Table.from_pylist(rows)
    if cfg.uri_column not in table.column_names:
        raise ValueError(f"manifest {uri}: no {cfg.uri_column!r} column (columns: {table.column_names})")
    base = parent(uri)
    items = []
    for line, row in enumerate(table.to_pylist(), start=1):
        raw = row.get(cfg.uri_column)
        if not raw:
            raise ValueError(f"manifest {uri}: row {line} has an empty {cfg.uri_column!r}")
        source = resolve(base, str(raw))
        start, end = row.get("clip_start_s"), row.get("clip_end_s")
        attributes = row.get("attributes")
        if attributes is not None and not isinstance(attributes, str):
            attributes = json.dumps(attributes, sort_keys=True)
        items.append(
            ClipItem(
                sample_key=make_sample_key(source, start, end),
                source_uri=source,
                caption=row.get(cfg.caption_column),
                clip_start_s=None if start is None else float(start),
                clip_end_s=None if end is None else float(end),
                attributes=attributes,
            )
        )
    return items
