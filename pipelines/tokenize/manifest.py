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

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any

from schemas.layout import (
    COMMITS_DIR,
    MANIFEST_FILE,
    QUARANTINE_DIR,
    REPORT_FILE,
    REPORT_HTML,
    RESERVED_NAMES,
    RUN_FILE,
    SHARDS_DIR,
    VTOK_DIR,
    is_shard_file,
    shard_name,
)
from schemas.token_shard import identity_differences
from vtok.errors import InputError
from vtok.storage import (
    get_fs,
    honour_umask,
    is_local,
    join,
    read_json,
    strip_file_scheme,
    write_json,
)

_REFUSE_HINT = "Write to a new output, or pass sink.mode=overwrite to delete the existing dataset first."


class DatasetMismatchError(InputError):
    """An output already holds a dataset made of something else: another tokenizer, schema, format,
    input listing, or settings that decide what a row contains."""


class OutputCollisionError(InputError):
    """Writing the dataset would overwrite or delete a file vtok did not write (an input, a foreign file)."""


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
    honour_umask(tmp)
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


def bind_run(output: str, run: dict[str, Any], storage_options: dict[str, Any] | None = None) -> None:
    """Record what the dataset at `output` is made of, or refuse if it was made of something else.

    `run["identity"]` holds every setting that decides what a row contains besides the tokenizer (frame
    sampling, clip splitting, resize, limits); a resume must match it key by key.
    """
    existing = read_json(join(output, RUN_FILE), storage_options)
    if existing is None:
        write_json(join(output, RUN_FILE), run, storage_options)
        return
    for key in ("schema_version", "fingerprint", "format"):
        if existing.get(key) != run.get(key):
            # Name the tokenizer settings behind another fingerprint (e.g. tokenizer.residual_grid), where any.
            settings = "; ".join(f"tokenizer.{d}" if len(d) <= 80 else f"tokenizer.{d.split(':')[0]} differs"
                                 for d in identity_differences(existing.get("tokenizer") or {},
                                                               run.get("tokenizer") or {})) if key == "fingerprint" else ""
            raise DatasetMismatchError(
                f"output {output} already holds a dataset with {key}={existing.get(key)!r}, but this run "
                f"has {key}={run.get(key)!r}{f' ({settings})' if settings else ''}; mixing them in one dataset "
                f"is refused. {_REFUSE_HINT}"
            )
    if "identity" not in existing:
        raise DatasetMismatchError(
            f"output {output} holds a dataset made by an older vtok that did not record its frame sampling and "
            f"clip settings, so a resume cannot be checked. {_REFUSE_HINT}"
        )
    old, new = existing["identity"], run["identity"]
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            raise DatasetMismatchError(
                f"output {output} was made with {key}={old.get(key)!r}, this run has {key}={new.get(key)!r}; "
                f"resuming would mix two settings in one dataset. {_REFUSE_HINT}"
            )


def check_committed_inputs(output: str, records: dict[int, CommitRecord], shard_keys: list[list[str]]) -> None:
    """Refuse a resume whose input listing no longer cuts into the shards that were committed."""
    for index, record in sorted(records.items()):
        if index >= len(shard_keys):
            raise DatasetMismatchError(
                f"output {output}: shard {index} is committed but this run's input listing makes only "
                f"{len(shard_keys)} shard(s): the inputs changed since the dataset was made. {_REFUSE_HINT}"
            )
        if record.inputs_sha256 != inputs_digest(shard_keys[index]):
            raise DatasetMismatchError(
                f"output {output}: committed shard {index} was made from a different input listing (inputs were "
                f"added, removed or renamed since). {_REFUSE_HINT}"
            )


def inputs_digest(sample_keys: list[str]) -> str:
    return hashlib.sha256("\n".join(sample_keys).encode()).hexdigest()


def is_vtok_dataset(output: str, storage_options: dict[str, Any] | None = None) -> bool:
    fs, path = get_fs(join(output, RUN_FILE), storage_options)
    return fs.exists(path)


def check_output(
    output: str, inputs: list[str], fmt: str, recursive: bool, storage_options: dict[str, Any] | None = None
) -> None:
    """Refuse an output where vtok would overwrite or delete a file it did not write.

    vtok writes only RESERVED_NAMES under an output. They must not be, or contain, an input; and they must
    not exist already unless vtok made them (the output holds _vtok/run.json). An output inside an input
    folder is fine where nothing collides: Parquet shards are never listed as inputs, but WebDataset .tar
    shards would be read back as raw-video tars by the next run that lists that folder.
    """
    fs, root = get_fs(output, storage_options)
    if fs.isfile(root):
        raise OutputCollisionError(f"output {output}: is an existing file, not a folder; choose a folder")
    if not is_vtok_dataset(output, storage_options):
        for name in RESERVED_NAMES:
            if fs.exists(f"{root.rstrip('/')}/{name}"):
                raise OutputCollisionError(
                    f"output {output}: {name} exists and was not written by vtok (there is no {RUN_FILE}); "
                    f"vtok never overwrites or deletes files it did not write: choose another output folder"
                )
    out = _comparable(output)
    for uri in inputs:
        inp = _comparable(uri)
        for name in RESERVED_NAMES:
            reserved = f"{out}/{name}"
            if inp == reserved or inp.startswith(reserved + "/"):
                raise OutputCollisionError(
                    f"output {output}: vtok writes {reserved}, which is the input {uri}; choose another output folder"
                )
        inside = out == inp or (recursive and out.startswith(inp.rstrip("/") + "/"))
        if fmt == "webdataset" and inside and _is_dir(uri, storage_options):
            raise OutputCollisionError(
                f"output {output}: is inside the input folder {uri}, so its WebDataset .tar shards would be listed "
                f"as input videos by the next run; choose an output outside the input folder"
            )


def _is_dir(uri: str, storage_options: dict[str, Any] | None) -> bool:
    fs, path = get_fs(uri, storage_options)
    return fs.isdir(path)


def _comparable(uri: str) -> str:
    """A URI in a form two spellings of one place compare equal in: local paths resolved, no trailing '/'."""
    if is_local(uri):
        return os.path.realpath(strip_file_scheme(uri))
    scheme, rest = uri.split("://", 1)
    return f"{scheme}://{'/'.join(p for p in rest.split('/') if p)}"


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
        "identity": run["identity"],
        "targets": run.get("targets", {}),
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
    """Remove what vtok wrote under `output` (sink.mode=overwrite), and nothing else.

    Only a vtok dataset (one with _vtok/run.json) is touched, and in it only vtok's own names: shard and
    quarantine files named part-*, the manifest, the reports and _vtok/. A file someone else put in shards/
    stays where it is.
    """
    if not is_vtok_dataset(output, storage_options):
        return
    fs, path = get_fs(output, storage_options)
    root = path.rstrip("/")
    for folder in (SHARDS_DIR, QUARANTINE_DIR):
        if fs.isdir(f"{root}/{folder}"):
            for name in fs.ls(f"{root}/{folder}", detail=False):
                if is_shard_file(name.rsplit("/", 1)[-1]):
                    fs.rm_file(name)
    for name in (MANIFEST_FILE, REPORT_FILE, REPORT_HTML):
        if fs.exists(f"{root}/{name}"):
            fs.rm_file(f"{root}/{name}")
    # Last, so an interrupted overwrite still counts as vtok's dataset and can be overwritten again.
    if fs.exists(f"{root}/{VTOK_DIR}"):
        fs.rm(f"{root}/{VTOK_DIR}", recursive=True)
