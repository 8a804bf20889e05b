"""A plain PyTorch IterableDataset over token shards, Parquet or WebDataset (no Ray, no webdataset package)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.utils.data

from vtok.dataset import read_shard_samples, shard_uris


class TokenIterable(torch.utils.data.IterableDataset):
    """Samples of a token dataset, each read once per epoch across all DDP ranks and DataLoader workers.

    Each item is a dict: sample_key, source_uri, caption, frame_indices (list of ints), ... and
    tensors key_tokens [S, D], residual_features [R, D] (frame_tokens [T, S, D] / residual_tokens
    [R, D'] where stored); the same dict for a clip whichever format the dataset is in.

    `seed`: None reads in the dataset's order; an int permutes the shard order and each shard's
    sample order by generators seeded from (seed, epoch), so call `set_epoch` before each epoch
    (as with DistributedSampler; with persistent_workers the workers keep the epoch they started with).
    `rank` / `world_size` default to torch.distributed's when it is initialized when this object is
    made (DataLoader workers may be spawned processes without a process group), else 0 / 1.

    The readers (world_size x num_workers) split the shards between them. When there are fewer
    shards than readers, every reader reads every shard and keeps the samples whose position in the
    epoch's order is its index modulo the number of readers: still each sample exactly once.
    Ranks may get different sample counts; a shard is held in memory while its samples are yielded.
    """

    def __init__(
        self,
        uri: str,
        storage_options: dict[str, Any] | None = None,
        *,
        seed: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        self.shards = shard_uris(uri, storage_options)
        kinds = {s.rsplit(".", 1)[-1] for s in self.shards}
        if not kinds <= {"parquet", "tar"} or len(kinds) > 1:
            raise ValueError(f"{uri}: TokenIterable reads .parquet or .tar token shards of one format, found {sorted(kinds)}")
        if seed is not None and seed < 0:
            raise ValueError(f"seed must be >= 0 or None, got {seed}")
        self.storage_options = storage_options
        self.seed = seed
        self.epoch = 0
        self.rank, self.world_size = _distributed(rank, world_size)

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order the next iteration follows (only matters with a seed)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        readers = self.world_size * workers
        reader = self.rank * workers + worker
        order = self._shard_order()
        if len(order) >= readers:
            for shard in order[reader::readers]:
                yield from self._shard_samples(shard)
            return
        position = 0
        for shard in order:
            for sample in self._shard_samples(shard):
                if position % readers == reader:
                    yield sample
                position += 1

    def _shard_order(self) -> list[int]:
        if self.seed is None:
            return list(range(len(self.shards)))
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.shards)).tolist()

    def _shard_samples(self, shard: int) -> Iterator[dict[str, Any]]:
        samples = read_shard_samples(self.shards[shard], self.storage_options)
        if self.seed is not None:
            # Seeded by the shard too, so that a reader that owns a shard needs no other shard's draws.
            rng = np.random.default_rng([self.seed, self.epoch, shard])
            samples = [samples[i] for i in rng.permutation(len(samples))]
        for sample in samples:
            yield {k: _to_torch(v) for k, v in sample.items()}


def _to_torch(value: Any) -> Any:
    if not isinstance(value, np.ndarray):
        return value
    # Arrays that view Arrow buffers are read-only; torch wants memory it may write.
    return torch.from_numpy(value if value.flags.writeable else value.copy())


def _distributed(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world_size) as given, else torch.distributed's when initialized, else (0, 1)."""
    import torch.distributed as dist

    if (rank is None or world_size is None) and dist.is_available() and dist.is_initialized():
        rank = dist.get_rank() if rank is None else rank
        world_size = dist.get_world_size() if world_size is None else world_size
    rank = 0 if rank is None else rank
    world_size = 1 if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1} (world_size {world_size})")
    return rank, world_size
