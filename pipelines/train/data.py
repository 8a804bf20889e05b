"""What every training job (MLLM, decoder) does with its token dataset and run settings, in one place.

- TrainJobConfig: the keys every job's config has (each job's config subclasses it);
- check_manifest / check_tracking: the dataset is a committed token dataset of the schema this vtok reads,
  and MLflow answers when it is asked for;
- check_frame_sampling: the frame-sampling baseline has frame_tokens and enough frames;
- split_rows: the held-out clips, by a hash of the sample key (vtok.training.split), or a second dataset;
- data_record / config_record / materialize_if_small / loop_spec: what a checkpoint records of its data and
  config, how the training split is held, and what every worker's loop is told;
- bind_job / fit_job: the run bound to what it is made of, and Ray Train started under the run's name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipelines.train.config import CheckpointSettings, ScalingSettings, TrackingSettings, TrainSettings
from pipelines.train.loop import LoopSpec, TrainTask
from pipelines.train.metrics import check_mlflow
from pipelines.train.run import bind_training_run, fit, flat_config
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


@dataclass
class TrainJobConfig:
    """The keys every training job's config has, in `vtok config`'s order; TrainMLLMConfig and
    TrainDecoderConfig subclass it, each giving `model` its class and adding its own keys."""

    data: str = "???"
    """Token dataset (a `vtok tokenize` output; the decoder's with decoder targets), local or s3://."""
    output: str = "???"
    """The run directory: checkpoints, metrics, report; rerunning the same command resumes it."""
    model: Any = None
    """The job's model config (each job declares its class; here for the key's place in the listing)."""
    split: SplitSettings = field(default_factory=SplitSettings)
    """Held-out clips."""
    train: TrainSettings = field(default_factory=TrainSettings)
    """Steps, batch size, learning rate, seed."""
    scaling: ScalingSettings = field(default_factory=ScalingSettings)
    """Ray Train workers."""
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)
    """Checkpoint interval and retention."""
    tracking: TrackingSettings = field(default_factory=TrackingSettings)
    """MLflow."""
    stats_clips: int = 2048
    """Clips (the first of the training split) whose token statistics standardize the model's inputs."""
    materialize_bytes: int = 1 << 30
    """A dataset whose shards total at most this many bytes is read once and kept in Ray's object store for
    every epoch; a larger one streams from storage each epoch."""
    storage_options: dict[str, Any] = field(default_factory=dict)
    """fsspec options for s3:// data, runs and model directories."""


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


def check_tracking(cfg: TrainJobConfig) -> None:
    """Refuse an MLflow tracking URI that does not answer (or MLflow missing), before training starts."""
    if cfg.tracking.mlflow_uri:
        check_mlflow(cfg.tracking.mlflow_uri, cfg.tracking.experiment)


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
               transform: Callable[[Any], Any] | None = None, in_memory_bytes: int = 0) -> tuple[Any, Any]:
    """(train, held-out) Ray Datasets of `columns` (those the shards have) of the token dataset `data`.

    `transform`: a pyarrow table -> table function applied to every block before the split (dense_tensors).
    A dataset whose shards total at most `in_memory_bytes` is read once, in the driver, and handed to Ray as
    in-memory blocks (one per shard, in shard order): its count, statistics, report samples and every epoch
    then read memory. Each Ray Data read of shards costs seconds of task start-up whatever their size; a small
    dataset used to pay it five times before its first step. A larger dataset streams from storage."""
    import ray.data

    import vtok

    # The driver's own reads (statistics, report samples over the first rows) see the same rows every run; the
    # training ingest sets its order in fit(), as Ray Train does not take it from this context.
    ray.data.DataContext.get_current().execution_options.preserve_order = True

    def open_rows(uri: str) -> Any:
        if dataset_bytes(uri, storage_options) <= in_memory_bytes:
            return ray.data.from_arrow(_shard_tables(uri, columns, storage_options, transform))
        ds = vtok.read_tokens(uri, storage_options)
        ds = ds.select_columns([c for c in columns if c in set(ds.schema().names)])
        return ds.map_batches(transform, batch_format="pyarrow") if transform is not None else ds

    ds = open_rows(data)
    if split.heldout_data:
        return ds, open_rows(split.heldout_data)
    fraction, salt = split.heldout_fraction, split.salt
    train = ds.map_batches(_keep, fn_kwargs={"heldout": False, "fraction": fraction, "salt": salt},
                           batch_format="pyarrow")
    held = ds.map_batches(_keep, fn_kwargs={"heldout": True, "fraction": fraction, "salt": salt},
                          batch_format="pyarrow")
    return train, held


def _keep(batch: Any, heldout: bool, fraction: float, salt: str) -> Any:
    """The rows of a pyarrow batch on one side of the held-out split."""
    import pyarrow as pa

    from vtok.training.split import is_heldout

    mask = [is_heldout(str(k), fraction, salt) == heldout for k in batch.column("sample_key").to_pylist()]
    return batch.filter(pa.array(mask, pa.bool_()))


def dataset_bytes(data: str, storage_options: dict[str, Any] | None = None) -> int:
    """The committed shards' total size, as the manifest records it."""
    from vtok.dataset import read_manifest

    return sum(int(f["bytes"]) for f in read_manifest(data, storage_options)["shards"])


def _shard_tables(data: str, columns: list[str], storage_options: dict[str, Any] | None,
                  transform: Callable[[Any], Any] | None) -> list[Any]:
    """Every committed shard of `data` as one Arrow table of `columns` (those any shard has), in shard order."""
    import pyarrow as pa

    from vtok.dataset import read_shard_table, shard_uris

    tables = [read_shard_table(uri, storage_options) for uri in shard_uris(data, storage_options)]
    fields = {}
    for table in tables:
        fields.update({f.name: f for f in table.schema if f.name in columns and f.name not in fields})
    present = [fields[c] for c in columns if c in fields]
    # Parquet shards carry an optional column only where a row has a value: the others get it as nulls.
    tables = [pa.table([t.column(f.name) if f.name in t.column_names else pa.nulls(t.num_rows, f.type)
                        for f in present], schema=pa.schema(present)) for t in tables]
    return [transform(t) for t in tables] if transform is not None else tables


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


def config_record(cfg: TrainJobConfig) -> dict[str, Any]:
    """The resolved config as every checkpoint's config.json records it: JSON values, credentials (in
    storage_options or anywhere else) masked."""
    return json.loads(json.dumps(redact(cfg), default=str))


def bind_job(cfg: TrainJobConfig, kind: str, model: Any, manifest: dict[str, Any], **extra: Any) -> bool:
    """Bind RUN (cfg.output) to what its checkpoints are made of: the job kind, the resolved model config,
    `extra` (other settings that change the weights), the data's fingerprint and identity, the split and the
    seed; True when the run exists and matches (a resume), RunMismatchError naming the key otherwise."""
    identity = {"kind": kind, "model": dataclasses.asdict(model), **extra,
                "data_fingerprint": manifest["fingerprint"], "data_identity": manifest.get("identity"),
                "split": dataclasses.asdict(cfg.split), "seed": cfg.train.seed}
    return bind_training_run(cfg.output, identity, cfg.storage_options or None)


def fit_job(kind: str, task: TrainTask, cfg: TrainJobConfig, train_ds: Any, progress: bool = True,
            required_suites: Sequence[str] = ()) -> None:
    """Train `task` on `train_ds` with Ray Train until cfg.train.steps, under a name fixed by the run directory;
    retention keeps every checkpoint without committed results for each of `required_suites`."""
    name = f"vtok-{kind}-" + hashlib.sha256(cfg.output.encode()).hexdigest()[:12]
    fit(task, loop_spec(cfg, required_suites), {"train": train_ds}, cfg.scaling, name=name, progress=progress)


def materialize_if_small(train_ds: Any, manifest: dict[str, Any], limit_bytes: int) -> Any:
    """The training split kept in Ray's object store when the shards total at most `limit_bytes` (split_rows read
    them into memory): epochs then replay its blocks; a larger dataset streams from storage each epoch."""
    if sum(f["bytes"] for f in manifest["shards"]) <= limit_bytes:
        return train_ds.materialize()
    return train_ds


def loop_spec(cfg: TrainJobConfig, required_suites: Sequence[str] = ()) -> LoopSpec:
    """What every worker's loop is told: the settings, the eval suites retention waits for, and MLflow's (the
    config as parameters, credentials and storage options left out)."""
    return LoopSpec(run_uri=cfg.output, train=cfg.train, checkpoint=cfg.checkpoint,
                    required_suites=tuple(required_suites),
                    storage_options=cfg.storage_options or None, use_gpu=cfg.scaling.use_gpu,
                    cpus_per_worker=cfg.scaling.cpus_per_worker,
                    mlflow_uri=cfg.tracking.mlflow_uri, experiment=cfg.tracking.experiment,
                    run_name=join(cfg.output, "").rstrip("/").rsplit("/", 1)[-1],
                    params={k: v for k, v in flat_config(redact(cfg)).items() if not k.startswith("storage_options")})
