"""The fidelity study: where VTok overtakes frame sampling, over key grid g, frames T and the residual grid r.

    python -m bench.study                        # every phase: tokenize, probe over the grid, MLLM corners, report
    python -m bench.study --phase probe          # only the probe over the grid (cells already done are kept)
    python -m bench.study --phase mllm --mllm-seeds 2
    python -m bench.study --phase report         # tables, bench/results/fidelity_study.{json,parquet}, the plot
                                                 # bench/figures/fidelity_study.svg
    python -m bench.study --residual-grids 1     # leave out VTok r = 2 (needs tokenizer.residual_grid)

One shapes-world corpus of single-object clips (64 px, 32 frames at 8 fps, generator seed 41) is tokenized by
the real pipeline once per (g, T, r): g in GRIDS (S = g*g = 4, 16, 64 with the tiny CLIP's 8 x 8 patches),
T in FRAMES (decode.num_frames: T frames spread over the same 4 s), r in the residual grids (r = 2 needs
tokenizer.residual_grid: r*r residual tokens per step). The probe (vtok.eval.probe) trains on the clips its
sample-key split keeps and scores the rest, per attribute, with PROBE_SEEDS initialisations; on r = 1 data it
probes vtok (r = 1), frame sampling at VTok's budget, all frames and key tokens only; on r = 2 data vtok (r = 2)
and frame sampling at that larger budget. At the corners (CORNERS), the MLLM (`vtok train mllm`, fidelity's
settings) is trained on the same corpus per mode and scored on TV-Align understanding on a held-out corpus
(seed 42, its keys checked disjoint) by the training job's own held-out check (tv_align.understanding_hits).

Each finished cell is a JSON file in the cache (VTOK_BENCH_CACHE/study/cells/), so a rerun, or a phase run in
a second process, skips what is done; `--phase report` assembles whatever cells exist.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.common import cache_dir, cached_corpus, log, write_results

GRIDS: tuple[int, ...] = (2, 4, 8)
"""tokenizer.grid values: S = 4, 16, 64 key tokens."""
FRAMES: tuple[int, ...] = (8, 16, 32)
"""decode.num_frames values: T."""
CORNERS: tuple[tuple[int, int], ...] = ((4, 16), (8, 16))
"""(g, T) cells where the MLLM is trained too (S = 16 and S = 64 at T = 16)."""
WORLD: dict[str, Any] = dict(width=64, height=64, num_frames=32, fps=8.0, min_objects=1, max_objects=1)
"""The shapes world: one object per clip, so every object attribute has one answer."""
CORPUS_SEED, HELDOUT_SEED = 41, 42
CORPUS_CLIPS, HELDOUT_CLIPS = 600, 64
"""The probe's corpus (also the MLLM's training data) and the MLLM's held-out corpus."""
PROBE_SEEDS = 2
"""Probe initialisations per (mode, attribute), except BIG_SEEDS for a mode of more than BIG_TOKENS tokens."""
BIG_TOKENS, BIG_SEEDS = 1000, 1
"""All frames at S = 64 (1024 and 2048 tokens) is most of the probe's time: one seed there."""
STALE_LOCK_S = 3 * 3600
ATTRIBUTES: list[str] = ["color", "size", "position", "motion"]
"""What the probe reads (count is 1 in every clip; shape is left out to save time)."""
MLLM_STEPS = 280
MLLM_ARGS = ["scaling.num_workers=1", "scaling.cpus_per_worker=1", "train.batch_size=16", "train.lr=2e-3",
             "train.warmup_steps=0", "train.grad_clip=0", "model.llm_mode=full"]
"""As bench/fidelity.py: the tests' trained VTok MLLM, the tiny Qwen2 trained in full on one CPU worker."""


def cells_dir() -> Path:
    return cache_dir("study", "cells")


def read_cell(name: str) -> dict[str, Any] | None:
    path = cells_dir() / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def write_cell(name: str, doc: dict[str, Any]) -> None:
    path = cells_dir() / f"{name}.json"
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(path)


def dataset(kind: str, g: int, t: int, r: int) -> str:
    """Token shards of corpus `kind` ("corpus" or "heldout") at (g, T, r), tokenized once."""
    from vtok.shapes import ShapesConfig, write_corpus

    seed, videos = (CORPUS_SEED, CORPUS_CLIPS) if kind == "corpus" else (HELDOUT_SEED, HELDOUT_CLIPS)
    tag = f"study_{kind}_s{seed}_{videos}v_64px_32f"
    manifest = cached_corpus(tag, lambda d: write_corpus(str(d), videos, seed=seed, cfg=ShapesConfig(**WORLD)))
    out = cache_dir("study", "tokens") / f"{tag}_g{g}_t{t}_r{r}"
    with claim(out.with_name(out.name + ".lock"), wait=True):
        if not (out / "manifest.json").is_file():
            tokenize(manifest, out, g, t, r)
    return str(out)


@contextmanager
def claim(lock: Path, wait: bool) -> Iterator[bool]:
    """Hold `lock` (an O_EXCL file) while the body runs, so two study processes never make the same thing.

    wait=True: wait for another holder to finish, then hold it; wait=False: yield False at once when it is held.
    A lock left by a killed process is taken over after STALE_LOCK_S.
    """
    while True:
        try:
            os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            break
        except FileExistsError:
            if time.time() - lock.stat().st_mtime > STALE_LOCK_S:
                lock.unlink(missing_ok=True)
                continue
            if not wait:
                yield False
                return
            time.sleep(5)
    try:
        yield True
    finally:
        lock.unlink(missing_ok=True)


def tokenize(manifest: str, out: Path, g: int, t: int, r: int) -> None:
    """Tokenize the corpus at `manifest` into `out` at (g, T, r) with the real pipeline."""
    from pipelines.tokenize.clips import SourceConfig
    from pipelines.tokenize.pipeline import TokenizeConfig, run_tokenize
    from pipelines.tokenize.sink import SinkConfig
    from vtok.tokenizer_spec import TokenizerConfig
    from vtok.video import DecodeConfig

    log(f"tokenizing {manifest} at g={g}, T={t}, r={r}")
    extra = {"residual_grid": r} if r != 1 else {}
    started = time.perf_counter()
    run_tokenize(TokenizeConfig(input=manifest, output=str(out), decode=DecodeConfig(num_frames=t, max_frames=t),
                                source=SourceConfig(), sink=SinkConfig(rows_per_shard=128, mode="overwrite"),
                                tokenizer=TokenizerConfig(grid=g, **extra)), progress=False)
    log(f"tokenized in {time.perf_counter() - started:.0f} s")


def read_rows(data: str) -> list[dict[str, Any]]:
    from vtok.dataset import read_shard_samples, shard_uris

    return [row for uri in shard_uris(data) for row in read_shard_samples(uri)]


def probe_modes(r: int) -> list[str]:
    return ["vtok", "frames_budget", "all_frames", "key_only"] if r == 1 else ["vtok", "frames_budget"]


def probe_cell(g: int, t: int, r: int) -> dict[str, Any] | None:
    """The probe's scores on the corpus at (g, T, r), computed once; None while another process computes them."""
    name = f"probe_g{g}_t{t}_r{r}"
    with claim(cells_dir() / f".{name}.lock", wait=False) as mine:
        return compute_probe_cell(g, t, r) if mine else read_cell(name)


def compute_probe_cell(g: int, t: int, r: int) -> dict[str, Any]:
    """The probe's scores on the corpus at (g, T, r), computed once."""
    from dataclasses import asdict

    import torch

    from vtok.eval.probe import ProbeConfig, run_probe

    # One intra-op thread: on this busy shared machine two threads ran the tiny probes slower than one.
    torch.set_num_threads(1)
    name = f"probe_g{g}_t{t}_r{r}"
    done = read_cell(name)
    if done is not None:
        return done
    data = dataset("corpus", g, t, r)
    rows = read_rows(data)
    started = time.perf_counter()
    s = len(rows[0]["key_tokens"])
    big = [m for m in probe_modes(r) if m == "all_frames" and t * s > BIG_TOKENS]
    scores = [score for modes, seeds in (([m for m in probe_modes(r) if m not in big], PROBE_SEEDS), (big, BIG_SEEDS))
              if modes for score in run_probe(rows, ProbeConfig(modes=modes, attributes=ATTRIBUTES, seeds=seeds))]
    first = rows[0]
    doc = {"g": g, "t": t, "r": r, "data": data, "clips": len(rows), "seconds": time.perf_counter() - started,
           "S": len(first["key_tokens"]), "tokenizer_fingerprint": first.get("tokenizer_fingerprint", ""),
           "data_fingerprint": dataset_fingerprint(data), "scores": [asdict(s) for s in scores]}
    write_cell(name, doc)
    log(f"probe g={g} T={t} r={r}: {doc['seconds']:.0f} s, " + ", ".join(
        f"{s.mode}/{s.attribute} {s.accuracy:.2f}" for s in scores))
    return doc


def dataset_fingerprint(data: str) -> str:
    from vtok.dataset import read_manifest

    manifest = read_manifest(data)
    return str(manifest.get("fingerprint") or manifest.get("dataset_fingerprint") or "unknown")


def mllm_modes(s: int, residual: int, t: int, r: int) -> list[dict[str, Any]]:
    """The MLLM contenders on r's data: label, the model.* overrides, tokens per clip."""
    from vtok.eval.probe import budget_frames

    k = min(t, budget_frames(s, residual))
    out = [{"label": f"vtok_r{r}", "args": ["model.tokens=vtok"], "tokens": s + residual}]
    # r = 2's budget can buy the frames r = 1's does (S = 64: K = 1 either way): that model is trained once.
    if r == 1 or k != min(t, budget_frames(s, residual // (r * r))):
        out.append({"label": f"frames_budget_r{r}", "args": ["model.tokens=frame_sampling", f"model.frames={k}"],
                    "tokens": k * s, "frames": k})
    if r == 1:
        out.append({"label": "all_frames", "args": ["model.tokens=frame_sampling"], "tokens": t * s})
    return out


def mllm_cell(g: int, t: int, r: int, mode: dict[str, Any], seed: int, work: Path) -> dict[str, Any]:
    """Train the MLLM of one (corner, mode, seed) and keep its held-out understanding per category."""
    from jobs.train import load_train_mllm_config, run_mllm

    name = f"mllm_g{g}_t{t}_{mode['label']}_seed{seed}"
    done = read_cell(name)
    if done is not None:
        return done
    train, held = dataset("corpus", g, t, r), dataset("heldout", g, t, r)
    folder = work / name
    cfg = load_train_mllm_config([f"data={train}", f"split.heldout_data={held}", f"train.seed={seed}",
                                  "checkpoint.keep_last=1", f"output={folder}", f"train.steps={MLLM_STEPS}",
                                  f"checkpoint.every_steps={MLLM_STEPS}", f"train.log_every_steps={MLLM_STEPS // 4}", *MLLM_ARGS,
                                  *mode["args"]])
    log(f"MLLM g={g} T={t} {mode['label']} seed {seed}: training ({MLLM_STEPS} steps, {mode['tokens']} tokens)")
    started = time.perf_counter()
    result = run_mllm(cfg, progress=False)
    acc = result["heldout_accuracy"]
    clips = int(acc["clips"])
    doc = {"g": g, "t": t, "r": r, "mode": mode, "seed": seed, "wall_s": time.perf_counter() - started,
           "clips": clips, "run": str(folder),
           "hits": {c: int(round(v * clips)) for c, v in acc.items() if c not in ("clips", "overall")},
           "data_fingerprint": dataset_fingerprint(train), "uptime": os.getloadavg()}
    write_cell(name, doc)
    log(f"MLLM {name}: {doc['wall_s']:.0f} s, " + ", ".join(f"{c} {h}/{clips}" for c, h in doc["hits"].items()))
    return doc


def check_disjoint(g: int, t: int) -> None:
    keys = {row["sample_key"] for row in read_rows(dataset("corpus", g, t, 1))}
    held = {row["sample_key"] for row in read_rows(dataset("heldout", g, t, 1))}
    if keys & held:
        raise SystemExit(f"held-out data shares {len(keys & held)} sample key(s) with the training corpus")


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--phase", choices=["all", "tokenize", "probe", "mllm", "report"], default="all")
    p.add_argument("--residual-grids", default="1,2", help="comma-separated r values (default 1,2)")
    p.add_argument("--mllm-seeds", type=int, default=1, help="MLLM seeds per (corner, mode)")
    p.add_argument("--first-seed", type=int, default=0, help="the first MLLM seed (add seeds to an earlier run)")
    p.add_argument("--corners", default=",".join(f"{g}x{t}" for g, t in CORNERS),
                   help="MLLM corners as GxT, comma-separated (default 4x16,8x16)")
    p.add_argument("--skip", default="", help="comma-separated MLLM labels to leave out, e.g. all_frames")
    p.add_argument("--out", type=Path, default=None, help="result JSON (default bench/results/fidelity_study.json)")
    args = p.parse_args()
    rs = [int(x) for x in args.residual_grids.split(",") if x]
    started = time.perf_counter()
    if args.phase in ("all", "tokenize", "probe", "mllm"):
        from jobs.ray_setup import RayConfig, init_ray

        init_ray(RayConfig(num_cpus=2))
    if args.phase in ("all", "tokenize"):
        for r in rs:
            for g in GRIDS:
                for t in FRAMES:
                    dataset("corpus", g, t, r)
    if args.phase in ("all", "probe"):
        # Cheapest first (the probe's time grows with S x T); a cell another process holds is done last.
        todo = [(g, t, r) for r in rs for g in GRIDS for t in FRAMES]
        for _ in range(2):
            todo = [cell for cell in todo if probe_cell(*cell) is None]
        while todo:
            time.sleep(30)
            todo = [cell for cell in todo if read_cell(f"probe_g{cell[0]}_t{cell[1]}_r{cell[2]}") is None]
    if args.phase in ("all", "mllm"):
        import tempfile

        work = Path(tempfile.mkdtemp(prefix="vtok-bench-study-"))
        skip = {x for x in args.skip.split(",") if x}
        corners = [tuple(int(v) for v in c.split("x")) for c in args.corners.split(",") if c]
        for seed in range(args.first_seed, args.first_seed + args.mllm_seeds):
            for r in rs:
                for g, t in corners:
                    check_disjoint(g, t)
                    first = read_rows(dataset("heldout", g, t, r))[0]
                    s, res = len(first["key_tokens"]), int(len(first["residual_features"].reshape(
                        -1, first["key_tokens"].shape[1])))
                    for mode in mllm_modes(s, res, t, r):
                        if mode["label"] not in skip:
                            mllm_cell(g, t, r, mode, seed, work)
    from bench.study_report import report

    payload = report(cells_dir())
    payload["phase_wall_s"] = time.perf_counter() - started
    write_results("fidelity_study", payload, args.out)


if __name__ == "__main__":
    main()
