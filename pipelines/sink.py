"""Token sink: turns the encoded rows of one shard into a token shard, a quarantine table and a commit."""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.manifest import CommitRecord, commit, write_bytes_atomic
from pipelines.stages.encode import TOKEN_COLUMNS
from schemas.layout import shard_name
from schemas.npy import from_npy
from schemas.token_shard import META_FINGERPRINT, SCHEMA_VERSION, TENSOR_NDIM, tensors_to_arrow, token_schema
from schemas.webdataset import write_tar
from vtok.storage import join

FORMATS = ("parquet", "webdataset")
SCALAR_COLUMNS = ("sample_key", "source_uri", "caption", "clip_start_s", "clip_end_s", "source_fps", "height",
                  "width", "attributes")

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("sample_key", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("clip_start_s", pa.float64()),
        pa.field("clip_end_s", pa.float64()),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("message", pa.string(), nullable=False),
    ]
)


@dataclass
class SinkConfig:
    """How token shards are laid out and committed."""

    rows_per_shard: int = 256
    """Input clips per shard (a shard's rows are fewer when some of its inputs are quarantined)."""
    max_shard_bytes: int = 512 << 20
    """A shard whose file would be larger is cut into parts (part-00003-000, -001, ...) of at most this size
    (a single clip larger than this gets a part of its own)."""
    compression: str = "zstd"
    """Parquet compression codec."""
    mode: str = "resume"
    """"resume": skip committed shards and refuse a different tokenizer; "overwrite": delete the output first."""

    def __post_init__(self) -> None:
        if self.rows_per_shard < 1:
            raise ValueError(f"sink.rows_per_shard must be >= 1, got {self.rows_per_shard}")
        if self.max_shard_bytes < 1:
            raise ValueError(f"sink.max_shard_bytes must be >= 1, got {self.max_shard_bytes}")
        if self.mode not in ("resume", "overwrite"):
            raise ValueError(f"sink.mode must be resume or overwrite, got {self.mode!r}")


def inputs_digest(sample_keys: list[str]) -> str:
    return hashlib.sha256("\n".join(sample_keys).encode()).hexdigest()


def to_records(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Encoded rows (tensors as .npy bytes, numpy scalars) -> plain records sorted by sample key."""
    records = []
    for r in sorted(rows, key=lambda r: r["sample_key"]):
        record: dict[str, Any] = {c: _plain(r[c]) for c in SCALAR_COLUMNS}
        record["frame_indices"] = from_npy(r["frame_indices"]).tolist()
        for column in TOKEN_COLUMNS:
            record[column] = from_npy(r[column]) if r[column] else None
        records.append(record)
    return records


def build_token_table(records: list[dict[str, Any]], metadata: dict[bytes, bytes]) -> pa.Table:
    """Records -> an Arrow table of schema v1 (optional columns present when the first record has them)."""
    optional = [c for c in ("residual_tokens", "frame_tokens") if records and records[0][c] is not None]
    if any(r["attributes"] for r in records):
        optional.append("attributes")
    schema = token_schema(optional).with_metadata(metadata)
    columns: dict[str, pa.Array] = {}
    for f in schema:
        if f.name in TENSOR_NDIM:
            columns[f.name] = tensors_to_arrow([r[f.name] for r in records], TENSOR_NDIM[f.name])
        else:
            columns[f.name] = pa.array([r[f.name] for r in records], f.type)
    return pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema)


def webdataset_samples(records: list[dict[str, Any]], fingerprint: str) -> list[dict[str, Any]]:
    """Records -> WebDataset samples; each .json also names the schema version and fingerprint."""
    extra = {"schema_version": SCHEMA_VERSION, "tokenizer_fingerprint": fingerprint}
    return [{k: v for k, v in r.items() if v is not None or k in SCALAR_COLUMNS} | extra for r in records]


def _plain(value: Any) -> Any:
    """numpy scalars and empty strings from the row batches -> Python values."""
    if isinstance(value, bytes):
        value = value.decode()
    if hasattr(value, "item"):
        value = value.item()
    return None if value == "" else value


def parquet_bytes(table: pa.Table, compression: str) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression=compression)
    return buf.getvalue()


def _encode(records: list[dict[str, Any]], metadata: dict[bytes, bytes], fmt: str, cfg: SinkConfig) -> bytes:
    if fmt == "webdataset":
        return write_tar(webdataset_samples(records, metadata[META_FINGERPRINT].decode()))
    return parquet_bytes(build_token_table(records, metadata), cfg.compression)


def _encode_parts(
    records: list[dict[str, Any]], metadata: dict[bytes, bytes], fmt: str, cfg: SinkConfig
) -> list[tuple[list[dict[str, Any]], bytes]]:
    """Serialise the shard; if over max_shard_bytes, cut it into contiguous parts until each fits.

    Depends only on the tokens, so the cut is the same on every run.
    """
    data = _encode(records, metadata, fmt, cfg)
    if len(data) <= cfg.max_shard_bytes or len(records) == 1:
        return [(records, data)]
    pieces = -(-len(data) // cfg.max_shard_bytes)
    size = -(-len(records) // pieces)
    out: list[tuple[list[dict[str, Any]], bytes]] = []
    for start in range(0, len(records), size):
        out += _encode_parts(records[start : start + size], metadata, fmt, cfg)
    return out


def write_shard(
    output: str,
    shard: int,
    rows: list[dict[str, Any]],
    input_keys: list[str],
    metadata: dict[bytes, bytes],
    cfg: SinkConfig,
    storage_options: dict[str, Any] | None = None,
    fmt: str = "parquet",
) -> CommitRecord:
    """Write one shard's tokens and quarantine rows, then commit it. Returns the commit record."""
    good = [r for r in rows if not r["error_reason"]]
    bad = sorted((r for r in rows if r["error_reason"]), key=lambda r: r["sample_key"])
    name = shard_name(shard)
    record = CommitRecord(
        shard=shard, files=[], rows=len(good), bytes=0, num_inputs=len(input_keys),
        inputs_sha256=inputs_digest(input_keys),
    )
    if good:
        records = to_records(good)
        record.frame_counts = {
            str(t): n for t, n in sorted(Counter(len(r["frame_indices"]) for r in records).items())
        }
        suffix = "tar" if fmt == "webdataset" else "parquet"
        parts = _encode_parts(records, metadata, fmt, cfg)
        for k, (part, data) in enumerate(parts):
            file = f"shards/{name}.{suffix}" if len(parts) == 1 else f"shards/{name}-{k:03d}.{suffix}"
            write_bytes_atomic(join(output, file), data, storage_options)
            record.files.append(
                {"file": file, "rows": len(part), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            )
        record.bytes = sum(f["bytes"] for f in record.files)
    if bad:
        table = pa.Table.from_pylist(
            [
                {
                    "sample_key": r["sample_key"],
                    "source_uri": r["source_uri"],
                    "clip_start_s": None if r["clip_start_s"] < 0 else float(r["clip_start_s"]),
                    "clip_end_s": None if r["clip_end_s"] < 0 else float(r["clip_end_s"]),
                    "reason": r["error_reason"],
                    "message": r["error_message"],
                }
                for r in bad
            ],
            schema=QUARANTINE_SCHEMA,
        )
        record.quarantine_file = f"quarantine/{name}.parquet"
        record.quarantine_rows = len(bad)
        record.errors = dict(sorted(Counter(r["error_reason"] for r in bad).items()))
        write_bytes_atomic(join(output, record.quarantine_file), parquet_bytes(table, cfg.compression), storage_options)
    commit(output, record, storage_options)
    return record
