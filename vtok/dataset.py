"""Reading a token dataset back: its manifest, its shards, one clip's tensors. Needs no Ray."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from schemas.layout import MANIFEST_FILE
from schemas.token_shard import (
    META_FINGERPRINT,
    META_SCHEMA_VERSION,
    META_TOKENIZER,
    TENSOR_NDIM,
    column_to_tensors,
)
from vtok.storage import get_fs, join


def read_manifest(uri: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The dataset manifest at `uri` (the dataset folder)."""
    fs, path = get_fs(join(uri, MANIFEST_FILE), storage_options)
    if not fs.exists(path):
        raise FileNotFoundError(f"{uri}: no {MANIFEST_FILE} (not a vtok dataset, or no shard committed yet)")
    with fs.open(path, "rb") as f:
        return json.loads(f.read())


def shard_uris(uri: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Committed token shards of a dataset, in order; a single shard file is its own list."""
    if uri.endswith((".parquet", ".tar")):
        return [uri]
    return [join(uri, s["file"]) for s in read_manifest(uri, storage_options)["shards"]]


def read_shard(uri: str, storage_options: dict[str, Any] | None = None, columns: list[str] | None = None) -> pa.Table:
    fs, path = get_fs(uri, storage_options)
    with fs.open(path, "rb") as f:
        return pq.read_table(f, columns=columns)


def shard_info(uri: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Schema version, fingerprint, tokenizer config and row count from a shard's footer."""
    fs, path = get_fs(uri, storage_options)
    with fs.open(path, "rb") as f:
        meta = pq.read_metadata(f)
    kv = meta.metadata or {}
    return {
        "schema_version": kv.get(META_SCHEMA_VERSION, b"").decode(),
        "fingerprint": kv.get(META_FINGERPRINT, b"").decode(),
        "tokenizer": json.loads(kv.get(META_TOKENIZER, b"{}")),
        "rows": meta.num_rows,
    }


def table_tensors(table: pa.Table) -> dict[str, list]:
    """Every tensor column of a token table as per-row numpy arrays."""
    return {name: column_to_tensors(table.column(name), ndim) for name, ndim in TENSOR_NDIM.items()
            if name in table.column_names}
