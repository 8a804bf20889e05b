"""WebDataset layout of token shards: one sample per clip, tensors as .npy, metadata as .json.

    KEY.json                 every scalar column of schema v1 plus frame_indices, schema version, fingerprint
    KEY.key.npy              key_tokens [S, D] float32
    KEY.residual.npy         residual_features [R * r*r, D] float32 (r = residual_grid, below)
    KEY.residual_tokens.npy  residual_tokens [R * r*r, D'] (optional)
    KEY.frame_tokens.npy     frame_tokens [T, S, D] (optional)
    KEY.latents.npy          latents [C, T', H', W'] (optional)
    KEY.frames_lowres.npy    frames_lowres [T, h, w, 3] uint8 (optional)

With tokenizer.residual_grid = r > 1 a residual step has r*r rows, step-major, its r x r cells row-major
(`np.load(...).reshape(R, r, r, D)`); r is the "residual_grid" of the manifest's "tokenizer" (manifest.json
beside the shards; absent: r = 1, [R, D] as before). The .npy files themselves are unchanged in kind.

Keys are vtok sample keys (hex and underscores, no dots), so WebDataset's split at the first dot is
exact. Members are written in sorted order with zeroed owner and mtime: same tokens, same bytes.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from typing import IO, Any

import numpy as np
import pyarrow as pa

from schemas.npy import from_npy, to_npy
from schemas.targets import target_problems
from schemas.token_shard import OPTIONAL_FIELDS, REQUIRED_FIELDS, TENSOR_NDIM, tensors_to_arrow, token_schema
from schemas.tokens import num_residual_tokens, num_residuals, residual_rows_text

TENSOR_SUFFIXES = {
    "key_tokens": "key.npy",
    "residual_features": "residual.npy",
    "residual_tokens": "residual_tokens.npy",
    "frame_tokens": "frame_tokens.npy",
    "latents": "latents.npy",
    "frames_lowres": "frames_lowres.npy",
}
REQUIRED_SUFFIXES = ("json", "key.npy", "residual.npy")


def sample_members(sample: dict[str, Any]) -> list[tuple[str, bytes]]:
    """(member name, bytes) of one sample: `sample` holds scalar metadata and numpy tensors by column name."""
    key = sample["sample_key"]
    assert "." not in key, f"sample key {key!r} must not contain dots"
    meta = {k: v for k, v in sample.items() if k not in TENSOR_SUFFIXES}
    members = [(f"{key}.json", json.dumps(meta, sort_keys=True).encode())]
    for column, suffix in TENSOR_SUFFIXES.items():
        value = sample.get(column)
        if value is not None:
            members.append((f"{key}.{suffix}", to_npy(np.asarray(value))))
    return members


def tar_member_info(name: str, size: int) -> tarfile.TarInfo:
    """A tar header with zeroed owner, mode 644 and mtime 0: same tokens, same tar bytes."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def iter_tar(fileobj: IO[bytes]) -> Iterator[dict[str, Any]]:
    """Samples of a token tar, with tensors as numpy arrays (no pickle anywhere)."""
    current: dict[str, Any] | None = None
    with tarfile.open(fileobj=fileobj, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, suffix = member.name.partition(".")
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            if current is None or current["sample_key"] != key:
                if current is not None:
                    yield current
                current = {"sample_key": key}
            if suffix == "json":
                current.update(json.loads(data))
            else:
                column = {v: k for k, v in TENSOR_SUFFIXES.items()}.get(suffix)
                if column is None:
                    raise ValueError(f"unexpected member {member.name!r} in token tar")
                current[column] = from_npy(data)
    if current is not None:
        yield current


def samples_to_table(samples: list[dict[str, Any]]) -> pa.Table:
    """Decoded samples of a token tar -> an Arrow table of schema v1, typed exactly as a Parquet shard.

    An optional column is present when any sample has a value for it, the rule the Parquet sink
    follows, so a reader sees the same columns and types whichever format a dataset was written in.
    The .json's bookkeeping (schema version, fingerprint, identity digest) is per dataset, not a column.
    """
    required = {f.name for f in REQUIRED_FIELDS if not f.nullable}
    for s in samples:
        missing = sorted(required - {k for k, v in s.items() if v is not None})
        if missing:
            raise ValueError(f"sample {s.get('sample_key')!r} has no {', '.join(missing)}")
    present = [f.name for f in OPTIONAL_FIELDS if any(s.get(f.name) is not None for s in samples)]
    schema = token_schema(present)
    columns = []
    for field in schema:
        values = [s.get(field.name) for s in samples]
        if field.name in TENSOR_NDIM:
            columns.append(_tensor_column(values, TENSOR_NDIM[field.name], field.type))
        else:
            columns.append(pa.array(values, field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def _tensor_column(values: list[np.ndarray | None], ndim: int, list_type: pa.DataType) -> pa.Array:
    value_type = list_type
    for _ in range(ndim):
        value_type = value_type.value_type
    if all(v is not None for v in values):
        return tensors_to_arrow(values, ndim, value_type)  # type: ignore[arg-type]
    # Only some samples carry this tensor: rare enough that the slow path through Python lists is fine.
    np_type = value_type.to_pandas_dtype()
    return pa.array([None if v is None else np.asarray(v, np_type).tolist() for v in values], list_type)


IDENTITY_FIELD = "dataset_identity_sha256"
"""The .json field naming the dataset identity (schemas.token_shard.identity_digest) a sample was made with."""


def validate_samples(
    samples: list[dict[str, Any]], grid: int | None, stride: int | None, identity_sha256: str | None = None,
    expected_targets: dict[str, list[int]] | None = None, residual_grid: int = 1,
) -> list[str]:
    """Schema problems of decoded samples, as sentences; `identity_sha256`: the digest every sample must carry,
    `expected_targets`: the manifest's "targets" (schemas.targets), `residual_grid`: r (r*r rows per step)."""
    problems: list[str] = []
    if identity_sha256 is not None:
        other = sorted({str(s.get(IDENTITY_FIELD)) for s in samples} - {identity_sha256})
        if other:
            problems.append(f"samples made with other settings than the dataset (identity {', '.join(o[:12] for o in other)}"
                            f" vs {identity_sha256[:12]})")
    for s in samples:
        key = s["sample_key"]
        missing = [c for c in ("key_tokens", "residual_features", "source_uri", "frame_indices") if c not in s]
        problems += [f"{key}: {column} missing" for column in missing]
        if missing:  # the shape checks below need these; the next sample is still checked
            continue
        if grid is not None and s["key_tokens"].shape[0] != grid * grid:
            problems.append(f"{key}: key_tokens has {s['key_tokens'].shape[0]} tokens, expected S={grid * grid}")
        if stride:
            steps = num_residuals(len(s["frame_indices"]), stride)
            if s["residual_features"].shape[0] != num_residual_tokens(len(s["frame_indices"]), stride, residual_grid):
                problems.append(f"{key}: residual_features has {s['residual_features'].shape[0]} rows, expected "
                                f"{residual_rows_text(steps, residual_grid)}")
        problems += target_problems(key, len(s["frame_indices"]), s, expected_targets)
    keys = [s["sample_key"] for s in samples]
    if len(set(keys)) != len(keys):
        problems.append(f"{len(keys) - len(set(keys))} duplicate sample keys")
    return problems
