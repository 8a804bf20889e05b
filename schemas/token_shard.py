"""Token shard schema v1: one row per clip; tensors as nested Arrow lists any reader can open.

Tensors are stored as nested `list<...<float32>>` rather than an Arrow extension type or raw
bytes, so pyarrow, pandas, DuckDB and Hugging Face `datasets` all recover them exactly with no
vtok code: `np.stack(row["key_tokens"])` is the [S, D] array. No torch, no ray here.

residual_features (and residual_tokens) hold r*r rows per residual step, r = the tokenizer config's
"residual_grid" in the file metadata (vtok.tokenizer_config) and in the manifest's "tokenizer" (absent:
r = 1, one row per step). The rows are step-major with each step's r x r cells row-major, so
`np.stack(row["residual_features"]).reshape(R, r, r, D)` is the grid of every step (schemas.tokens).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from schemas.targets import TARGET_DTYPES, target_problems
from schemas.tokens import num_residual_tokens, num_residuals, residual_grid_of, residual_rows_text

SCHEMA_VERSION = "1"

META_SCHEMA_VERSION = b"vtok.schema_version"
META_FINGERPRINT = b"vtok.tokenizer_fingerprint"
META_TOKENIZER = b"vtok.tokenizer_config"
META_VTOK_VERSION = b"vtok.version"
META_IDENTITY = b"vtok.dataset_identity"
"""JSON of the settings that decide what a row contains beyond the tokenizer (frame sampling, clip splitting,
resize, limits): shards of one dataset all carry the same."""


def tensor_type(ndim: int, value_type: pa.DataType = pa.float32()) -> pa.DataType:
    """list<list<...<value_type>>> nested `ndim` deep."""
    t = value_type
    for _ in range(ndim):
        t = pa.list_(t)
    return t


def leaf_type(t: pa.DataType) -> pa.DataType:
    """The value type inside a (nested) list type: float32 for tokens, uint8 for frames_lowres."""
    while pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        t = t.value_type
    return t


REQUIRED_FIELDS: tuple[pa.Field, ...] = (
    pa.field("sample_key", pa.string(), nullable=False),
    pa.field("source_uri", pa.string(), nullable=False),
    pa.field("caption", pa.string()),
    pa.field("clip_start_s", pa.float64(), nullable=False),
    pa.field("clip_end_s", pa.float64(), nullable=False),
    pa.field("source_fps", pa.float64(), nullable=False),
    pa.field("frame_indices", pa.list_(pa.int64()), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("key_tokens", tensor_type(2), nullable=False),  # [S, D]
    pa.field("residual_features", tensor_type(2), nullable=False),  # [R * r*r, D], r = residual_grid
)

OPTIONAL_FIELDS: tuple[pa.Field, ...] = (
    pa.field("residual_tokens", tensor_type(2)),  # [R * r*r, D'] from a trained g_phi
    pa.field("frame_tokens", tensor_type(3)),  # [T, S, D] the frame-sampling baseline
    pa.field("attributes", pa.string()),  # JSON: the shapes world's ground truth, where known
    pa.field("latents", tensor_type(4)),  # [C, T', H', W'] decoder target from a video VAE
    pa.field("frames_lowres", tensor_type(4, pa.uint8())),  # [T, h, w, 3] small decoder target
)

TENSOR_NDIM = {"key_tokens": 2, "residual_features": 2, "residual_tokens": 2, "frame_tokens": 3, "latents": 4,
               "frames_lowres": 4}


def token_schema(optional: Sequence[str] = ()) -> pa.Schema:
    """The v1 schema with the named optional columns, in canonical column order."""
    known = {f.name: f for f in OPTIONAL_FIELDS}
    unknown = set(optional) - set(known)
    if unknown:
        raise ValueError(f"unknown optional token columns: {sorted(unknown)}")
    fields = list(REQUIRED_FIELDS) + [f for f in OPTIONAL_FIELDS if f.name in optional]
    return pa.schema(fields)


def shard_metadata(
    fingerprint: str, tokenizer_config: dict[str, Any], vtok_version: str, identity: dict[str, Any] | None = None
) -> dict[bytes, bytes]:
    meta = {
        META_SCHEMA_VERSION: SCHEMA_VERSION.encode(),
        META_FINGERPRINT: fingerprint.encode(),
        META_TOKENIZER: json.dumps(tokenizer_config, sort_keys=True, default=str).encode(),
        META_VTOK_VERSION: vtok_version.encode(),
    }
    if identity is not None:
        meta[META_IDENTITY] = identity_json(identity).encode()
    return meta


def identity_json(identity: dict[str, Any]) -> str:
    """The canonical text of a dataset identity: what shard metadata stores and identity_digest hashes."""
    return json.dumps(identity, sort_keys=True, default=str)


def identity_digest(identity: dict[str, Any]) -> str:
    """sha256 of the canonical identity (what each WebDataset sample's .json carries)."""
    import hashlib

    return hashlib.sha256(identity_json(identity).encode()).hexdigest()


def identity_differences(expected: dict[str, Any], found: dict[str, Any]) -> list[str]:
    """"key: expected X, found Y" for every setting on which two identities disagree."""
    return [
        f"{key}: {expected.get(key, '(unset)')!r} vs {found.get(key, '(unset)')!r}"
        for key in sorted(set(expected) | set(found))
        if expected.get(key) != found.get(key)
    ]


def tensors_to_arrow(arrays: Sequence[np.ndarray], ndim: int, value_type: pa.DataType = pa.float32()) -> pa.Array:
    """Stack same-rank arrays (shapes may differ) into one nested list array, without Python loops per value."""
    np_type = value_type.to_pandas_dtype()
    for a in arrays:
        assert a.ndim == ndim, f"expected {ndim}-d tensors, got shape {a.shape}"
    values = pa.array(
        np.concatenate([np.ascontiguousarray(a, dtype=np_type).ravel() for a in arrays]) if arrays else
        np.zeros(0, np_type), type=value_type
    )
    # Build offsets from the innermost dimension outwards.
    level = values
    for axis in range(ndim - 1, -1, -1):
        counts = np.concatenate(
            [np.full(int(np.prod(a.shape[:axis], dtype=np.int64)), a.shape[axis], np.int64) for a in arrays]
        ) if arrays else np.zeros(0, np.int64)
        offsets = np.zeros(len(counts) + 1, np.int32)
        np.cumsum(counts, out=offsets[1:])
        level = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), level)
    return level


def arrow_to_tensor(value: Any, dtype: type = np.float32) -> np.ndarray:
    """One cell of a nested-list tensor column (pyarrow scalar, Python list or pandas' arrays) -> ndarray."""
    if isinstance(value, pa.Scalar):
        value = value.as_py()
    return np.array(_to_lists(value), dtype=dtype)


def _to_lists(value: Any) -> Any:
    if isinstance(value, np.ndarray) and value.dtype == object:
        return [_to_lists(v) for v in value]
    return value


def column_to_tensors(column: pa.ChunkedArray | pa.Array, ndim: int, dtype: type | None = None) -> list[np.ndarray]:
    """A whole nested-list column -> one ndarray per row, by walking offsets (fast, exact).

    `dtype` None keeps the column's own value type (uint8 frames stay uint8).
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if dtype is None:
        dtype = leaf_type(column.type).to_pandas_dtype()
    out: list[np.ndarray] = []
    for i in range(len(column)):
        cell = column[i]
        if not cell.is_valid:
            out.append(None)  # type: ignore[arg-type]
            continue
        shape: list[int] = []
        arr: pa.Array = cell.values
        shape.append(len(arr))
        for _ in range(ndim - 1):
            first = arr.value_lengths()
            inner = int(first[0].as_py()) if len(first) else 0
            shape.append(inner)
            arr = arr.flatten()
        flat = arr.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
        out.append(flat.reshape(shape))
    return out


def validate_table(
    table: pa.Table, expected_fingerprint: str | None = None, expected_identity: dict[str, Any] | None = None,
    expected_targets: dict[str, list[int]] | None = None,
) -> list[str]:
    """Every way `table` breaks schema v1, as readable sentences; empty when valid.

    `expected_targets`: the manifest's "targets" (schemas.targets); None checks each clip's targets by itself.
    """
    problems: list[str] = []
    meta = table.schema.metadata or {}
    if expected_identity is not None:
        try:
            identity = json.loads(meta[META_IDENTITY]) if META_IDENTITY in meta else None
        except json.JSONDecodeError:
            identity = None
        if identity is None:
            problems.append("dataset identity (frame sampling, clip splitting, resize) missing from file metadata")
        elif identity != expected_identity:
            problems.append("made with other settings than the dataset: "
                            + "; ".join(identity_differences(expected_identity, identity)))
    version = meta.get(META_SCHEMA_VERSION, b"").decode()
    if version != SCHEMA_VERSION:
        problems.append(f"schema version is {version or 'missing'!r}, expected {SCHEMA_VERSION!r}")
    fingerprint = meta.get(META_FINGERPRINT, b"").decode()
    if not fingerprint:
        problems.append("tokenizer fingerprint missing from file metadata")
    elif expected_fingerprint is not None and fingerprint != expected_fingerprint:
        problems.append(f"tokenizer fingerprint {fingerprint[:12]} differs from the dataset's {expected_fingerprint[:12]}")
    try:
        tokenizer_config = json.loads(meta.get(META_TOKENIZER, b"{}"))
    except json.JSONDecodeError:
        problems.append("tokenizer config in file metadata is not valid JSON")
        tokenizer_config = {}

    allowed = {f.name: f for f in REQUIRED_FIELDS + OPTIONAL_FIELDS}
    for f in REQUIRED_FIELDS:
        if f.name not in table.schema.names:
            problems.append(f"required column {f.name!r} missing")
    for f in table.schema:
        if f.name not in allowed:
            problems.append(f"unexpected column {f.name!r}")
        elif not f.type.equals(allowed[f.name].type):
            problems.append(f"column {f.name!r} has type {f.type}, expected {allowed[f.name].type}")
    if problems:
        return problems

    for f in REQUIRED_FIELDS:
        if not f.nullable and table.column(f.name).null_count:
            problems.append(f"column {f.name!r} has {table.column(f.name).null_count} nulls")
    keys = table.column("sample_key").to_pylist()
    if len(set(keys)) != len(keys):
        problems.append(f"{len(keys) - len(set(keys))} duplicate sample_key values")

    grid = tokenizer_config.get("grid")
    stride = tokenizer_config.get("residual_stride")
    r_grid = residual_grid_of(tokenizer_config)
    frame_counts = [len(x) for x in table.column("frame_indices").to_pylist()]
    key = column_to_tensors(table.column("key_tokens"), 2)
    residual = column_to_tensors(table.column("residual_features"), 2)
    frames = column_to_tensors(table.column("frame_tokens"), 3) if "frame_tokens" in table.schema.names else None
    targets = {c: column_to_tensors(table.column(c), 4) if c in table.schema.names else [None] * len(keys)
               for c in TARGET_DTYPES}
    dims = {k.shape[1] for k in key if k is not None} | {r.shape[1] for r in residual if r is not None and len(r)}
    if len(dims) > 1:
        problems.append(f"token width D differs between rows: {sorted(dims)}")
    for i, sample in enumerate(keys):
        if grid is not None and key[i].shape[0] != grid * grid:
            problems.append(f"{sample}: key_tokens has {key[i].shape[0]} tokens, expected S={grid * grid}")
        if stride:
            expected_r = num_residuals(frame_counts[i], stride)
            if residual[i].shape[0] != num_residual_tokens(frame_counts[i], stride, r_grid):
                problems.append(
                    f"{sample}: residual_features has {residual[i].shape[0]} rows, expected "
                    f"{residual_rows_text(expected_r, r_grid)} for T={frame_counts[i]} and stride {stride}"
                )
        if frames is not None and frames[i] is not None and frames[i].shape[0] != frame_counts[i]:
            problems.append(f"{sample}: frame_tokens has T={frames[i].shape[0]}, frame_indices has {frame_counts[i]}")
        problems += target_problems(sample, frame_counts[i], {c: v[i] for c, v in targets.items()}, expected_targets)
        if len(problems) > 50:
            problems.append("... (further problems not listed)")
            break
    return problems
