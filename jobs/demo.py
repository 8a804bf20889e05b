"""`vtok demo`: the whole loop on this machine, in one process and one local Ray.

    1 synthesise   a training shapes world and a held-out one (another generator seed, other videos)
    2 tokenize     both, with the same tokenizer (frame tokens and the decoder's 16 px frames stored too)
    3 train MLLM   on VTok tokens (S + R per clip)
    4 train MLLM   the frame-sampling baseline at VTok's token budget (K frames, K x S <= S + R)
    5 train        the decoder on VTok tokens
    6 evaluate     TV-Align (understanding, generation, reconstruction) and VBench on the held-out world, the
                   baseline's understanding beside it
    7 page         OUT/index.html: every report linked, the TV-Align table

Each stage calls the job function its `vtok` command calls (jobs.tokenize.run, jobs.train.run_mllm /
run_decoder, jobs.eval.run_eval_job) with the overrides a user would type; DemoSize holds the sizes. The world
and the training settings are the tests' and the fidelity study's (tests/conftest.py, bench/fidelity.py): one
object per clip, 64 px, 8 frames, so the MLLM learns size and colour in a few hundred steps on 2 CPUs.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from vtok.errors import InputError

T = TypeVar("T")


@dataclass(frozen=True)
class DemoSize:
    """How much work each stage does."""

    train_videos: int
    """Clips of the training world."""
    heldout_videos: int
    """Clips of the held-out world (all evaluated)."""
    mllm_steps: int
    """Optimiser steps of each MLLM."""
    decoder_steps: int
    """Optimiser steps of the decoder."""
    sample_steps: int
    """The decoder's Euler steps when the evaluation samples."""


SIZES: dict[str, DemoSize] = {
    # The fidelity study's full size: in 280 steps the MLLM reads size at ~94% (chance 1/2) and colour at ~48%
    # (chance 1/6); at the tests' 300 decoder steps every reconstruction was noise to the judge, at 600 not all.
    "full": DemoSize(train_videos=160, heldout_videos=64, mllm_steps=280, decoder_steps=600, sample_steps=20),
    "quick": DemoSize(train_videos=32, heldout_videos=8, mllm_steps=20, decoder_steps=20, sample_steps=4),
}
WORLD: dict[str, Any] = dict(width=64, height=64, num_frames=8, fps=8.0, min_objects=1, max_objects=1)
"""The shapes world of the tests' trained models: one object per clip, 64 x 64 px, 8 frames at 8 fps."""
TOKENIZE_ARGS = ["decode.fps=8.0", "decode.max_frames=8", "targets.lowres_side=16", "sink.rows_per_shard=64",
                 "sink.mode=overwrite"]
"""Every frame of the 8 sampled, and the decoder's target (16 px frames), as the tests' token sets."""
MLLM_ARGS = ["scaling.num_workers=1", "scaling.cpus_per_worker=1", "train.batch_size=16", "train.lr=2e-3",
             "train.warmup_steps=0", "train.grad_clip=0", "model.llm_mode=full", "checkpoint.keep_last=1"]
"""The tests' trained VTok MLLM (vtok_run): the built-in tiny Qwen2 trained in full on one worker of one CPU."""
DECODER_ARGS = ["scaling.num_workers=1", "scaling.cpus_per_worker=1", "train.batch_size=16", "train.lr=5e-3",
                "train.grad_clip=0", "model.dit.heads=4", "model.dit.head_dim=12", "model.dit.ffn_dim=128",
                "model.shift=3.0", "model.logit_mean=0.5", "samples.guidance=2.0", "samples.steps=10",
                "samples.clips=3", "samples.check_clips=16", "checkpoint.keep_last=1"]
"""The decoder tests' model and optimiser (tests/conftest.py DECODER_ARGS), sampling as the evaluation does."""
GUIDANCE = 2.0
"""The evaluation's classifier-free guidance (bench/fidelity.py: judged reconstructions 31% at 2, 8% at 8)."""
STAGES = ("synthesise", "tokenize", "train MLLM (vtok)", "train MLLM (frame sampling)", "train decoder",
          "evaluate", "page")
MARKER = ".vtok-demo"
"""A file in OUT saying vtok demo made it, so a rerun may replace what it holds."""
OWNED = ("corpus", "heldout", "tokens", "heldout_tokens", "runs", "index.html", "demo.json")
"""What the demo writes under OUT (corpus and tokens also by the demo of old, without a marker)."""


@dataclass
class DemoConfig:
    """`vtok demo`: where, how big, and the tokenizer."""

    out: str = "demo_out"
    """Output folder (local): corpora, tokens, runs and index.html; a rerun starts it over."""
    quick: bool = False
    """Smoke size (about 2 minutes) instead of the full loop (about 4 minutes on 2 idle CPUs)."""
    seed: int = 0
    """Generator seed of the training world; the held-out world's is seed + 1000."""
    train_videos: int | None = None
    """Clips of the training world; None: the size's."""
    tokenize_overrides: list[str] = field(default_factory=list)
    """Extra `vtok tokenize` key=value for both worlds (e.g. tokenizer.encoder=DIR)."""
    progress: bool = True
    """Ray Data progress bars and the jobs' log lines."""


@dataclass
class Stage:
    """One stage's number, name and wall time."""

    index: int
    """1-based position in STAGES."""
    name: str
    """As STAGES spells it."""
    seconds: float = 0.0
    """Wall time, once done."""
    load: float = 0.0
    """The machine's 1-minute load average as it ended (other processes share the CPUs)."""


def _stage(index: int, detail: str, fn: Callable[[], T], done: list[Stage], summary: Callable[[T], str]) -> T:
    """Run one stage between its two progress lines ("[demo 3/7] train MLLM (vtok) ... 142 s")."""
    name = STAGES[index - 1]
    print(f"[demo {index}/{len(STAGES)}] {name}: {detail}", flush=True)
    started = time.perf_counter()
    result = fn()
    stage = Stage(index, name, time.perf_counter() - started, os.getloadavg()[0])
    done.append(stage)
    tail = summary(result)
    print(f"[demo {index}/{len(STAGES)}] {name} ... {stage.seconds:.0f} s" + (f"  ({tail})" if tail else ""),
          flush=True)
    return result


def prepare_out(out: Path) -> None:
    """Make OUT ready for a fresh run: refuse a non-empty folder the demo did not make; else clear what it wrote."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder")
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in (*OWNED, MARKER))
        if foreign and not (out / MARKER).is_file():
            raise InputError(f"--out {out}: not empty and not made by vtok demo (holds {', '.join(foreign[:3])}); "
                             f"give a new or empty folder")
        for name in OWNED:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by vtok demo; a rerun of vtok demo replaces this folder's contents\n")


def baseline_frames(key_tokens: int, residual_tokens: float) -> int:
    """The most frames K with K x S <= S + R (at least 1): the baseline gets no more tokens than VTok."""
    return max(1, int((key_tokens + residual_tokens) // key_tokens))


def _check_disjoint(train: str, held: str) -> None:
    from pipelines.evaluate.checks import sample_keys

    shared = {r["sample_key"] for r in sample_keys(train, None)} & {r["sample_key"] for r in sample_keys(held, None)}
    if shared:
        raise InputError(f"held-out tokens {held} share {len(shared)} sample key(s) with {train}")


def _token_counts(data: str) -> tuple[int, float]:
    """(S, mean residual tokens per clip) as stored: rows of key_tokens and of residual_features."""
    from vtok.dataset import read_shard_samples, shard_uris

    rows = [r for uri in shard_uris(data) for r in read_shard_samples(uri)]
    return len(rows[0]["key_tokens"]), sum(len(r["residual_features"]) for r in rows) / len(rows)


def _quiet(progress: bool) -> Callable[[], None]:
    """Without progress, vtok's own INFO lines off the terminal (the stage lines say what runs); returns the undo."""
    if progress:
        return lambda: None
    loggers = [logging.getLogger(n) for n in ("jobs", "pipelines", "vtok")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)

    def undo() -> None:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)

    return undo


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Every stage in order on one local Ray; returns {"page", "stages": [(name, s)], "table": [TableRow],
    "runs": {label: run folder}, "tokens": {world: folder}, "baseline_frames": K}."""
    undo = _quiet(cfg.progress)
    try:
        return _run(cfg)
    finally:
        undo()


def _run(cfg: DemoConfig) -> dict[str, Any]:
    from jobs.eval import load_eval_config, run_eval_job
    from jobs.ray_setup import RayConfig, start_ray
    from jobs.tokenize import load_tokenize_config
    from jobs.tokenize import run as run_tokenize_job
    from jobs.train import load_train_decoder_config, load_train_mllm_config, run_decoder, run_mllm
    from pipelines.demo_report import (
        Report,
        answer_floors,
        format_table,
        latest_results,
        tv_align_table,
        write_demo_page,
    )
    from pipelines.evaluate.checks import sample_keys
    from vtok.shapes import ShapesConfig, write_corpus

    size = SIZES["quick" if cfg.quick else "full"]
    train_videos = cfg.train_videos or size.train_videos
    if train_videos < 8:
        raise InputError(f"--num-videos must be >= 8 (a training world to learn from), got {train_videos}")
    out = Path(cfg.out).resolve()
    # Checked before anything is deleted or Ray starts: a bad key fails in a second.
    load_tokenize_config([f"input={out}", f"output={out / 'tokens'}", *TOKENIZE_ARGS, *cfg.tokenize_overrides])
    prepare_out(out)
    done: list[Stage] = []
    world = ShapesConfig(**WORLD)
    corpora = {"train": (out / "corpus", cfg.seed, train_videos),
               "heldout": (out / "heldout", cfg.seed + 1000, size.heldout_videos)}
    tokens = {"train": str(out / "tokens"), "heldout": str(out / "heldout_tokens")}

    def synthesise() -> dict[str, str]:
        return {k: write_corpus(str(folder), n, seed=seed, cfg=world) for k, (folder, seed, n) in corpora.items()}

    manifests = _stage(1, f"{train_videos} training + {size.heldout_videos} held-out shapes-world videos "
                          f"(seeds {cfg.seed} and {cfg.seed + 1000}) into {out}", synthesise, done,
                       lambda m: "")

    def tokenize() -> dict[str, Any]:
        start_ray(RayConfig())  # the one local Ray of every later stage
        summaries = {}
        for k in ("train", "heldout"):
            job = load_tokenize_config([f"input={manifests[k]}", f"output={tokens[k]}", *TOKENIZE_ARGS,
                                        *cfg.tokenize_overrides])
            summaries[k] = run_tokenize_job(job, progress=cfg.progress)
        _check_disjoint(tokens["train"], tokens["heldout"])
        return summaries

    _stage(2, "both worlds with the same tokenizer (VTok S + R, frame tokens, 16 px frames)", tokenize, done,
           lambda s: f"{s['train'].clips_out} + {s['heldout'].clips_out} clips; "
                     f"shards in {tokens['train']}/shards, {tokens['heldout']}/shards")
    s_tokens, r_mean = _token_counts(tokens["heldout"])
    k = baseline_frames(s_tokens, r_mean)
    runs = {"vtok": str(out / "runs" / "mllm_vtok"), "frames": str(out / "runs" / f"mllm_frames_k{k}"),
            "decoder": str(out / "runs" / "decoder_vtok")}
    common = [f"data={tokens['train']}", f"split.heldout_data={tokens['heldout']}"]

    def mllm(label: str, extra: list[str]) -> Callable[[], dict[str, Any]]:
        steps = size.mllm_steps
        args = [*common, f"output={runs[label]}", f"train.steps={steps}", f"checkpoint.every_steps={steps}",
                f"train.log_every_steps={max(1, steps // 10)}", *MLLM_ARGS, *extra]
        return lambda: run_mllm(load_train_mllm_config(args), progress=cfg.progress)

    def accuracy(result: dict[str, Any]) -> str:
        acc = result["heldout_accuracy"]
        return "held-out understanding " + ", ".join(f"{c} {v:.2f}" for c, v in acc.items() if c != "clips")

    _stage(3, f"{s_tokens} + {r_mean:g} tokens per clip, {size.mllm_steps} steps", mllm("vtok", ["model.tokens=vtok"]),
           done, accuracy)
    _stage(4, f"K={k} frame(s) x {s_tokens} = {k * s_tokens} tokens per clip (VTok's budget), {size.mllm_steps} steps",
           mllm("frames", ["model.tokens=frame_sampling", f"model.frames={k}"]), done, accuracy)

    def decoder() -> dict[str, Any]:
        steps = size.decoder_steps
        args = [*common, f"output={runs['decoder']}", f"train.steps={steps}", f"checkpoint.every_steps={steps}",
                f"train.log_every_steps={max(1, steps // 10)}", "model.tokens=vtok", *DECODER_ARGS]
        return run_decoder(load_train_decoder_config(args), progress=cfg.progress)

    _stage(5, f"VTok tokens -> 16 px frames, {size.decoder_steps} steps", decoder, done,
           lambda r: (f"held-out colour {r['heldout_reconstruction']['color']:.2f} "
                      f"(chance {r['heldout_reconstruction']['chance']:.2f})") if r["heldout_reconstruction"] else "")

    def evaluate() -> dict[str, Any]:
        job = load_eval_config([f"checkpoint={runs['vtok']}", f"data={tokens['heldout']}", "suites=[tv_align,vbench]",
                                f"decoder={runs['decoder']}", f"compare={runs['frames']}",
                                f"steps={size.sample_steps}", f"guidance={GUIDANCE}", "strip=4"])
        return run_eval_job(job, progress=cfg.progress)

    _stage(6, f"TV-Align + VBench on {size.heldout_videos} held-out clips, the baseline's understanding beside it",
           evaluate, done, lambda r: f"results in {r['run']}/eval/results")

    def write_page() -> tuple[str, list[Any]]:
        floors = answer_floors([r["attributes"] for r in sample_keys(tokens["heldout"], None, ("attributes",))])
        rows = tv_align_table(runs["vtok"], runs["frames"], floors)
        reports = [Report("tokenize (training world)", os.path.join(tokens["train"], "report.html")),
                   Report("tokenize (held-out world)", os.path.join(tokens["heldout"], "report.html")),
                   Report("train MLLM (vtok)", os.path.join(runs["vtok"], "report.html")),
                   Report(f"train MLLM (frame sampling, K={k})", os.path.join(runs["frames"], "report.html")),
                   Report("train decoder (vtok)", os.path.join(runs["decoder"], "report.html")),
                   Report("evaluate (TV-Align, VBench)", os.path.join(runs["vtok"], "eval", "report.html"))]
        stages = [(s.name, s.seconds) for s in done]
        notes = [f"{size.heldout_videos} held-out clips of seed {cfg.seed + 1000}, none of whose sample keys trained "
                 f"any model; one object per clip, so count is answered by its majority alone.",
                 f"VTok: {s_tokens} + {r_mean:g} tokens per clip; baseline: {k} frame(s) x {s_tokens} tokens."]
        vbench = [(m, float(r["value"])) for (m, _), r in latest_results(runs["vtok"], "vbench")[1].items()]
        return write_demo_page(str(out), reports, rows, stages, ("VTok", f"frames K={k}"), notes, vbench), rows

    page, rows = _stage(7, "index.html with every report and the TV-Align table", write_page, done, lambda p: "")
    stages = [(s.name, s.seconds) for s in done]
    _write_summary(out, cfg, size, done, k)
    print()
    print("\n".join(format_table(rows)))
    # The load average says how much of the wall time other processes took (the CPUs may be shared).
    print(f"\n[demo] {sum(s for _, s in stages):.0f} s in all: "
          + ", ".join(f"{s.index} {s.seconds:.0f} s" for s in done)
          + f" (1-minute load average {done[0].load:.1f} after stage 1, {done[-1].load:.1f} at the end)")
    print(f"[demo] the page: {page}")
    return {"page": page, "stages": stages, "table": rows, "runs": runs, "tokens": tokens, "baseline_frames": k}


def _write_summary(out: Path, cfg: DemoConfig, size: DemoSize, stages: list[Stage], k: int) -> None:
    """OUT/demo.json: the sizes and each stage's wall time, for whoever compares two demo runs."""
    import dataclasses

    from vtok.storage import write_json

    write_json(str(out / "demo.json"), {"quick": cfg.quick, "seed": cfg.seed, "size": dataclasses.asdict(size),
                                        "train_videos": cfg.train_videos or size.train_videos,
                                        "baseline_frames": k, "stages": [dataclasses.asdict(s) for s in stages]})
