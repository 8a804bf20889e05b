"""The dataset's commit protocol: shard file first, then its commit record, then the manifest.

Layout under the output URI:
    shards/part-00000.parquet        token rows (or .tar for WebDataset)
    quarantine/part-00000.parquet    inputs that failed, with reason codes (only when any failed)
    _vtok/run.json                   fingerprint + schema version the dataset is bound to
    _vtok/commits/part-00000.json    one record per committed shard (the unit of exactly-once)
    manifest.json                    every committed shard with rows, bytes and sha256

A shard without a commit record does not exist as far as readers, `vtok validate` and resume are
concerned; a rerun rewrites it with identical bytes.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any

from schemas.layout import COMMITS_DIR, MANIFEST_FILE, RUN_FILE, shard_name
from vtok.storage import get_fs, is_local, join, strip_file_scheme


class DatasetMismatchError(RuntimeError):
    """An output already holds tokens of another tokenizer or schema version."""


@dataclass
class CommitRecord:
    """What one committed shard holds."""

    shard: int
    files: list[dict[str, Any]]  # {file (relative to the output), rows, bytes, sha256}; [] if every input failed
    rows: int
    bytes: int
    num_inputs: int
    inputs_sha256: str  # hash of the shard's input sample keys, to notice a changed input listing
    quarantine_file: str | None = None
    quarantine_rows: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    frame_counts: dict[str, int] = field(default_factory=dict)  # sampled frames T -> clips, for token stats


def write_bytes_atomic(uri: str, data: bytes, storage_options: dict[str, Any] | None = None) -> None:
    """Whole-object write that readers never see half done.

    Locally: a temporary file in the same folder, then rename. On object stores a single PUT only
    becomes visible once complete, so the bytes go straight to the final key.
    """
    if is_local(uri):
        path = strip_file_scheme(uri)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return
    fs, path = get_fs(uri, storage_options)
    fs.pipe_file(path, data)


def spool_file(uri: str) -> str:
    """A fresh local temporary path to write `uri`'s bytes into before publish_file moves them there.

    For a local output it sits in the target's folder (so publishing is a rename on one filesystem);
    for an object store, in the local temp folder.
    """
    folder = None
    if is_local(uri):
        folder = os.path.dirname(strip_file_scheme(uri)) or "."
        os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    os.close(fd)
    return tmp


def publish_file(tmp: str, uri: str, storage_options: dict[str, Any] | None = None) -> None:
    """Move a finished spool file to `uri` so that readers never see it half written (see write_bytes_atomic)."""
    try:
        if is_local(uri):
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, strip_file_scheme(uri))
            return
        fs, path = get_fs(uri, storage_options)
        fs.put_file(tmp, path)  # one PUT or a multipart upload: visible only once complete
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_json(uri: str, storage_options: dict[str, Any] | None = None) -> Any | None:
    fs, path = get_fs(uri, storage_options)
    if not fs.exists(path):
        return None
    with fs.open(path, "rb") as f:
        return json.loads(f.read())


def write_json(uri: str, value: Any, storage_options: dict[str, Any] | None = None) -> None:
    write_bytes_atomic(uri, json.dumps(value, indent=2, sort_keys=True).encode(), storage_options)


def bind_run(output: str, run: dict[str, Any], storage_options: dict[str, Any] | None = None) -> None:
    """Record what the dataset at `output` is made of, or refuse if it was made of something else."""
    existing = read_json(join(output, RUN_FILE), storage_options)
    if existing is not None:
        for key in ("schema_version", "fingerprint", "format"):
            if existing.get(key) != run.get(key):
                raise DatasetMismatchError(
                    f"output {output} already holds a dataset with {key}={existing.get(key)!r}, but this run "
                    f"has {key}={run.get(key)!r}; mixing them in one dataset is refused. Write to a new output, "
                    f"or pass sink.mode=overwrite to delete the existing dataset first."
                )
        return
    write_json(join(output, RUN_FILE), run, storage_options)


def committed(output: str, storage_options: dict[str, Any] | None = None) -> dict[int, CommitRecord]:
    """Every commit record under `output`, by shard index."""
    fs, path = get_fs(join(output, COMMITS_DIR), storage_options)
    if not fs.exists(path):
        return {}
    records: dict[int, CommitRecord] = {}
    for name in sorted(fs.ls(path, detail=False)):
        if not name.endswith(".json"):
            continue
        with fs.open(name, "rb") as f:
            record = CommitRecord(**json.loads(f.read()))
        records[record.shard] = record
    return records


def commit(output: str, record: CommitRecord, storage_options: dict[str, Any] | None = None) -> None:
    write_json(join(output, COMMITS_DIR, f"{shard_name(record.shard)}.json"), asdict(record), storage_options)


def write_manifest(output: str, run: dict[str, Any], storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Consolidate the commit records into manifest.json (what readers and validators trust)."""
    records = committed(output, storage_options)
    errors: dict[str, int] = {}
    frame_counts: dict[str, int] = {}
    for r in records.values():
        for reason, count in r.errors.items():
            errors[reason] = errors.get(reason, 0) + count
        for t, count in r.frame_counts.items():
            frame_counts[t] = frame_counts.get(t, 0) + count
    manifest = {
        "schema_version": run["schema_version"],
        "fingerprint": run["fingerprint"],
        "format": run["format"],
        "tokenizer": run["tokenizer"],
        "vtok_version": run["vtok_version"],
        "num_shards_planned": run["num_shards"],
        "complete": len(records) == run["num_shards"],
        "rows": sum(r.rows for r in records.values()),
        "quarantined": sum(r.quarantine_rows for r in records.values()),
        "errors": dict(sorted(errors.items())),
        "frame_counts": dict(sorted(frame_counts.items(), key=lambda kv: int(kv[0]))),
        "shards": [f for _, r in sorted(records.items()) for f in r.files],
        "quarantine": [
            {"file": r.quarantine_file, "rows": r.quarantine_rows}
            for _, r in sorted(records.items())
            if r.quarantine_file is not None
        ],
    }
    write_json(join(output, MANIFEST_FILE), manifest, storage_options)
    return manifest


def delete_dataset(output: str, storage_options: dict[str, Any] | None = None) -> None:
    """Remove everything vtok writes under `output` (sink.mode=overwrite)."""
    fs, path = get_fs(output, storage_options)
    for sub in ("shards", "quarantine", "_vtok", MANIFEST_FILE, "report.json", "report.html"):
        target = f"{path.rstrip('/')}/{sub}"
        if fs.exists(target):
            fs.rm(target, recursive=True)
