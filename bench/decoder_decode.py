"""`vtok decode` throughput vs a plain in-process loop: videos/s, time to the first mp4, at 10 and 25 steps.

Inputs, cached under $VTOK_BENCH_CACHE/decoder: a shapes-world corpus (64 px, 8 frames at 8 fps, one object)
tokenized by the real pipeline with tests/conftest.py training_tokens' settings (run_tokenize, decode.fps 8,
max_frames 8, targets.lowres_side), and an untrained decoder of the tests' DiT, saved as the training job
saves a checkpoint (DecoderTask.checkpoint_payload + save_checkpoint): sampling costs the same whatever
the weights.

Contenders, each a fresh process timed from its launch (imports, model load, Ray start-up included):
  - vtok decode: the CLI (jobs/decode.py -> pipelines/decode/decode.py: Ray Data read, decoder actors, mp4
    write tasks) with its defaults (batch_size 8, one actor of 1 CPU), on a local Ray of this machine's CPUs;
  - loop: the same per-clip work in one process without Ray: read the shards, Reconstructor.frames_of (one
    sample() per clip, noise seeded by the clip's key), write_videos; one torch thread, as the actor has;
  - loop, batched: one sample() per 8 clips (one noise tensor per batch): what batching the actor would buy
    (at 10 steps only).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import TreeCpu, cache_dir, cached_corpus, log, median, table

KINDS = ("vtok decode", "loop", "loop, batched")
BATCH = 8
"""Clips per decoder call: `vtok decode`'s batch_size default."""
FPS = 8.0


def _corpus(clips: int) -> str:
    from vtok.shapes import ShapesConfig, write_corpus

    cfg = ShapesConfig(width=64, height=64, num_frames=8, fps=FPS, min_objects=1, max_objects=1)

    def fill(folder: Path) -> None:
        log(f"generating {clips} shapes-world videos for the decode benchmark (cached)")
        write_corpus(str(folder), clips, seed=21, cfg=cfg)

    return cached_corpus(f"decoder_shapes_64px_8f_{clips}v", fill)


def _rows_in(tokens: Path) -> int:
    from vtok.dataset import read_manifest

    try:
        return int(read_manifest(str(tokens))["rows"])
    except (FileNotFoundError, KeyError, ValueError):
        return 0


def prepare(clips: int, side: int) -> tuple[str, str]:
    """(token dataset, decoder run) for the decode contenders, made once by a child process and cached."""
    manifest = _corpus(clips)
    root = cache_dir("decoder")
    tokens, run = root / f"tokens_{clips}v_side{side}", root / f"untrained_{clips}v_side{side}"
    if _rows_in(tokens) != clips or not (run / "checkpoints").is_dir():
        log(f"tokenizing {clips} clips (targets.lowres_side={side}) and saving an untrained decoder (cached)")
        spec = {"kind": "prepare", "manifest": manifest, "tokens": str(tokens), "run": str(run), "side": side}
        _child(spec)
    if _rows_in(tokens) != clips:
        raise SystemExit(f"bench.decoder: {tokens} holds {_rows_in(tokens)} clips, expected {clips}")
    return str(tokens), str(run)


def _prepare(spec: dict[str, Any]) -> dict[str, Any]:
    """Child: tokenize the corpus on a local Ray (if not done), then save the untrained decoder checkpoint."""
    from jobs.ray_setup import RayConfig, start_ray
    from pipelines.tokenize.clips import SourceConfig
    from pipelines.tokenize.pipeline import TokenizeConfig, run_tokenize
    from pipelines.tokenize.sink import SinkConfig
    from pipelines.tokenize.targets import TargetsConfig
    from vtok.video import DecodeConfig

    tokens = spec["tokens"]
    start_ray(RayConfig())
    run_tokenize(TokenizeConfig(input=spec["manifest"], output=tokens,
                                decode=DecodeConfig(fps=FPS, max_frames=8), source=SourceConfig(),
                                sink=SinkConfig(rows_per_shard=32, mode="overwrite"),
                                targets=TargetsConfig(lowres_side=spec["side"])), progress=False)
    _save_untrained(tokens, spec["run"])
    return {"tokens": tokens, "run": spec["run"]}


def _save_untrained(tokens: str, run: str) -> None:
    from bench.decoder import TEST_DIT
    from pipelines.train.data import check_manifest
    from pipelines.train.decoder import DecoderTask
    from pipelines.train.decoder_checks import resolve_decoder
    from vtok.models.decoder import VTokDecoder
    from vtok.models.decoder_config import DecoderConfig, DiTSizes
    from vtok.training.checkpoint import save_checkpoint

    manifest = check_manifest(tokens, None)
    base = DecoderConfig(dit=DiTSizes(**TEST_DIT), shift=3.0, logit_mean=0.5)
    cfg = resolve_decoder(base, manifest, tokens)
    task = DecoderTask(model=cfg, data_record={}, config_record={})
    tensors, json_files, dirs, files = task.checkpoint_payload(VTokDecoder(cfg))
    shutil.rmtree(run, ignore_errors=True)
    save_checkpoint(run, 1, tensors=tensors, json_files=json_files, dirs=dirs, files=files)
    if task._scratch is not None:
        shutil.rmtree(task._scratch, ignore_errors=True)


def _loop(spec: dict[str, Any]) -> dict[str, Any]:
    """Child: every clip of the dataset through the decoder and into an mp4, in this process, no Ray."""
    import numpy as np
    import torch

    from pipelines.decode.mp4 import write_videos
    from pipelines.decode.reconstruct import Reconstructor, clip_seed
    from pipelines.train.decoder_checks import token_columns
    from vtok.dataset import read_shard_samples, shard_uris
    from vtok.training.batching import collate_tokens
    from vtok.training.checkpoint_ref import resolve_checkpoint

    rec = Reconstructor(resolve_checkpoint(spec["run"], "decoder"), steps=spec["steps"], num_threads=1)
    columns = token_columns(rec.cfg)
    names = ["sample_key", "source_uri", "caption", "frame_indices", *columns]
    videos = 0
    for uri in shard_uris(spec["data"]):
        rows = read_shard_samples(uri)
        for i in range(0, len(rows), BATCH):
            batch: dict[str, Any] = {k: [r.get(k) for r in rows[i:i + BATCH]] for k in names}
            if spec["batched"]:
                gen = torch.Generator().manual_seed(clip_seed(0, batch["sample_key"][0]))
                with torch.inference_mode():
                    frames = rec.model.sample(collate_tokens(batch, columns=columns), steps=spec["steps"],
                                              generator=gen)
                batch["frames"] = list(frames.numpy())
            else:
                batch["frames"] = rec.frames_of(batch)
            written = write_videos(batch, spec["out"], FPS)
            videos += len(written["path"])
            assert all(np.asarray(written["frames"]) == 8), written["frames"]
    return {"videos": videos}


def child_main(spec: dict[str, Any]) -> dict[str, Any]:
    """What `python -m bench.decoder --child JSON` runs: prepare or one loop contender."""
    return _prepare(spec) if spec["kind"] == "prepare" else _loop(spec)


def _run(cmd: list[str], what: str) -> tuple[str, float]:
    """(stdout, CPU seconds of the process and all its descendants: Ray's workers too) of one command."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cpu = TreeCpu(proc.pid)
    out, err = proc.communicate()
    cpu_s = cpu.total()
    cpu.close()
    if proc.returncode != 0:
        raise SystemExit(f"bench.decoder: {what} failed ({proc.returncode}):\n{err[-3000:]}")
    return out, cpu_s


def _child(spec: dict[str, Any]) -> tuple[str, float]:
    return _run([sys.executable, "-m", "bench.decoder", "--child", json.dumps(spec)], f"child {spec['kind']}")


def run_contender(kind: str, steps: int, data: str, run: str, out: Path, clips: int) -> dict[str, Any]:
    """One timed run: wall seconds from launch to exit and to the first and last mp4, the job's own seconds,
    CPU seconds."""
    launched = time.time()
    if kind == "vtok decode":
        vtok = str(Path(sys.executable).with_name("vtok"))
        cmd = [vtok, "decode", f"data={data}", f"decoder={run}", f"out={out}", f"steps={steps}"]
        stdout, cpu_s = _run(cmd, "vtok decode")
        found = re.search(r"wrote (\d+) videos .* in ([\d.]+) s", stdout)
        assert found is not None and int(found.group(1)) == clips, stdout
        job_s: float | None = float(found.group(2))
    else:
        _, cpu_s = _child({"kind": "loop", "data": data, "run": run, "out": str(out), "steps": steps,
                           "batched": kind == "loop, batched"})
        job_s = None
    wall = time.time() - launched
    mtimes = sorted(p.stat().st_mtime for p in out.glob("*.mp4"))
    if len(mtimes) != clips:
        raise SystemExit(f"bench.decoder: {kind} wrote {len(mtimes)} mp4s into {out}, expected {clips}")
    return {"kind": kind, "steps": steps, "videos": clips, "wall_s": wall, "job_s": job_s, "cpu_s": cpu_s,
            "first_mp4_s": mtimes[0] - launched, "last_mp4_s": mtimes[-1] - launched,
            "videos_per_s": clips / wall,
            # After the first video: the rate once start-up is paid.
            "steady_videos_per_s": (clips - 1) / (mtimes[-1] - mtimes[0]) if mtimes[-1] > mtimes[0] else None}


def measure_decode(args: Any) -> dict[str, Any]:
    """Every decode contender, rounds interleaved; the median round of each (by wall time)."""
    import os

    started = time.perf_counter()
    data, run = prepare(args.decode_clips, args.side)
    # Batching is shown at 10 steps only: per clip it saves the same share at any step count.
    contenders = [(kind, k) for k in ((10,) if args.quick else (10, 25)) for kind in KINDS
                  if k == 10 or kind != "loop, batched"]
    rounds = 1 if args.quick else args.rounds
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {c: [] for c in contenders}
    work = Path(tempfile.mkdtemp(prefix="vtok-bench-decoder-"))
    try:
        for r in range(rounds):
            for kind, k in contenders[r % len(contenders):] + contenders[: r % len(contenders)]:
                log(f"decode round {r + 1}/{rounds}: {kind}, {k} steps")
                out = work / f"{kind.replace(', ', '_').replace(' ', '_')}_{k}_{r}"
                load = os.getloadavg()[0]
                runs[(kind, k)].append({**run_contender(kind, k, data, run, out, args.decode_clips),
                                        "load_1min": round(load, 2)})
                shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results = []
    for c in contenders:
        mid = sorted(runs[c], key=lambda x: x["wall_s"])[len(runs[c]) // 2]
        results.append({**mid, "rounds": runs[c], "wall_s_median": median([x["wall_s"] for x in runs[c]])})
    return {"data": data, "checkpoint": run, "clips": args.decode_clips, "results": results,
            "seconds": time.perf_counter() - started}


def decode_rows(decode: dict[str, Any]) -> str:
    """The throughput table, each row's videos/s against the plain loop's at the same steps."""
    res = decode["results"]
    rows = []
    for r in res:
        loop = next(x for x in res if x["steps"] == r["steps"] and x["kind"] == "loop")
        rows.append([r["kind"], r["steps"], r["videos"], f"{r['wall_s']:.1f}",
                     "n/a" if r["job_s"] is None else f"{r['job_s']:.1f}", f"{r['first_mp4_s']:.1f}",
                     f"{r['last_mp4_s']:.1f}", f"{r['videos_per_s']:.2f}", f"{r['cpu_s']:.1f}",
                     f"{r['videos_per_s'] / loop['videos_per_s']:.2f}x",
                     f"{r['cpu_s'] / loop['cpu_s']:.2f}x"])
    return table(["contender", "steps", "videos", "wall s", "job s", "first mp4 s", "last mp4 s", "videos/s",
                  "CPU s", "videos/s vs loop", "CPU s vs loop"], rows)
