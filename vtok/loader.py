"""A plain PyTorch IterableDataset over WebDataset token shards (no Ray, no webdataset package)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.utils.data

from vtok.dataset import iter_webdataset_shard, shard_uris


class TokenIterable(torch.utils.data.IterableDataset):
    """Samples of a token dataset's .tar shards; shards are split across DataLoader workers.

    Each item is a dict: sample_key, caption, frame_indices, ... and tensors key_tokens [S, D],
    residual_features [R, D] (and frame_tokens / residual_tokens where stored).
    """

    def __init__(self, uri: str, storage_options: dict[str, Any] | None = None) -> None:
        self.shards = shard_uris(uri, storage_options)
        if not all(s.endswith(".tar") for s in self.shards):
            raise ValueError(f"{uri}: TokenIterable reads WebDataset (.tar) token shards; use read_tokens for Parquet")
        self.storage_options = storage_options

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        shards = self.shards if info is None else self.shards[info.id :: info.num_workers]
        for shard in shards:
            for sample in iter_webdataset_shard(shard, self.storage_options):
                yield {k: torch.from_numpy(v) if hasattr(v, "dtype") else v for k, v in sample.items()}
