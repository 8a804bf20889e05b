"""`vtok decode`: stored tokens -> videos, through a trained decoder, as a Ray Data job.

    read tokens (Ray Data)  ->  reconstruct (decoder actors: GPU on a cluster)  ->  write mp4 (CPU tasks)
      -> OUT/<sample_key>.mp4 (local or s3://) and OUT/index.jsonl (sample key, source, caption, path, size)

The decoder checkpoint is checked before any work (complete marker, token widths against the data).
OUT/run.json binds the folder to what decides its videos (checkpoint, data, seed, steps, guidance, fps,
upscale): a rerun with the same settings skips every clip whose mp4 is there and reads back whole (videos
are renamed or PUT into place whole, so a kill never leaves half of one under its name) and decodes the
rest; a rerun with other settings is refused, naming the setting.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pipelines.decode.mp4 import INDEX_FILE, TEMP_PREFIX, video_name, write_videos
from pipelines.decode.reconstruct import Reconstructor, decoder_checkpoint
from pipelines.train.data import check_manifest, dense_tensors
from pipelines.train.decoder_checks import check_tokens, token_columns
from pipelines.train.run import bind_training_run
from vtok.storage import get_fs, is_local, join

logger = logging.getLogger(__name__)


@dataclass
class DecodeTokensConfig:
    """`vtok decode`: which tokens, which decoder, where the videos go, and the decoder actors."""

    data: str = "???"
    """Token dataset (a `vtok tokenize` output), local or s3://."""
    decoder: str = "???"
    """A complete decoder checkpoint (RUN/checkpoints/step_*), or a decoder run (its latest complete one)."""
    out: str = "???"
    """Output folder, local or s3://: one mp4 per clip named by its sample key, index.jsonl and run.json (a
    rerun with the same settings skips the clips whose mp4 is there whole)."""
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


def decode_identity(cfg: DecodeTokensConfig, checkpoint: str, manifest: dict[str, Any], fps: float) -> dict[str, Any]:
    """What decides the videos of OUT (OUT/run.json): a rerun skips finished clips only when it matches."""
    return {"kind": "decode", "decoder": checkpoint, "data_fingerprint": manifest["fingerprint"],
            "data_identity": manifest.get("identity"), "seed": cfg.seed, "steps": cfg.steps,
            "guidance": cfg.guidance, "fps": fps, "upscale": cfg.upscale}


def video_shape(uri: str, storage_options: dict[str, Any] | None = None) -> tuple[int, int, int] | None:
    """(frames, height, width) from the header of the mp4 at `uri`; None when it does not read back whole."""
    from vtok.video import DecodeError, probe

    try:
        info = probe(uri, storage_options)
    except DecodeError:
        return None
    return (info.num_frames, info.height, info.width) if info.num_frames > 0 else None


def finished_videos(ds: Any, out: str,
                    storage_options: dict[str, Any] | None) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """(the clips' sample keys in order, index rows of those whose mp4 in OUT is whole) for the clips of `ds`.

    One listing of OUT, then a header read of each listed mp4 of these clips; temporary files a kill left
    in a local OUT are removed."""
    fs, root = get_fs(out, storage_options)
    if not is_local(out):
        fs.invalidate_cache(root)
    names = {str(p).rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)} if fs.exists(root) else set()
    if is_local(out):
        for name in sorted(n for n in names if n.startswith(TEMP_PREFIX)):
            fs.rm_file(f"{root}/{name}")
    meta = list(ds.select_columns(["sample_key", "source_uri", "caption"]).iter_rows())
    keys = [str(r["sample_key"]) for r in meta]
    listed = [r for r in meta if video_name(str(r["sample_key"])) in names]
    if not listed:
        return keys, {}
    uris = [join(out, video_name(str(r["sample_key"]))) for r in listed]
    with ThreadPoolExecutor(max_workers=16) as pool:  # header reads: latency-bound on an object store
        shapes = list(pool.map(lambda uri: video_shape(uri, storage_options), uris))
    rows: dict[str, dict[str, Any]] = {}
    for r, uri, shape in zip(listed, uris, shapes):
        if shape is not None:
            rows[str(r["sample_key"])] = {
                "sample_key": str(r["sample_key"]), "path": uri, "frames": shape[0], "height": shape[1],
                "width": shape[2], **{c: None if r[c] is None else str(r[c]) for c in ("source_uri", "caption")}}
    return keys, rows


def _drop_keys(batch: Any, keys: frozenset[str]) -> Any:
    import pyarrow as pa

    mask = [str(k) not in keys for k in batch.column("sample_key").to_pylist()]
    return batch.filter(pa.array(mask, pa.bool_()))


def _decode(ds: Any, cfg: DecodeTokensConfig, checkpoint: str, fps: float,
            storage_options: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The index rows of the clips of `ds`, reconstructed by decoder actors and written as mp4s into OUT."""
    import ray.data

    # Tensor columns reach the actors as ndarrays, not nested object arrays (see dense_tensors).
    ds = ds.map_batches(dense_tensors, batch_format="pyarrow")
    ds = ds.map_batches(
        Reconstructor,
        fn_constructor_kwargs={"checkpoint": checkpoint, "storage_options": storage_options, "steps": cfg.steps,
                               "guidance": cfg.guidance, "seed": cfg.seed, "num_threads": int(max(1, cfg.num_cpus))},
        batch_size=cfg.batch_size, num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus,
        compute=ray.data.ActorPoolStrategy(size=cfg.num_actors), batch_format="numpy",
    )
    ds = ds.map_batches(write_videos, fn_kwargs={"out": cfg.out, "fps": fps, "storage_options": storage_options,
                                                 "upscale": cfg.upscale}, batch_size=cfg.batch_size,
                        batch_format="numpy")
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()} for row in ds.iter_rows()]


def run_decode(cfg: DecodeTokensConfig) -> dict[str, Any]:
    """Reconstruct every clip (or the first `limit`) of `data` whose video OUT lacks; returns {"videos" (written),
    "skipped" (already whole in OUT), "index", "seconds", ...}."""
    import ray.data

    import vtok

    opts = cfg.storage_options or None
    manifest = check_manifest(cfg.data, opts)
    checkpoint, _, model = decoder_checkpoint(cfg.decoder, opts)
    check_tokens(model, manifest, cfg.data, where=f"decoder={cfg.decoder}")
    fps = cfg.fps or dataset_fps(manifest)
    fs, root = get_fs(cfg.out, opts)
    fs.makedirs(root, exist_ok=True)
    resumed = bind_training_run(cfg.out, decode_identity(cfg, checkpoint, manifest, fps), opts)
    started = time.perf_counter()
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    ds = vtok.read_tokens(cfg.data, opts)
    columns = ["sample_key", "source_uri", "caption", "frame_indices", *token_columns(model)]
    ds = ds.select_columns([c for c in columns if c in ds.schema().names])
    if cfg.limit:
        ds = ds.limit(cfg.limit)
    keys, kept = finished_videos(ds, cfg.out, opts) if resumed else ([], {})
    rows: list[dict[str, Any]] = []
    if not kept or len(kept) < len(keys):
        if kept:
            ds = ds.map_batches(_drop_keys, fn_kwargs={"keys": frozenset(kept)}, batch_format="pyarrow")
        rows = _decode(ds, cfg, checkpoint, fps, opts)
    if kept:
        written = {r["sample_key"]: r for r in rows}
        index = write_index(cfg.out, [kept.get(k) or written[k] for k in keys], opts)
    else:
        index = write_index(cfg.out, rows, opts)
    seconds = time.perf_counter() - started
    logger.info("decoded %d clips of %s with %s into %s in %.1f s; skipped %d already there", len(rows), cfg.data,
                checkpoint, cfg.out, seconds, len(kept))
    return {"videos": len(rows), "skipped": len(kept), "index": index, "seconds": seconds, "checkpoint": checkpoint,
            "out": cfg.out, "videos_per_s": len(rows) / seconds if seconds > 0 else 0.0}
