"""The tokenize pipeline: list -> decode (CPU tasks) -> encode (actor pool) -> shards + manifest.

Inputs are sorted by sample key and cut into fixed shards on the driver, so shard contents depend
only on the input listing, never on worker count or timing. Ray Data streams the clips in order
(preserve_order); the driver streams each shard's rows into its file in row groups and commits the shard
as soon as its last clip arrives: the driver holds one row group (sink.row_group_bytes) plus the blocks
in flight, whatever the shard size, and a rerun skips shards already committed.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipelines.progress import ProgressLine
from pipelines.tokenize.clips import ClipItem, SourceConfig
from pipelines.tokenize.manifest import (
    bind_run,
    check_committed_inputs,
    check_output,
    committed,
    delete_dataset,
    write_manifest,
)
from pipelines.tokenize.sink import FORMATS, ShardWriter, SinkConfig
from pipelines.tokenize.sources import list_inputs, split_into_clips
from pipelines.tokenize.stages.decode import DecodeStageConfig, decode_batch
from pipelines.tokenize.stages.encode import EncodeConfig, EncodeStage
from pipelines.tokenize.targets import TargetsConfig, check_vae, resolve_targets
from schemas.npy import from_npy
from schemas.token_shard import SCHEMA_VERSION, shard_metadata
from schemas.tokens import mean_counts
from vtok import __version__
from vtok.errors import DataQualityError
from vtok.storage import check_readable, check_writable
from vtok.tokenizer_spec import TokenizerConfig, TokenizerSpec
from vtok.video import SAMPLING_POLICY, DecodeConfig, DecodeError, probe


@dataclass
class TokenizeConfig:
    """Everything the tokenize pipeline needs; jobs/ builds it from YAML."""

    input: str = "???"
    """Folder of videos or manifest (csv/jsonl/parquet), local or any fsspec URI."""
    output: str = "???"
    """Where shards, quarantine, manifest and report go."""
    format: str = "parquet"
    """Token shard format."""
    source: SourceConfig = field(default_factory=SourceConfig)
    """Listing the inputs."""
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    """Frame sampling, resizing and input limits (decode.size is set from the encoder)."""
    decode_stage: DecodeStageConfig = field(default_factory=DecodeStageConfig)
    """Decode task resources."""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    """The VTok tokenizer."""
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    """Encoder actor pool resources."""
    sink: SinkConfig = field(default_factory=SinkConfig)
    """Shard size and commit mode."""
    targets: TargetsConfig = field(default_factory=TargetsConfig)
    """Decoder training targets (small frames, VAE latents) written with the tokens; off by default."""
    endpoint_url: str | None = None
    """S3-compatible endpoint (MinIO, Ceph, R2); None uses AWS_ENDPOINT_URL or AWS itself."""
    storage_options: dict[str, Any] = field(default_factory=dict)
    """Extra fsspec options for remote URIs (e.g. {"anon": true} or s3fs client_kwargs)."""

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {self.format!r}")

    def remote_options(self) -> dict[str, Any] | None:
        """storage_options with endpoint_url folded in; what every stage receives."""
        opts = dict(self.storage_options)
        if self.endpoint_url:
            opts["endpoint_url"] = self.endpoint_url
        return opts or None


@dataclass
class RunStats:
    """Timings and counts of this run, for the run report (per clip values cover this run's clips only)."""

    started_unix: float = 0.0
    listing_s: float = 0.0
    setup_s: float = 0.0
    pipeline_s: float = 0.0
    decode_s: list[float] = field(default_factory=list)
    encode_s: list[float] = field(default_factory=list)
    write_s: list[float] = field(default_factory=list)
    shard_bytes: list[int] = field(default_factory=list)
    frames_per_clip: list[int] = field(default_factory=list)
    timeline: list[tuple[float, int]] = field(default_factory=list)
    """(seconds since start, clips finished) samples, at most one per 0.25 s."""
    key_frames: list[tuple[str, np.ndarray]] = field(default_factory=list)
    """(caption or source, small uint8 key frame) of the first few clips, for the report page."""

    def record_clip(self, now_s: float, done: int, final: bool = False) -> None:
        if final or not self.timeline or now_s - self.timeline[-1][0] >= 0.25:
            self.timeline.append((round(now_s, 3), done))


@dataclass
class TokenizeSummary:
    """What a run did, for the console and the run report."""

    output: str
    fingerprint: str
    videos_in: int
    clips_out: int
    quarantined: int
    errors: dict[str, int]
    shards_written: int
    shards_skipped: int
    key_tokens_per_clip: int
    mean_residual_tokens_per_clip: float
    """r*r*R averaged over clips: the residual tokens (rows of residual_features), not the steps."""
    mean_frame_tokens_per_clip: float
    wall_time_s: float
    videos_per_s: float
    skipped: dict[str, int] = field(default_factory=dict)
    """Files the listing passed over, by label (".gif", "duplicate", ...)."""
    skipped_examples: list[str] = field(default_factory=list)
    manifest: dict[str, Any] = field(repr=False, default_factory=dict)
    stats: RunStats = field(repr=False, default_factory=RunStats)
    residual_grid: int = 1
    """r (tokenizer.residual_grid): r*r residual tokens per residual step."""

    def lines(self) -> list[str]:
        vt = self.key_tokens_per_clip + self.mean_residual_tokens_per_clip
        cells = self.residual_grid * self.residual_grid
        residual = (f"S+R = {self.key_tokens_per_clip} + {self.mean_residual_tokens_per_clip:.1f}" if cells == 1 else
                    f"S+r*r*R = {self.key_tokens_per_clip} + {cells}*{self.mean_residual_tokens_per_clip / cells:.1f}")
        tokens = (f"VTok {residual} = {vt:.1f}; "
                  f"frame sampling T*S = {self.mean_frame_tokens_per_clip:.1f}") if self.clips_out else "no clips"
        lines = [
            f"output             {self.output}",
            f"fingerprint        {self.fingerprint[:16]}",
            f"videos in          {self.videos_in}",
            *([f"skipped            {sum(self.skipped.values())}: {_counts_text(self.skipped)}"] if self.skipped else []),
            f"clips out          {self.clips_out}",
            f"quarantined        {self.quarantined} {self.errors or ''}".rstrip(),
            f"shards             {self.shards_written} written, {self.shards_skipped} already committed",
            f"tokens per clip    {tokens}",
            f"wall time          {self.wall_time_s:.1f} s",
            f"throughput         {self.videos_per_s:.2f} videos/s",
        ]
        return lines


REPORT_KEY_FRAMES = 8
"""Key frames the run report shows."""


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


def _actor_dtype(cfg: TokenizeConfig) -> str:
    if cfg.tokenizer.dtype != "auto":
        return cfg.tokenizer.dtype
    return "bfloat16" if cfg.encode.num_gpus > 0 else "float32"


def resolve_tokenizer_config(cfg: TokenizeConfig) -> TokenizerConfig:
    """The tokenizer config actors run with: dtype pinned so driver and actors agree on the fingerprint.

    The device stays as configured ("auto" picks cuda inside the actor when it has one), so a GPU
    declared only as a logical Ray resource still runs, on CPU, with the same fingerprint.
    """
    return dataclasses.replace(cfg.tokenizer, dtype=_actor_dtype(cfg), storage_options=cfg.remote_options() or {})


# What decides a row's contents besides the tokenizer (which the fingerprint covers): a resume with another
# value would mix two kinds of rows in one dataset. Decoder threads and the seek strategy are left out: they
# give the same frames.
IDENTITY_DECODE_FIELDS = ("backend", "fps", "num_frames", "max_frames", "size", "max_file_bytes", "max_duration_s",
                          "max_side", "max_source_frames")
IDENTITY_SOURCE_FIELDS = ("clip_length_s", "clip_stride_s", "min_clip_s", "caption_column")


def dataset_identity(source: SourceConfig, decode: DecodeConfig) -> dict[str, Any]:
    """The settings a dataset is bound to, as "section.key" -> value (stored in run.json and every shard)."""
    identity: dict[str, Any] = {f"decode.{name}": getattr(decode, name) for name in IDENTITY_DECODE_FIELDS}
    if identity["decode.backend"] == "auto":
        identity["decode.backend"] = "pyav"  # what auto means, so an explicit pyav resumes an auto dataset
    identity["decode.sampling_policy"] = SAMPLING_POLICY
    identity |= {f"source.{name}": getattr(source, name) for name in IDENTITY_SOURCE_FIELDS}
    return identity


def plan_shards(items: list[ClipItem], rows_per_shard: int) -> list[list[ClipItem]]:
    return [items[i : i + rows_per_shard] for i in range(0, len(items), rows_per_shard)]


def preflight(cfg: TokenizeConfig) -> None:
    """Fail on a missing input, a missing bucket, a wrong endpoint, refused credentials or an output that would
    collide with the input, before any work starts (jobs call it before starting Ray: it takes no Ray)."""
    opts = cfg.remote_options()
    check_readable(cfg.input, opts)
    check_vae(cfg.targets, opts)
    check_output(cfg.output, [cfg.input], cfg.format, cfg.source.recursive, opts)
    check_writable(cfg.output, opts)


def run_tokenize(cfg: TokenizeConfig, progress: bool = True) -> TokenizeSummary:
    """Run the pipeline on the Ray instance this process is connected to (jobs/ calls ray.init)."""
    import ray

    t0 = time.perf_counter()
    stats = RunStats(started_unix=time.time())
    opts = cfg.remote_options()
    preflight(cfg)
    listing = list_inputs(cfg.input, cfg.source, opts)
    items = listing.items
    if cfg.source.clip_length_s is not None:
        items = _split_long_videos(items, cfg.source, cfg.decode, opts)
    stats.listing_s = time.perf_counter() - t0
    actor_cfg = resolve_tokenizer_config(cfg)
    # Sizes, description and fingerprint from the saved files: the driver never imports torch or loads the
    # model (that was ~3.8 s before the first decode task could start).
    spec = TokenizerSpec.load(actor_cfg, actor_cfg.dtype)
    decode_cfg = dataclasses.replace(cfg.decode, size=spec.image_size)
    targets = resolve_targets(cfg.targets, decode_cfg.size, opts)
    identity = dataset_identity(cfg.source, decode_cfg) | targets.identity
    tokenizer_desc = spec.describe()
    fingerprint = spec.fingerprint()
    grid = spec.num_key_tokens
    stats.setup_s = time.perf_counter() - t0 - stats.listing_s

    if cfg.sink.mode == "overwrite":
        delete_dataset(cfg.output, opts)
    shards = plan_shards(items, cfg.sink.rows_per_shard)
    run = {
        "schema_version": SCHEMA_VERSION,
        "fingerprint": fingerprint,
        "format": cfg.format,
        "tokenizer": tokenizer_desc,
        "vtok_version": __version__,
        "num_shards": len(shards),
        "num_inputs": len(items),
        "identity": identity,
        "targets": targets.shapes,
    }
    bind_run(cfg.output, run, opts)
    done = committed(cfg.output, opts)
    check_committed_inputs(cfg.output, done, [[i.sample_key for i in shard] for shard in shards])
    todo = [i for i in range(len(shards)) if i not in done]
    metadata = shard_metadata(fingerprint, tokenizer_desc, __version__, identity)

    rows = [item.to_row() | {"shard": index} for index in todo for item in shards[index]]
    written = 0
    if rows:
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        # vtok's own progress line instead of Ray Data's per-operator bars and log lines.
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows) // cfg.decode_stage.batch_size))
        ds = ds.map_batches(
            decode_batch,
            fn_kwargs={
                "cfg": decode_cfg,
                "storage_options": opts,
                "timeout_s": cfg.decode_stage.timeout_s if cfg.decode_stage.isolate else None,
                "targets": targets.plan,
            },
            batch_size=cfg.decode_stage.batch_size,
            num_cpus=cfg.decode_stage.num_cpus,
            memory=cfg.decode_stage.memory_mb * 1024 * 1024,
            batch_format="numpy",
        )
        ds = ds.map_batches(
            EncodeStage,
            fn_constructor_kwargs={"tokenizer_cfg": actor_cfg, "num_threads": int(max(1, cfg.encode.num_cpus)),
                                   "targets": targets.plan},
            batch_size=cfg.encode.batch_size,
            num_cpus=cfg.encode.num_cpus,
            num_gpus=cfg.encode.num_gpus,
            compute=ray.data.ActorPoolStrategy(size=cfg.encode.num_actors),
            batch_format="numpy",
        )
        writers: dict[int, ShardWriter] = {}
        pipeline_t0 = time.perf_counter()
        line = ProgressLine(len(rows), enabled=progress)
        line.update(0)
        bad = 0
        try:
            for done_clips, row in enumerate(ds.iter_rows(), start=1):
                bad += bool(row["error_reason"])
                line.update(done_clips, bad)
                shard = int(row["shard"])
                if shard not in writers:
                    writers[shard] = ShardWriter(
                        cfg.output, shard, [i.sample_key for i in shards[shard]], metadata, cfg.sink, opts,
                        cfg.format, attributes=any(i.attributes for i in shards[shard]),
                    )
                stats.decode_s.append(float(row["decode_s"]))
                stats.encode_s.append(float(row["encode_s"]))
                if not row["error_reason"]:
                    stats.frames_per_clip.append(len(from_npy(row["frame_indices"])))
                    if len(stats.key_frames) < REPORT_KEY_FRAMES and row.get("key_frame_thumb"):
                        label = row["caption"] or row["source_uri"]
                        stats.key_frames.append((str(label), from_npy(row["key_frame_thumb"])))
                stats.record_clip(time.perf_counter() - t0, done_clips)
                writers[shard].add(row)
                if writers[shard].complete:
                    writer = writers.pop(shard)
                    record = writer.commit()
                    stats.shard_bytes.append(record.bytes)
                    stats.write_s.append(writer.busy_s)
                    written += 1
        finally:
            line.close()
            for writer in writers.values():
                writer.abort()
        assert not writers, f"shards {sorted(writers)} received only part of their clips"
        stats.record_clip(time.perf_counter() - t0, len(rows), final=True)
        stats.pipeline_s = time.perf_counter() - pipeline_t0

    manifest = write_manifest(cfg.output, run, opts)
    wall = time.perf_counter() - t0
    records = committed(cfg.output, opts)
    clips_out = sum(r.rows for r in records.values())
    residual_mean, frame_mean = _token_means(manifest)
    return TokenizeSummary(
        output=cfg.output,
        fingerprint=fingerprint,
        videos_in=len(items),
        clips_out=clips_out,
        quarantined=manifest["quarantined"],
        errors=manifest["errors"],
        shards_written=written,
        shards_skipped=len(shards) - len(todo),
        key_tokens_per_clip=grid,
        mean_residual_tokens_per_clip=residual_mean * actor_cfg.residual_grid ** 2,
        mean_frame_tokens_per_clip=frame_mean * grid,
        wall_time_s=wall,
        videos_per_s=len(rows) / wall if wall > 0 else 0.0,
        skipped=listing.skipped,
        skipped_examples=listing.skipped_examples,
        manifest=manifest,
        stats=stats,
        residual_grid=actor_cfg.residual_grid,
    )


def check_quarantine(summary: TokenizeSummary, max_fraction: float | None = None) -> None:
    """Fail a finished run whose every input was quarantined, or more than `max_fraction` of them.

    Counted over the whole dataset (a resumed run answers for what the dataset holds). The shards stay
    committed: the error says what to look at, it does not undo the run.
    """
    total = summary.clips_out + summary.quarantined
    if total == 0:
        return
    fraction = summary.quarantined / total
    reasons = _counts_text(summary.errors)
    if summary.clips_out == 0:
        raise DataQualityError(
            f"output {summary.output}: every one of the {total} inputs was quarantined ({reasons}); "
            f"no tokens were written (see {summary.output}/quarantine and the report)"
        )
    if max_fraction is not None and fraction > max_fraction:
        raise DataQualityError(
            f"output {summary.output}: {summary.quarantined} of {total} inputs quarantined ({fraction:.1%}, {reasons}), "
            f"above --max-quarantined-fraction {max_fraction:g}; the committed shards are kept"
        )


def _split_long_videos(
    items: list[ClipItem], cfg: SourceConfig, decode_cfg: DecodeConfig, opts: dict[str, Any] | None
) -> list[ClipItem]:
    """Probe every video's duration in Ray tasks (headers only) and cut it into fixed-length clips.

    A video whose header cannot be read, or that is over a limit, stays one item: the decode stage
    quarantines it with the reason.
    """
    import ray

    def durations(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = []
        for uri, offset, size in zip(batch["read_uri"], batch["byte_offset"], batch["byte_size"]):
            try:
                byte_range = (int(offset), int(size)) if offset >= 0 else None
                out.append(probe(str(uri), opts, byte_range, cfg=decode_cfg).duration_s)
            except DecodeError:
                out.append(-1.0)
        return {"index": batch["index"], "duration_s": np.array(out, dtype=np.float64)}

    # Bad manifest rows are quarantined as they are: nothing to probe.
    rows = [item.to_row() | {"index": i} for i, item in enumerate(items) if not item.error_reason]
    found: dict[int, float] = {}
    if rows:
        ds = ray.data.from_items(rows).map_batches(durations, batch_size=16, batch_format="numpy")
        found = {int(r["index"]): float(r["duration_s"]) for r in ds.iter_rows()}
    clips: list[ClipItem] = []
    for i, item in enumerate(items):
        clips += [item] if found.get(i, -1.0) < 0 else split_into_clips(item, found[i], cfg)
    clips.sort(key=lambda c: c.sample_key)
    return clips[: cfg.limit] if cfg.limit else clips


def _token_means(manifest: dict[str, Any]) -> tuple[float, float]:
    """Mean residual count R and mean frame count T over the dataset, from the manifest's frame counts."""
    counts = {int(t): n for t, n in manifest["frame_counts"].items()}
    return mean_counts(counts, manifest["tokenizer"]["residual_stride"])
