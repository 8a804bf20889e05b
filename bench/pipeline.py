"""The tokenize pipeline (run_tokenize on a local Ray) vs a plain loop and vs a first Ray Data version.

    .venv/bin/python -m bench.pipeline [--quick] [--corpus textured|shapes] [--videos N] [--baseline-rev REV]
                                       [--only pipeline,before,loop,loop1,read_videos] [--set key=value] [--sweep]

Corpora: "textured" (default: 512 clips of 4 s, 640x360, 24 fps, moving texture at ~3 Mbit/s, keyframe
every 2 s: decode costs what real footage costs) or "shapes" (384 shapes-world videos, 640x360, 64
frames: flat colours decode ~10x cheaper, so per-clip overheads dominate). All contenders use the tiny
default encoder and decode.fps=4 / max_frames=16 (16 frames per clip):
  - pipeline: pipelines.tokenize.run_tokenize with jobs/configs/tokenize.yaml's values (as `vtok tokenize`
              runs) plus any --set overrides, on `ray.init(num_cpus=2)`, writing shards, quarantine and manifest;
  - before:   with --baseline-rev REV: the same job with the code and shipped defaults of git revision REV
              (checked out into a worktree; its own bench child runs there), for the before/after;
  - loop:     plain loop, default threads: one process, library defaults: list the clips, decode_clip +
              VTokTokenizer.encode one video at a time, write the same schema-v1 Parquet table with
              pyarrow (no Ray, no isolation); the loop the target is set against;
  - loop1:    plain loop, 1 thread: the same loop with one decoder thread and one torch thread, the thread
              settings of the pipeline's workers (a stronger baseline: what threads alone buy);
  - read_videos: what a Ray user writes first: ray.data.read_videos(paths, fps=4, resize=...) (one row per
              frame, decord decoding every frame), map_batches on an encoder actor computing each frame's
              pooled grid and mean, groupby(path).map_groups assembling each video's key tokens, residual
              features and frame tokens, write_parquet.
Every timed job runs in a fresh process (`python -m bench.pipeline --child SPEC`), as a user's job does:
it pays for its imports, model loads and worker start-up. ray.init is timed apart, so figures are given
with and without it. Also reported: CPU seconds of the job's whole process tree per video (wall time on
a shared machine measures a share of it; CPU time measures the work), the time to the first finished
clip and the rate after it (the pipeline's own timeline: the rate a long job runs at), and a check that
the contenders' tokens agree (loops and pipelines: bit-exact).
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    TreeCpu,
    cached_corpus,
    interleaved,
    log,
    median,
    parser,
    summary,
    table,
    write_results,
)

# --sweep: the shipped defaults with one setting at a time put back to its value before issue 6
# (decode.threads 0, decode_stage.num_cpus 1, decode_stage.batch_size 4), or isolation off: each one's share.
SWEEP: list[tuple[str, list[str]]] = [
    ("FFmpeg's decoder threads", ["decode.threads=0"]),
    ("1 CPU per decode task", ["decode_stage.num_cpus=1"]),
    ("4 clips per decode task", ["decode_stage.batch_size=4"]),
    ("decode not isolated", ["decode_stage.isolate=false"]),
]


def make_corpus(num_videos: int, width: int, height: int, num_frames: int, fps: float) -> str:
    """A cached shapes-world corpus; returns its manifest path."""
    from vtok.shapes import ShapesConfig, write_corpus

    name = f"shapes_{width}x{height}_{num_frames}f_{fps:g}fps_{num_videos}v"
    cfg = ShapesConfig(width=width, height=height, num_frames=num_frames, fps=fps)

    def fill(folder: Path) -> None:
        log(f"generating {num_videos} shapes-world videos for {name} (cached)")
        write_corpus(str(folder), num_videos, seed=0, cfg=cfg, static_every=8)

    return cached_corpus(name, fill)


def apply_overrides(cfg: Any, overrides: list[str]) -> Any:
    """`a.b=value` strings applied to nested dataclasses (values parsed as Python literals, else str)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not key=value")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = {"null": None, "true": True, "false": False}.get(raw, raw)
        cfg = _set(cfg, key.split("."), value)
    return cfg


def _set(obj: Any, path: list[str], value: Any) -> Any:
    if not any(f.name == path[0] for f in dataclasses.fields(obj)):
        raise ValueError(f"unknown config key {path[0]!r} in {type(obj).__name__}")
    if len(path) == 1:
        return dataclasses.replace(obj, **{path[0]: value})
    return dataclasses.replace(obj, **{path[0]: _set(getattr(obj, path[0]), path[1:], value)})


# ---------------------------------------------------------------------------------------------------------
# Contender: the vtok pipeline.


def vtok_pipeline(cfg: Any, out: Path) -> Any:
    from pipelines.tokenize.pipeline import run_tokenize

    return run_tokenize(dataclasses.replace(cfg, output=str(out)), progress=False)


# ---------------------------------------------------------------------------------------------------------
# Contender: the plain single-process loop.


def plain_loop(cfg: Any, out: Path) -> int:
    """Decode and encode one clip at a time in this process; write the shard table with pyarrow."""
    import pyarrow.parquet as pq

    from pipelines.tokenize.pipeline import resolve_tokenizer_config
    from pipelines.tokenize.sink import build_token_table, tensor_encodings
    from pipelines.tokenize.sources import list_clips
    from schemas.token_shard import shard_metadata
    from vtok import __version__
    from vtok.tokenizer import VTokTokenizer
    from vtok.video import decode_clip

    tokenizer = VTokTokenizer(dataclasses.replace(resolve_tokenizer_config(cfg), device="cpu"))
    decode_cfg = dataclasses.replace(cfg.decode, size=tokenizer.image_size)
    metadata = shard_metadata(tokenizer.fingerprint, tokenizer.describe(), __version__)
    records: list[dict[str, Any]] = []
    for item in list_clips(cfg.input, cfg.source):
        clip = decode_clip(item.source_uri, decode_cfg)
        tokens = tokenizer.encode([clip.frames])[0]
        records.append(
            {
                "sample_key": item.sample_key,
                "source_uri": item.source_uri,
                "caption": item.caption,
                "clip_start_s": clip.clip_start_s,
                "clip_end_s": clip.clip_end_s,
                "source_fps": clip.info.source_fps,
                "height": clip.info.height,
                "width": clip.info.width,
                "attributes": item.attributes,
                "frame_indices": clip.frame_indices.tolist(),
                "key_tokens": tokens.key_tokens,
                "residual_features": tokens.residual_features,
                "residual_tokens": tokens.residual_tokens,
                "frame_tokens": tokens.frame_tokens,
            }
        )
    out.mkdir(parents=True, exist_ok=True)
    rows = cfg.sink.rows_per_shard
    for shard, start in enumerate(range(0, len(records), rows)):
        table_ = build_token_table(records[start : start + rows], metadata)
        pq.write_table(table_, out / f"part-{shard:05d}.parquet", compression=cfg.sink.compression,
                       **tensor_encodings(table_.schema))
    return len(records)


# ---------------------------------------------------------------------------------------------------------
# Contender: ray.data.read_videos, frames as rows, grouped back into videos.


class _EncodeFrames:
    """Encoder actor of the read_videos pipeline: per-frame pooled grid [S, D] and mean [D]."""

    def __init__(self, tokenizer_cfg: Any, size: int, num_threads: int) -> None:
        import torch

        from vtok.tokenizer import VTokTokenizer

        torch.set_num_threads(num_threads)
        self.tokenizer = VTokTokenizer(tokenizer_cfg)
        self.size = size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        frames = batch["frame"]
        # read_videos resizes without keeping a square: crop the centre as decode_clip does.
        top = (frames.shape[1] - self.size) // 2
        left = (frames.shape[2] - self.size) // 2
        crop = np.ascontiguousarray(frames[:, top : top + self.size, left : left + self.size])
        # The tokenizer's per-frame features (grid-pooled and mean-pooled patches), the quantities
        # VTokTokenizer.encode combines per clip; computing them per frame is what a frame-row
        # dataset invites.
        grid, mean = self.tokenizer._features(crop)
        return {
            "path": batch["path"],
            "frame_index": batch["frame_index"],
            "grid": grid.numpy(),
            "mean": mean.numpy(),
        }


def _assemble_video(group: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One video's frames (any order) -> its row of VTok tokens (residual stride 1, as the default)."""
    order = np.argsort(group["frame_index"])
    grid = np.stack(group["grid"][order])  # [T, S, D]
    mean = np.stack(group["mean"][order])  # [T, D]
    return {
        "path": group["path"][:1],
        "frame_indices": group["frame_index"][order][None],
        "key_tokens": grid[:1],
        "residual_features": (mean[1:] - mean[:1])[None],
        "frame_tokens": grid[None],
    }


def read_videos_pipeline(cfg: Any, out: Path, batch_frames: int = 128) -> int:
    import json

    import ray

    from pipelines.tokenize.pipeline import resolve_tokenizer_config
    from pipelines.tokenize.sources import list_clips
    from vtok.video import probe
    from vtok.video.sampling import _resized_hw

    items = list_clips(cfg.input, cfg.source)
    paths = [item.source_uri for item in items]
    tokenizer_cfg = resolve_tokenizer_config(cfg)
    # The model's input size is in its config; read it without loading weights here.
    size = int(json.loads(_encoder_config(tokenizer_cfg).read_text())["image_size"])
    info = probe(paths[0])
    resize = _resized_hw(info.height, info.width, size)
    assert cfg.decode.fps is not None and float(cfg.decode.fps).is_integer(), "read_videos takes an integer fps"
    ds = ray.data.read_videos(paths, include_paths=True, fps=int(cfg.decode.fps), resize=resize)
    ds = ds.map_batches(
        _EncodeFrames,
        fn_constructor_kwargs={"tokenizer_cfg": tokenizer_cfg, "size": size, "num_threads": 1},
        batch_size=batch_frames,
        compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=1,
        batch_format="numpy",
    )
    ds = ds.groupby("path").map_groups(_assemble_video, batch_format="numpy")
    ds.write_parquet(str(out))
    return len(paths)


def _encoder_config(tokenizer_cfg: Any) -> Path:
    from vtok.vision_models import ensure_tiny_clip

    return Path(tokenizer_cfg.encoder or ensure_tiny_clip()) / "config.json"


# ---------------------------------------------------------------------------------------------------------
# Output checks: the contenders must produce the same tokens.


def _load_tokens(folder: Path, key: str) -> dict[str, dict[str, np.ndarray]]:
    """{source path: {column: tensor}} from every Parquet file under folder."""
    import pyarrow.parquet as pq

    out: dict[str, dict[str, np.ndarray]] = {}
    for f in sorted(folder.rglob("*.parquet")):
        if "quarantine" in f.parts:
            continue
        t = pq.read_table(f).to_pylist()
        for row in t:
            out[str(row[key])] = {
                c: np.array(row[c], dtype=np.float32)
                for c in ("key_tokens", "residual_features", "frame_tokens")
                if row.get(c) is not None
            }
    return out


def compare_outputs(reference: Path, other: Path, other_key: str = "source_uri") -> dict[str, Any]:
    ref = _load_tokens(reference, "source_uri")
    got = _load_tokens(other, other_key)
    worst = {c: 0.0 for c in ("key_tokens", "residual_features", "frame_tokens")}
    scale = {c: 0.0 for c in worst}
    for path, tensors in ref.items():
        for c, v in tensors.items():
            w = got[path][c].reshape(v.shape)
            worst[c] = max(worst[c], float(np.abs(w - v).max()))
            scale[c] = max(scale[c], float(np.abs(v).max()))
    return {
        "videos": len(ref),
        "matched": len(set(ref) & set(got)),
        "max_abs_diff": worst,
        "max_abs_value": scale,
    }


# ---------------------------------------------------------------------------------------------------------


def _steady_rate(summary: Any) -> tuple[float | None, float | None]:
    """(seconds to the first finished clip, clips/s after it) from a run's throughput timeline."""
    timeline = summary.stats.timeline
    if not timeline:
        return None, None
    t_first, n_first = timeline[0]
    t_last, n_last = timeline[-1]
    rate = (n_last - n_first) / (t_last - t_first) if t_last > t_first else None
    return t_first, rate


CORPORA: dict[str, dict[str, Any]] = {
    # Real-footage-like decode cost: 4 s clips of moving texture at ~3 Mbit/s, keyframe every 2 s; 24 fps,
    # so decode.fps=4 samples every 6th frame and read_videos(fps=4) picks the very same frames.
    "textured": {"videos": 512, "width": 640, "height": 360, "seconds": 4.0, "fps": 24, "gop_s": 2.0},
    # The shapes world: flat colours that compress ~50x smaller than footage, so decode is cheap and
    # per-clip overheads dominate.
    "shapes": {"videos": 384, "width": 640, "height": 360, "frames": 64, "fps": 16.0},
}
# Contenders by short name (for --only) and the name they are reported under.
CONTENDERS: dict[str, str] = {
    "pipeline": "pipeline",
    "before": "pipeline, before",
    "loop": "plain loop, default threads",
    "loop1": "plain loop, 1 thread",
    "read_videos": "read_videos",
}


def corpus_manifest(kind: str, num_videos: int) -> str:
    from bench.media import textured_corpus

    c = CORPORA[kind]
    if kind == "textured":
        return textured_corpus(num_videos, c["seconds"], c["width"], c["height"], c["fps"], c["gop_s"])
    return make_corpus(num_videos, c["width"], c["height"], c["frames"], c["fps"])


# ---------------------------------------------------------------------------------------------------------
# Each timed job runs in a fresh process, as a user's job would: it pays for its imports, model loads and
# (for Ray) ray.init and worker start-up; ray.init is timed apart so figures come with and without it.


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one job described by `spec`; returns its internal timings."""
    t0 = time.perf_counter()
    kind = spec["kind"]
    report: dict[str, Any] = {}
    if kind in ("pipeline", "read_videos"):
        os.environ["RAY_AUTH_MODE"] = "disabled"
        import ray

        from pipelines.tokenize.pipeline import TokenizeConfig, run_tokenize  # noqa: F401 - timed as imports

        report["import_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=spec["ray_temp"], log_to_driver=False)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        report["ray_init_s"] = time.perf_counter() - t1
    else:
        import torch

        from pipelines.tokenize.pipeline import TokenizeConfig

        report["import_s"] = time.perf_counter() - t0
        report["ray_init_s"] = 0.0
        if spec.get("torch_threads"):
            torch.set_num_threads(spec["torch_threads"])
    if kind == "pipeline":
        from jobs.tokenize import load_tokenize_config

        cfg = load_tokenize_config([f"input={spec['manifest']}", f"output={spec['out']}", *spec["overrides"]])
    else:
        cfg = apply_overrides(TokenizeConfig(input=spec["manifest"], output=spec["out"]), spec["overrides"])
    t2 = time.perf_counter()
    if kind == "pipeline":
        summary_ = vtok_pipeline(cfg, Path(spec["out"]))
        report["first_clip_s"], report["steady_videos_per_s"] = _steady_rate(summary_)
        # The driver's own set-up before the dataset starts (listing; loading the model for the fingerprint).
        report["driver_setup_s"] = summary_.stats.listing_s + summary_.stats.setup_s
    elif kind == "read_videos":
        read_videos_pipeline(cfg, Path(spec["out"]))
    else:
        plain_loop(cfg, Path(spec["out"]))
    report["run_s"] = time.perf_counter() - t2
    report["job_s"] = time.perf_counter() - t0
    return report


def checkout(rev: str) -> Path:
    """A detached git worktree of `rev` (made once, under /tmp), for the 'before' contender."""
    sha = subprocess.run(["git", "rev-parse", "--short", rev], check=True, capture_output=True, text=True).stdout.strip()
    tree = Path(tempfile.gettempdir()) / f"vtok-bench-rev-{sha}"
    if not tree.is_dir():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), sha], check=True, capture_output=True)
    return tree


def run_job(spec: dict[str, Any], tree: Path | None = None) -> dict[str, Any]:
    """Run `spec` in a fresh `python -m bench.pipeline --child` process; add its tree's CPU seconds.

    With `tree` (another checkout), the child and the Ray workers it starts import that tree's code.
    """
    cmd = [sys.executable, "-m", "bench.pipeline", "--child", json.dumps(spec)]
    env = os.environ | ({"PYTHONPATH": str(tree)} if tree is not None else {})
    load = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tree, env=env)
    cpu = TreeCpu(proc.pid)
    out, err = proc.communicate()
    wall = time.perf_counter() - started
    cpu_s = cpu.total()
    cpu.close()
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"job {spec['name']} failed ({proc.returncode}):\n{err[-3000:]}")
    return json.loads(lines[-1]) | {"process_s": wall, "cpu_s": cpu_s, "load_1m": load}


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(child(json.loads(sys.argv[2]))), flush=True)
        return
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--corpus", choices=sorted(CORPORA), default="textured")
    p.add_argument("--videos", type=int, default=None, help="corpus size (default per corpus; 8 with --quick)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="pipeline config key=value on top of the shipped defaults (the 'pipeline' contender)")
    p.add_argument("--baseline-rev", default=None,
                   help="git revision whose code and shipped defaults the 'before' contender runs")
    p.add_argument("--sweep", action="store_true", help="also time the pipeline configurations of SWEEP")
    p.add_argument("--only", default=",".join(CONTENDERS),
                   help=f"comma-separated contenders to run, of {','.join(CONTENDERS)} (default: all)")
    args = p.parse_args()
    only = {CONTENDERS[k] for k in args.only.split(",")}
    if args.baseline_rev is None:
        only.discard(CONTENDERS["before"])
    kind = "shapes" if args.quick else args.corpus
    num_videos = args.videos or (4 if args.quick else CORPORA[kind]["videos"])
    repeats = args.repeats or (1 if args.quick else 3)

    from vtok.vision_models import ensure_tiny_clip

    manifest = corpus_manifest(kind, num_videos)
    ensure_tiny_clip()  # saved once, outside any timed region
    # Warm the page cache for every contender alike: the first job would otherwise read from disk.
    for f in Path(manifest).parent.rglob("*.mp4"):
        f.read_bytes()
    work = Path(tempfile.mkdtemp(prefix="vtok-bench-pipeline-", dir="/tmp"))
    base = ["sink.mode='overwrite'"]
    baseline_tree = checkout(args.baseline_rev) if args.baseline_rev else None
    all_specs: dict[str, dict[str, Any]] = {
        "pipeline": {"kind": "pipeline", "overrides": base + args.overrides},
        "pipeline, before": {"kind": "pipeline", "overrides": base, "tree": baseline_tree},
        # The loop as written with library defaults: FFmpeg's and torch's own thread counts.
        "plain loop, default threads": {"kind": "loop", "overrides": base, "torch_threads": None},
        # The strong baseline: one process, one clip at a time, with the thread settings of the
        # pipeline's workers (one decoder thread, one torch thread).
        "plain loop, 1 thread": {"kind": "loop", "overrides": base + ["decode.threads=1"], "torch_threads": 1},
        "read_videos": {"kind": "read_videos", "overrides": base},
    }
    specs = {name: spec for name, spec in all_specs.items() if name in only}
    if args.sweep:
        for name, overrides in SWEEP:
            specs[f"pipeline: {name}"] = {"kind": "pipeline", "overrides": base + overrides}
    counts = dict.fromkeys(specs, num_videos)

    reports: dict[str, list[dict[str, Any]]] = {name: [] for name in specs}
    last_out: dict[str, Path] = {}

    def job(name: str) -> Any:
        out = work / f"{len(reports[name])}-{abs(hash(name))}"
        spec = {k: v for k, v in specs[name].items() if k != "tree"} | {
            "name": name, "manifest": manifest, "out": str(out),
            "ray_temp": tempfile.mkdtemp(prefix="vtok-bench-ray-", dir="/tmp"),
        }
        try:
            report = run_job(spec, specs[name].get("tree"))
        finally:
            shutil.rmtree(spec["ray_temp"], ignore_errors=True)
        if name in last_out:
            shutil.rmtree(last_out[name], ignore_errors=True)
        last_out[name] = out
        reports[name].append(report)
        log(f"{name}: job {report['job_s']:.1f} s (imports {report['import_s']:.1f}, ray.init "
            f"{report['ray_init_s']:.1f}, run {report['run_s']:.1f}), {report['cpu_s']:.1f} CPU-s, "
            f"load {report['load_1m']:.1f}"
            + (f", first clip {report['first_clip_s']:.1f} s, then {report['steady_videos_per_s']:.1f}/s"
               if report.get("first_clip_s") is not None and report.get("steady_videos_per_s") else ""))
        return report

    interleaved({name: (lambda n=name: job(n)) for name in specs}, repeats, warmup=False)

    def med(name: str, key: str) -> float:
        return median([float(r[key]) for r in reports[name]])

    def vps(name: str, key: str) -> float:
        return counts[name] / med(name, key)

    # The headline measure: the job without Ray start-up (imports, models, workers and the run itself).
    for name in specs:
        for r in reports[name]:
            r["job_excl_ray_init_s"] = r["job_s"] - r["ray_init_s"]
    def maybe(name: str, key: str) -> float | None:
        return vps(name, key) if name in specs else None

    loop1 = maybe("plain loop, 1 thread", "job_s")
    loopd = maybe("plain loop, default threads", "job_s")
    rv = maybe("read_videos", "job_excl_ray_init_s")
    rows: list[list[Any]] = []
    results: dict[str, Any] = {}
    for name in specs:
        excl, incl, run = (vps(name, k) for k in ("job_excl_ray_init_s", "job_s", "run_s"))
        firsts = [r["first_clip_s"] for r in reports[name] if r.get("first_clip_s") is not None]
        rates = [r["steady_videos_per_s"] for r in reports[name] if r.get("steady_videos_per_s")]
        results[name] = {
            "videos": counts[name],
            "job_excl_ray_init_s": summary([r["job_excl_ray_init_s"] for r in reports[name]]),
            "job_s": summary([r["job_s"] for r in reports[name]]),
            "run_s": summary([r["run_s"] for r in reports[name]]),
            "ray_init_s": summary([r["ray_init_s"] for r in reports[name]]),
            "import_s": summary([r["import_s"] for r in reports[name]]),
            "cpu_s": summary([r["cpu_s"] for r in reports[name]]),
            "videos_per_s": excl,
            "videos_per_s_with_ray_init": incl,
            "videos_per_s_run_only": run,
            "ratio_vs_loop_default_threads": None if loopd is None else excl / loopd,
            "ratio_vs_loop_default_threads_with_ray_init": None if loopd is None else incl / loopd,
            "ratio_vs_loop_1_thread": None if loop1 is None else excl / loop1,
            "ratio_vs_loop_1_thread_with_ray_init": None if loop1 is None else incl / loop1,
            "ratio_vs_read_videos": None if rv is None else excl / rv,
            "cpu_ms_per_video": 1000 * med(name, "cpu_s") / counts[name],
            "first_clip_s": median(firsts) if firsts else None,
            "steady_videos_per_s": median(rates) if rates else None,
            "load_1m": [r["load_1m"] for r in reports[name]],
            "overrides": specs[name]["overrides"],
        }
        r = results[name]
        rows.append([name, counts[name], med(name, "job_excl_ray_init_s"), excl, incl,
                     *(r[k] or "" for k in ("ratio_vs_loop_default_threads", "ratio_vs_loop_default_threads_with_ray_init",
                                            "ratio_vs_loop_1_thread", "ratio_vs_read_videos")),
                     r["cpu_ms_per_video"], r["first_clip_s"] or "", r["steady_videos_per_s"] or ""])

    # Every contender's tokens against the first pipeline's (loops and pipelines: bit-exact expected).
    checks: dict[str, Any] = {}
    reference = next((n for n in specs if specs[n]["kind"] == "pipeline"), None)
    for name in specs:
        if reference is not None and name != reference:
            key = "path" if specs[name]["kind"] == "read_videos" else "source_uri"
            checks[f"{name} vs {reference}"] = compare_outputs(last_out[reference], last_out[name], other_key=key)
    headers = ["contender", "videos", "job s (excl. ray.init)", "videos/s", "videos/s incl. ray.init", "x loop",
               "x loop incl. ray.init", "x loop 1T", "x read_videos", "CPU ms/video", "first clip s",
               "steady videos/s"]
    print(table(headers, rows))
    inits = [r["ray_init_s"] for n in specs for r in reports[n] if r["ray_init_s"]]
    print(f"\nray.init: median {median(inits):.2f} s per job (not in 'job s')")
    for name, check in checks.items():
        print(f"{name}: {check['matched']}/{check['videos']} videos, max |diff| {check['max_abs_diff']}")
    out = write_results(
        "pipeline",
        {
            "params": {"corpus": kind, "corpus_params": CORPORA[kind], "videos": num_videos, "repeats": repeats,
                       "quick": args.quick, "overrides": args.overrides, "baseline_rev": args.baseline_rev},
            "results": results,
            "runs": reports,
            "output_checks": checks,
        },
        args.out,
    )
    shutil.rmtree(work, ignore_errors=True)
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
