"""What every training job (MLLM, decoder) does with its token dataset and run settings, in one place.

- check_manifest: the dataset is a committed token dataset of the schema this vtok reads;
- check_frame_sampling: the frame-sampling baseline has frame_tokens and enough frames;
- split_rows: the held-out clips, by a hash of the sample key (vtok.training.split), or a second dataset;
- data_record / materialize_if_small / loop_spec: what a checkpoint records of its data, how the training
  split is held, and what every worker's loop is told.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pipelines.train.config import CheckpointSettings, ScalingSettings, TrackingSettings, TrainSettings
from pipelines.train.loop import LoopSpec
from pipelines.train.run import flat_config
from schemas.token_shard import SCHEMA_VERSION
from vtok.errors import InputError
from vtok.secrets import redact
from vtok.storage import join


@dataclass
class SplitSettings:
    """Which clips are held out of training."""

    heldout_fraction: float = 0.1
    """Fraction of sample keys held out (by a hash of the key, so the split never changes)."""
    salt: str = "vtok-heldout-v1"
    """Salt of that hash: another salt, another split."""
    heldout_data: str | None = None
    """A separate held-out token dataset; then every clip of `data` trains."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ValueError(f"split.heldout_fraction must be in [0, 1), got {self.heldout_fraction}")


class TrainJobConfig(Protocol):
    """The fields every training job's config has (TrainMLLMConfig, TrainDecoderConfig)."""

    data: str
    output: str
    split: SplitSettings
    train: TrainSettings
    scaling: ScalingSettings
    checkpoint: CheckpointSettings
    tracking: TrackingSettings
    materialize_bytes: int
    storage_options: dict[str, Any]


def check_manifest(data: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest of the token dataset `data`, refused (naming it) unless it has committed shards of this schema."""
    from vtok.dataset import read_manifest

    try:
        manifest = read_manifest(data, storage_options)
    except FileNotFoundError as err:
        raise InputError(f"data={data}: not a token dataset ({err})") from None
    if not manifest.get("shards"):
        raise InputError(f"data={data}: the dataset has no committed shards; tokenize into it first")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise InputError(f"data={data}: schema version {manifest.get('schema_version')!r}, this vtok reads "
                         f"{SCHEMA_VERSION!r}")
    return manifest


def frame_counts(manifest: dict[str, Any]) -> list[int]:
    """The clips' frame counts T the manifest records (each once)."""
    return sorted(int(t) for t in manifest.get("frame_counts", {}))


def check_frame_sampling(manifest: dict[str, Any], data: str, tokens: str, frames: int | None) -> None:
    """model.tokens=frame_sampling needs frame_tokens in the shards, and model.frames at most the shortest T."""
    if tokens != "frame_sampling":
        return
    if not manifest.get("tokenizer", {}).get("frame_tokens"):
        raise InputError(f"data={data}: model.tokens=frame_sampling needs frame_tokens in the shards; "
                         f"tokenize with tokenizer.frame_tokens=true")
    counts = frame_counts(manifest)
    if frames and counts and frames > counts[0]:
        raise InputError(f"model.frames={frames} exceeds the shortest clip's T={counts[0]} in {data}")


def split_rows(data: str, columns: list[str], split: SplitSettings, storage_options: dict[str, Any] | None = None,
               hold: Callable[[Any], Any] | None = None) -> tuple[Any, Any]:
    """(train, held-out) Ray Datasets of `columns` (those the shards have) of the token dataset `data`.

    `hold`: applied to the dataset before it is split (e.g. dense_tensors, then materialize_if_small), so
    both splits, their count and the statistics read it once."""
    import ray.data

    import vtok
    from vtok.training.split import is_heldout

    # The driver's own reads (statistics, report samples over the first rows) see the same rows every run; the
    # training ingest sets its order in fit(), as Ray Train does not take it from this context.
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    ds = vtok.read_tokens(data, storage_options)
    present = [c for c in columns if c in set(ds.schema().names)]
    ds = ds.select_columns(present)
    if hold is not None:
        ds = hold(ds)
    if split.heldout_data:
        held = vtok.read_tokens(split.heldout_data, storage_options).select_columns(present)
        return ds, hold(held) if hold is not None else held
    fraction, salt = split.heldout_fraction, split.salt

    def keep(batch: Any, heldout: bool) -> Any:
        import pyarrow as pa

        mask = [is_heldout(str(k), fraction, salt) == heldout for k in batch.column("sample_key").to_pylist()]
        return batch.filter(pa.array(mask, pa.bool_()))

    train = ds.map_batches(keep, fn_kwargs={"heldout": False}, batch_format="pyarrow")
    held = ds.map_batches(keep, fn_kwargs={"heldout": True}, batch_format="pyarrow")
    return train, held


def dense_tensors(table: Any, columns: tuple[str, ...] = ("key_tokens", "residual_features", "residual_tokens",
                                                           "frame_tokens", "frames_lowres", "latents")) -> Any:
    """A pyarrow batch whose nested-list tensor columns become Ray tensor columns (one ndarray per row).

    Ray hands a nested-list column to numpy batches as object arrays of object arrays, one level per
    dimension, which vtok's collate then walks element by element: 65 ms per batch of 16 frames_lowres
    [8, 16, 16, 3] (measured), more than a toy decoder's step. As tensor columns they arrive as plain
    ndarrays (1 ms). Values are exact: the same offsets walked, the same dtype kept.
    """
    import numpy as np
    from ray.data.extensions import ArrowTensorArray

    from schemas.token_shard import TENSOR_NDIM, column_to_tensors

    for name in columns:
        if name not in table.column_names or table.num_rows == 0:
            continue
        arrays = column_to_tensors(table.column(name), TENSOR_NDIM[name])
        width = next((a.shape[1:] for a in arrays if a.size), None)
        # An empty [R = 0, D] cell comes back without its inner dimensions: give it the others' width.
        arrays = [a.reshape((0, *width)) if not a.size and width is not None else a for a in arrays]
        same = len({a.shape for a in arrays}) == 1
        tensor = ArrowTensorArray.from_numpy(np.stack(arrays) if same else arrays)
        table = table.set_column(table.schema.get_field_index(name), name, tensor)
    return table


def check_heldout(held_ds: Any, cfg: TrainJobConfig) -> None:
    """Refuse an empty held-out split, naming the keys that make one."""
    if held_ds.count() == 0:
        raise InputError(f"the held-out split of {cfg.split.heldout_data or cfg.data} is empty: raise "
                         f"split.heldout_fraction or give split.heldout_data")


def data_record(cfg: TrainJobConfig, manifest: dict[str, Any]) -> dict[str, Any]:
    """RUN/checkpoints/step_*/data.json: which data, which fingerprint and identity, which split."""
    return {"data": cfg.data, "fingerprint": manifest["fingerprint"], "identity": manifest.get("identity"),
            "heldout_fraction": cfg.split.heldout_fraction, "salt": cfg.split.salt,
            "heldout_data": cfg.split.heldout_data}


def materialize_if_small(train_ds: Any, manifest: dict[str, Any], limit_bytes: int) -> Any:
    """The training split kept in Ray's object store when the shards total at most `limit_bytes`: epochs then
    replay blocks from memory instead of re-reading shards; a larger dataset streams from storage each epoch."""
    if sum(f["bytes"] for f in manifest["shards"]) <= limit_bytes:
        return train_ds.materialize()
    return train_ds


def loop_spec(cfg: TrainJobConfig) -> LoopSpec:
    """What every worker's loop is told: the settings, and MLflow's (the config as parameters, credentials
    and storage options left out)."""
    return LoopSpec(run_uri=cfg.output, train=cfg.train, checkpoint=cfg.checkpoint,
                    storage_options=cfg.storage_options or None, use_gpu=cfg.scaling.use_gpu,
                    cpus_per_worker=cfg.scaling.cpus_per_worker,
                    mlflow_uri=cfg.tracking.mlflow_uri, experiment=cfg.tracking.experiment,
                    run_name=join(cfg.output, "").rstrip("/").rsplit("/", 1)[-1],
                    params={k: v for k, v in flat_config(redact(cfg)).items() if not k.startswith("storage_options")})
