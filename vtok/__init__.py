"""vtok: VTok video tokens at cluster scale."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: `import vtok` loads neither Ray nor torch
    import ray.data

    from vtok.training.batching import TokenBatch

__version__ = "0.1.0"


def read_tokens(uri: str, storage_options: dict[str, Any] | None = None) -> ray.data.Dataset:
    """The committed shards of a vtok token dataset as a Ray Dataset, the same columns for Parquet and WebDataset."""
    from vtok.dataset import read_tokens as _read_tokens

    return _read_tokens(uri, storage_options)


def collate_tokens(
    rows_or_batch: Sequence[Mapping[str, Any]] | Mapping[str, Any], columns: Collection[str] | None = None
) -> TokenBatch:
    """Rows of a token dataset -> padded tensors with masks (see vtok.training.batching.collate_tokens)."""
    from vtok.training.batching import collate_tokens as _collate_tokens

    return _collate_tokens(rows_or_batch, columns)
