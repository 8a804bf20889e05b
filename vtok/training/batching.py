"""Token rows -> padded training tensors, for Ray's iter_torch_batches and for torch's DataLoader alike.

Clips differ in T (and so in R), never in S or D: ragged columns are zero-padded to the longest clip
of the batch and come with a bool mask (True = a real step). No Ray here.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch


class _Ragged(NamedTuple):
    ndim: int  # of one clip's tensor
    axis: int | None  # the axis whose length differs between clips; None: every clip has the same shape
    mask: str | None  # the [B, max length] mask it is padded with; columns of one length share it
    dtype: type
    pad: int


TENSOR_COLUMNS: dict[str, _Ragged] = {
    "key_tokens": _Ragged(2, None, None, np.float32, 0),  # [S, D]
    "residual_features": _Ragged(2, 0, "residual_mask", np.float32, 0),  # [R, D]
    "residual_tokens": _Ragged(2, 0, "residual_mask", np.float32, 0),  # [R, D']
    "frame_tokens": _Ragged(3, 0, "frame_mask", np.float32, 0),  # [T, S, D]
    "frame_indices": _Ragged(1, 0, "frame_mask", np.int64, -1),  # [T]
    "frames_lowres": _Ragged(4, 0, "frames_lowres_mask", np.uint8, 0),  # [T, h, w, 3]
    "latents": _Ragged(4, 1, "latents_mask", np.float32, 0),  # [C, T', H', W']
}
"""How each tensor column of schema v1 is batched."""

TokenBatch = dict[str, torch.Tensor | list[Any]]


def collate_tokens(
    rows_or_batch: Sequence[Mapping[str, Any]] | Mapping[str, Any], columns: Collection[str] | None = None
) -> TokenBatch:
    """Rows of a token dataset -> one batch of padded tensors.

    `rows_or_batch`: a list of sample dicts (a DataLoader over TokenIterable) or a dict of columns
    (what Ray's iter_torch_batches passes: numpy arrays, object arrays for nested-list tensors).
    Tensors may be torch tensors, numpy arrays, nested lists or object arrays of arrays.

    Returns key_tokens [B, S, D] float32; residual_features [B, R_max, D] and residual_tokens
    [B, R_max, D'] with residual_mask [B, R_max]; frame_tokens [B, T_max, S, D] where stored;
    frame_indices [B, T_max] int64 padded with -1 and frame_mask [B, T_max]; numbers (clip_start_s,
    height, ...) as [B] tensors; strings (sample_key, caption, source_uri, ...) as Python lists.
    Padding is 0 (-1 for frame_indices); masks are True at real steps.
    `columns`: convert only these (sample_key is always kept), e.g. to skip frame_tokens.
    """
    table, size = _as_columns(rows_or_batch)
    if columns is not None:
        table = {k: v for k, v in table.items() if k in columns or k == "sample_key"}
    keys = [str(k) for k in table.get("sample_key", range(size))]
    out: TokenBatch = {}
    masks: dict[str, np.ndarray] = {}
    arrays = {name: [_as_array(cell, TENSOR_COLUMNS[name], name, key) for cell, key in zip(cells, keys)]
              for name, cells in table.items() if name in TENSOR_COLUMNS}
    key_shape = _common_shape(arrays["key_tokens"], "key_tokens", keys) if "key_tokens" in arrays else None
    for name, rows in arrays.items():
        spec = TENSOR_COLUMNS[name]
        padded, mask = _pad(rows, spec, name, keys, _empty_shape(name, key_shape))
        if spec.mask is not None:
            assert mask is not None
            if spec.mask in masks:
                # residual_tokens has one row per residual feature; frame_tokens one [S, D] per frame index.
                assert np.array_equal(masks[spec.mask], mask), f"{name} has other lengths than the {spec.mask} columns"
            masks[spec.mask] = mask
        out[name] = torch.from_numpy(padded)
    if key_shape is not None and "residual_features" in out:
        d = out["residual_features"].shape[-1]
        assert d == key_shape[1], f"residual_features have D={d}, key_tokens D={key_shape[1]}"
    if key_shape is not None and "frame_tokens" in out:
        s_d = tuple(out["frame_tokens"].shape[2:])
        assert s_d == key_shape, f"frame_tokens have [S, D]={list(s_d)}, key_tokens {list(key_shape)}"
    for name, mask in masks.items():
        out[name] = torch.from_numpy(mask)
    for name, cells in table.items():
        if name not in TENSOR_COLUMNS:
            out[name] = _scalar_column(cells)
    return out


def _as_columns(rows_or_batch: Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> tuple[dict[str, Sequence[Any]], int]:
    """Either input shape -> (column -> one cell per row, number of rows)."""
    if isinstance(rows_or_batch, Mapping):
        table = {str(k): v for k, v in rows_or_batch.items()}
        sizes = {len(v) for v in table.values()}
        assert len(sizes) <= 1, f"columns of one batch have different lengths: {sorted(sizes)}"
        return table, sizes.pop() if sizes else 0
    rows = list(rows_or_batch)
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    # A row without an optional string column (attributes) gets None, as a Parquet null would.
    return {name: [row.get(name) for row in rows] for name in names}, len(rows)


def _as_array(cell: Any, spec: _Ragged, name: str, key: str) -> np.ndarray:
    """One row's tensor, whatever container it came in, as an ndarray of the column's rank and dtype."""
    if isinstance(cell, torch.Tensor):
        cell = cell.detach().cpu().numpy()
    if cell is None:
        raise ValueError(f"{key}: {name} is missing in a batch where other rows have it")
    array = _nested(cell, spec.ndim, spec.dtype)
    if array.ndim != spec.ndim:
        raise ValueError(f"{key}: {name} has shape {list(array.shape)}, expected {spec.ndim} dimensions")
    return array


def _nested(cell: Any, ndim: int, dtype: type) -> np.ndarray:
    if isinstance(cell, np.ndarray) and cell.dtype != object:
        return cell.astype(dtype, copy=False)
    if ndim <= 1 or not isinstance(cell, np.ndarray):
        array = np.asarray(cell, dtype)  # a nested Python list is rectangular within one clip
        # An empty list ([] for R=0) has no inner dimensions to show; its shape is fixed up when padding.
        return array.reshape((0,) * ndim) if array.size == 0 and array.ndim != ndim else array
    # Ray's numpy batches hold nested lists as object arrays of object arrays, one level per dimension.
    inner = [_nested(c, ndim - 1, dtype) for c in cell]
    return np.stack(inner) if inner else np.zeros((0,) * ndim, dtype)


def _common_shape(rows: list[np.ndarray], name: str, keys: list[str]) -> tuple[int, ...]:
    shapes = {tuple(r.shape) for r in rows}
    assert len(shapes) == 1, f"{name}: one shape per batch expected, got {sorted(shapes)} ({keys})"
    return shapes.pop()


def _empty_shape(name: str, key_shape: tuple[int, ...] | None) -> tuple[int, ...] | None:
    """A row shape for a column where every clip of the batch is empty (R=0), from key_tokens' [S, D]."""
    if key_shape is None:
        return None
    return {"residual_features": (0, key_shape[1]), "frame_tokens": (0, *key_shape)}.get(name)


def _pad(
    rows: list[np.ndarray], spec: _Ragged, name: str, keys: list[str], empty_shape: tuple[int, ...] | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Rows of one column -> ([B, ...] with the ragged axis padded to its longest, [B, longest] mask)."""
    if spec.axis is None:
        return np.stack(rows) if rows else np.zeros((0,) * (spec.ndim + 1), spec.dtype), None
    lengths = np.array([r.shape[spec.axis] for r in rows], np.int64)
    # A clip of length 0 carries no evidence of the other dimensions (an empty nested list), so it is not asked.
    others = {tuple(np.delete(r.shape, spec.axis)) for r in rows if r.shape[spec.axis]}
    assert len(others) <= 1, f"{name}: one shape besides axis {spec.axis} per batch expected, got {sorted(others)} ({keys})"
    if others:
        other = list(others.pop())
    elif empty_shape is not None:
        other = list(np.delete(empty_shape, spec.axis))
    else:
        other = [0] * (spec.ndim - 1)
    longest = int(lengths.max()) if len(rows) else 0
    shape = list(other)
    shape.insert(spec.axis, longest)
    padded = np.full((len(rows), *shape), spec.pad, spec.dtype)  # [B, ...with longest at axis...]
    for b, (row, n) in enumerate(zip(rows, lengths)):
        if n:
            index = [slice(None)] * spec.ndim
            index[spec.axis] = slice(0, int(n))
            padded[(b, *index)] = row
    mask = np.arange(longest)[None, :] < lengths[:, None]  # [B, longest]
    return padded, mask


def _scalar_column(cells: Sequence[Any]) -> torch.Tensor | list[Any]:
    """A column of one value per row: numbers -> a [B] tensor, anything else (strings, None) -> a list.

    Integers come out int64 and reals float64 whether the rows came from Ray (int32 height, as stored)
    or from Python values, so that both paths give the same batch.
    """
    if isinstance(cells, np.ndarray) and cells.dtype != object and cells.ndim == 1:
        values: Any = cells
    else:
        values = [c.item() if isinstance(c, np.generic) or (isinstance(c, torch.Tensor) and c.dim() == 0) else c
                  for c in cells]
        if not values or not all(isinstance(v, bool | int | float) for v in values):
            return [v.tolist() if isinstance(v, np.ndarray | torch.Tensor) else v for v in values]
    array = np.asarray(values)
    kind = {"b": np.bool_, "i": np.int64, "u": np.int64, "f": np.float64}.get(array.dtype.kind)
    if kind is None:
        return array.tolist()
    return torch.from_numpy(array.astype(kind))  # a copy: Ray's batch arrays may be read-only views
