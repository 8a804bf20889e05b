"""`vtok decode`: stored tokens -> videos, through a trained decoder, as a Ray Data job.

    read tokens (Ray Data)  ->  reconstruct (decoder actors: GPU on a cluster)  ->  write mp4 (CPU tasks)
      -> OUT/<sample_key>.mp4 (local or s3://) and OUT/index.jsonl (sample key, source, caption, path, size)

The decoder checkpoint is checked before any work (complete marker, token widths against the data).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from pipelines.decode.mp4 import INDEX_FILE, write_videos
from pipelines.decode.reconstruct import Reconstructor
from pipelines.train.data import check_manifest, dense_tensors
from pipelines.train.decoder_checks import check_tokens, saved_decoder_config, token_columns
from vtok.storage import get_fs, join, localize_dir

logger = logging.getLogger(__name__)


@dataclass
class DecodeTokensConfig:
    """`vtok decode`: which tokens, which decoder, where the videos go, and the decoder actors."""

    data: str = "???"
    """Token dataset (a `vtok tokenize` output), local or s3://."""
    decoder: str = "???"
    """A complete decoder checkpoint (RUN/checkpoints/step_*), or a decoder run (its latest complete one)."""
    out: str = "???"
    """Output folder, local or s3://: one mp4 per clip named by its sample key, and index.jsonl."""
    limit: int | None = None
    """Decode only the first N clips (in the dataset's order); None: all."""
    steps: int | None = None
    """Euler sampling steps; None: the decoder's sample_steps."""
    guidance: float | None = None
    """Classifier-free guidance scale; None: the decoder's guidance."""
    seed: int = 0
    """Seed of the sampling noise; each clip's noise is fixed by it and the clip's sample key."""
    fps: float | None = None
    """Frame rate of the mp4s; None: the dataset's decode.fps (8 when it sampled a fixed frame count)."""
    upscale: int = 1
    """Enlarge the frames this many times (nearest neighbour), for toy-scale decoders' tiny frames."""
    batch_size: int = 8
    """Clips per decoder call."""
    num_actors: int = 1
    """Decoder actors (one model copy each)."""
    num_gpus: float = 0.0
    """GPUs per decoder actor (1 on a GPU cluster); 0 runs on CPU."""
    num_cpus: float = 1.0
    """CPUs per decoder actor (also its torch thread count on CPU)."""
    storage_options: dict[str, Any] = field(default_factory=dict)
    """fsspec options for s3:// data, checkpoints and outputs."""

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1 or null, got {self.limit}")
        for name in ("upscale", "batch_size", "num_actors"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_gpus < 0 or self.num_cpus <= 0:
            raise ValueError("num_gpus must be >= 0 and num_cpus > 0")
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")


def dataset_fps(manifest: dict[str, Any]) -> float:
    """The frame rate the clips were sampled at (decode.fps of the dataset), 8 when it is not recorded."""
    fps = (manifest.get("identity") or {}).get("decode.fps")
    return float(fps) if fps else 8.0


def write_index(out: str, rows: list[dict[str, Any]], storage_options: dict[str, Any] | None) -> str:
    """OUT/index.jsonl, written whole (readers never see part of it)."""
    from vtok.storage import write_bytes_atomic

    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    uri = join(out, INDEX_FILE)
    write_bytes_atomic(uri, text.encode(), storage_options)
    return uri


def run_decode(cfg: DecodeTokensConfig) -> dict[str, Any]:
    """Reconstruct every clip (or the first `limit`) of `data`; returns {"videos", "index", "seconds", ...}."""
    import ray.data

    import vtok
    from vtok.training.checkpoint_ref import resolve_checkpoint

    opts = cfg.storage_options or None
    manifest = check_manifest(cfg.data, opts)
    checkpoint = resolve_checkpoint(cfg.decoder, "decoder", opts)
    model = saved_decoder_config(localize_dir(checkpoint, opts), "decoder")
    check_tokens(model, manifest, cfg.data, where=f"decoder={cfg.decoder}")
    fs, root = get_fs(cfg.out, opts)
    fs.makedirs(root, exist_ok=True)
    started = time.perf_counter()
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    ds = vtok.read_tokens(cfg.data, opts)
    columns = ["sample_key", "source_uri", "caption", "frame_indices", *token_columns(model)]
    ds = ds.select_columns([c for c in columns if c in ds.schema().names])
    if cfg.limit:
        ds = ds.limit(cfg.limit)
    # Tensor columns reach the actors as ndarrays, not nested object arrays (see dense_tensors).
    ds = ds.map_batches(dense_tensors, batch_format="pyarrow")
    ds = ds.map_batches(
        Reconstructor,
        fn_constructor_kwargs={"checkpoint": checkpoint, "storage_options": opts, "steps": cfg.steps,
                               "guidance": cfg.guidance, "seed": cfg.seed, "num_threads": int(max(1, cfg.num_cpus))},
        batch_size=cfg.batch_size, num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus,
        compute=ray.data.ActorPoolStrategy(size=cfg.num_actors), batch_format="numpy",
    )
    fps = cfg.fps or dataset_fps(manifest)
    ds = ds.map_batches(write_videos, fn_kwargs={"out": cfg.out, "fps": fps, "storage_options": opts,
                                                 "upscale": cfg.upscale}, batch_size=cfg.batch_size,
                        batch_format="numpy")
    rows = [{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()} for row in ds.iter_rows()]
    index = write_index(cfg.out, rows, opts)
    seconds = time.perf_counter() - started
    logger.info("decoded %d clips of %s with %s into %s in %.1f s", len(rows), cfg.data, checkpoint, cfg.out, seconds)
    return {"videos": len(rows), "index": index, "seconds": seconds, "checkpoint": checkpoint, "out": cfg.out,
            "videos_per_s": len(rows) / seconds if seconds > 0 else 0.0}
