"""Fidelity: VTok (S + R) vs frame sampling at the same token budget vs all frames, on TV-Align.

    python -m bench.fidelity              # 3 seeds (~25 min on 2 cores)
    python -m bench.fidelity --quick      # 1 seed, fewer steps and held-out clips (~5-7 min): a smoke run
    python -m bench.fidelity --seeds 5

The study over key grid, frames and residual grid (S = 4/16/64, T = 8/16/32, r = 1/2; the probe everywhere, the
MLLM at the corners) is bench/study.py; both share the equal-budget rule (vtok.eval.probe.budget_frames).

The paper's comparison in miniature, on the shapes world (single-object clips, 64 px, 8 frames at 8 fps):
a training corpus and a held-out corpus of other generator seeds (their sample keys checked disjoint) are
tokenized once by the real pipeline (frame_tokens on, frames_lowres at 16 px for the decoder). For every
seed and every mode, the MLLM (`vtok train mllm`) and the decoder (`vtok train decoder`, conditioned on the
same token mode) are trained with jobs.train at the same model sizes and steps, on real local Ray; then
TV-Align scores the pair in this process with vtok.eval.tv_align: understanding (multiple choice by log
likelihood), generation (caption -> MLLM tokens -> decoder -> judge) and reconstruction (true tokens ->
decoder -> judge), per category with 95% Wilson intervals pooled over the seeds, and each seed's accuracy
for the spread. Step times are the medians of RUN/metrics.jsonl's step_time_s. Modes are interleaved per
seed (a b c, b c a, c a b), so load from other processes lands on all of them alike.

    vtok             model.tokens=vtok                             S + R tokens per clip
    frames K         model.tokens=frame_sampling model.frames=K    K x S, K = budget_frames(S, R)
    all frames       model.tokens=frame_sampling                   T x S
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import cache_dir, cached_corpus, log, median, parser, write_results
from bench.fidelity_eval import CHECKS, TASKS, accuracy_table, budget_frames, cost_table, evaluate, summarize

TRAIN_SEED, HELDOUT_SEED = 31, 32
"""Generator seeds of the two corpora: every video is generate(seed, index), so other seeds, other videos."""
WORLD: dict[str, Any] = dict(width=64, height=64, num_frames=8, fps=8.0, min_objects=1, max_objects=1)
"""The shapes world of the tests' training_tokens (tests/conftest.py): T = 8, one object per clip."""
LOWRES_SIDE = 16
"""targets.lowres_side: the decoder's frames (16 x 16, as the decoder tests use)."""
MLLM_ARGS = ["scaling.num_workers=1", "scaling.cpus_per_worker=1", "train.batch_size=16", "train.lr=2e-3",
             "train.warmup_steps=0", "train.grad_clip=0", "model.llm_mode=full"]
"""The tests' trained VTok MLLM (vtok_run): the tiny Qwen2 trained in full, one worker of one CPU."""
DECODER_ARGS = ["scaling.num_workers=1", "scaling.cpus_per_worker=1", "train.batch_size=16", "train.lr=5e-3",
                "train.grad_clip=0", "model.dit.heads=4", "model.dit.head_dim=12", "model.dit.ffn_dim=128",
                "model.shift=3.0", "model.logit_mean=0.5", "samples.clips=0", "samples.check_clips=0"]
"""The decoder tests' settings (tests/conftest.py DECODER_ARGS), without the report's sample strip."""
SAMPLE_STEPS, GUIDANCE = 20, 2.0
"""Decoder sampling in the evaluation. The decoder tests' 10 steps at guidance 8 (made to get the colour right)
leave these decoders' samples too noisy to segment: on one 900-step decoder and 24 held-out clips, the
judge's reconstruction accuracy was 8% at (10, 8.0), 17% at (20, 1.0) and 31% at (20, 2.0)."""
SIZES = {"quick": dict(train=96, heldout=16, mllm_steps=60, decoder_steps=100),
         "full": dict(train=160, heldout=64, mllm_steps=280, decoder_steps=600)}
"""Corpus sizes and steps: the MLLM's as the tests' trained models (160 clips, 280 steps); the decoder twice the
tests' 300 steps, since at 300 every reconstruction was noise to the judge (0% in every category)."""


def tokenized(name: str, seed: int, videos: int) -> str:
    """Token shards (frame_tokens, frames_lowres) of a cached shapes corpus, made once per (seed, videos)."""
    from pipelines.tokenize.clips import SourceConfig
    from pipelines.tokenize.pipeline import TokenizeConfig, run_tokenize
    from pipelines.tokenize.sink import SinkConfig
    from pipelines.tokenize.targets import TargetsConfig
    from vtok.shapes import ShapesConfig, write_corpus
    from vtok.video import DecodeConfig

    tag = f"fidelity_{name}_s{seed}_{videos}v"
    manifest = cached_corpus(tag, lambda d: write_corpus(str(d), videos, seed=seed, cfg=ShapesConfig(**WORLD)))
    out = cache_dir("fidelity") / f"tokens_{tag}_side{LOWRES_SIDE}"
    if not (out / "manifest.json").is_file():
        log(f"tokenizing {tag}")
        run_tokenize(TokenizeConfig(input=manifest, output=str(out), decode=DecodeConfig(fps=WORLD["fps"],
                                    max_frames=WORLD["num_frames"]), source=SourceConfig(),
                                    sink=SinkConfig(rows_per_shard=64),
                                    targets=TargetsConfig(lowres_side=LOWRES_SIDE)), progress=False)
    return str(out)


def read_rows(data: str) -> list[dict[str, Any]]:
    """Every row of a token dataset (numpy tensors), in shard order, read without Ray."""
    from vtok.dataset import read_shard_samples, shard_uris

    return [row for uri in shard_uris(data) for row in read_shard_samples(uri)]


def check_disjoint(train: list[dict[str, Any]], held: list[dict[str, Any]]) -> dict[str, Any]:
    """Refuse a held-out set that shares a sample key with training; report how many captions recur."""
    overlap = {r["sample_key"] for r in train} & {r["sample_key"] for r in held}
    if overlap:
        raise SystemExit(f"held-out data shares {len(overlap)} sample key(s) with the training data, "
                         f"e.g. {sorted(overlap)[0]}")
    seen = {r["caption"] for r in train}
    return {"shared_sample_keys": 0, "heldout_captions_seen_in_training": sum(r["caption"] in seen for r in held),
            "heldout_clips": len(held), "train_clips": len(train)}


def modes(s: int, r: int, t: int) -> list[dict[str, Any]]:
    """The three contenders: label, the `model.*` overrides both jobs get, and tokens per video."""
    k = budget_frames(s, r)
    return [{"label": "vtok", "args": ["model.tokens=vtok"], "tokens": s + r},
            {"label": f"frames K={k}", "args": ["model.tokens=frame_sampling", f"model.frames={k}"], "tokens": k * s},
            {"label": "all frames", "args": ["model.tokens=frame_sampling"], "tokens": t * s}]


def step_times(run: Path) -> list[float]:
    """step_time_s of every step in RUN/metrics.jsonl."""
    from pipelines.train.metrics import read_metrics

    return [float(r["step_time_s"]) for r in read_metrics(str(run))]


def train_pair(mode: dict[str, Any], seed: int, train: str, held: str, work: Path,
               size: dict[str, int]) -> dict[str, Any]:
    """Train the MLLM and the decoder of one (mode, seed); their runs, step times and wall times."""
    from jobs.train import load_train_decoder_config, load_train_mllm_config, run_decoder, run_mllm

    tag = f"{mode['label'].replace(' ', '_').replace('=', '')}_seed{seed}"
    common = [f"data={train}", f"split.heldout_data={held}", f"train.seed={seed}", "checkpoint.keep_last=1"]
    out: dict[str, Any] = {}
    for kind, load, run, args, steps in (
            ("mllm", load_train_mllm_config, run_mllm, MLLM_ARGS, size["mllm_steps"]),
            ("decoder", load_train_decoder_config, run_decoder, [*DECODER_ARGS, f"model.seed={seed}"],
             size["decoder_steps"])):
        folder = work / f"{kind}_{tag}"
        cfg = load([*common, f"output={folder}", f"train.steps={steps}", f"checkpoint.every_steps={steps}",
                    f"train.log_every_steps={max(1, steps // 4)}", *args, *mode["args"]])
        log(f"seed {seed}, {mode['label']}: training the {kind} ({steps} steps)")
        started = time.perf_counter()
        result = run(cfg, progress=False)
        times = step_times(folder)
        out[kind] = {"run": str(folder), "wall_s": time.perf_counter() - started, "step_s": median(times),
                     "step_s_all": times}
        if kind == "mllm":
            out[kind]["job_heldout_accuracy"] = result.get("heldout_accuracy")
    return out


def matches_job(understanding: dict[str, list[bool]], mllm: dict[str, Any]) -> bool | None:
    """Whether this study's understanding accuracy per category equals what `vtok train mllm` measured on the
    same held-out rows at the end of training (the same scoring, so any difference is a bug); None: not there."""
    job = mllm.get("job_heldout_accuracy") or {}
    if not job:
        return None
    ours = {c: sum(h) / len(h) for c, h in understanding.items() if h}
    return all(abs(ours[c] - float(job[c])) < 1e-9 for c in ours if c in job)


def checkpoint_of(run: str) -> str:
    """The latest complete checkpoint folder of a run."""
    from vtok.training.checkpoint import latest_complete

    latest = latest_complete(run)
    if latest is None:
        raise SystemExit(f"{run}: no complete checkpoint")
    return latest.uri


def load_average() -> str:
    """`uptime`'s load averages, recorded beside each run (the machine is shared)."""
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=None, help="training seeds per mode (default 3; --quick: 1)")
    args = p.parse_args()
    seeds = args.seeds or (1 if args.quick else 3)
    if seeds < 1:
        raise SystemExit(f"--seeds must be >= 1, got {seeds}")
    size = SIZES["quick" if args.quick else "full"]
    started = time.perf_counter()
    loads = [load_average()]

    from jobs.ray_setup import RayConfig, init_ray

    init_ray(RayConfig(num_cpus=2))
    train = tokenized("train", TRAIN_SEED, size["train"])
    held = tokenized("heldout", HELDOUT_SEED, size["heldout"])
    held_rows = read_rows(held)
    split = check_disjoint(read_rows(train), held_rows)
    first = held_rows[0]
    s, r, t = len(first["key_tokens"]), len(first["residual_features"]), len(first["frame_indices"])
    contenders = modes(s, r, t)
    budget = ", ".join(f"{m['label']} {m['tokens']} tokens" for m in contenders)
    log(f"S={s}, R={r}, T={t}: {budget}; {split}")

    work = Path(tempfile.mkdtemp(prefix="vtok-bench-fidelity-"))
    runs: dict[str, list[dict[str, Any]]] = {m["label"]: [] for m in contenders}
    for i in range(seeds):
        for mode in contenders[i % 3:] + contenders[:i % 3]:
            loads.append(load_average())
            pair = train_pair(mode, i, train, held, work, size)
            log(f"seed {i}, {mode['label']}: evaluating on {len(held_rows)} held-out clips")
            hits, seconds = evaluate(checkpoint_of(pair["mllm"]["run"]), checkpoint_of(pair["decoder"]["run"]),
                                     held_rows, SAMPLE_STEPS, GUIDANCE, seed=0)
            runs[mode["label"]].append({"seed": i, **pair, "eval_s": seconds, "hits": hits, "load": loads[-1],
                                        "matches_job": matches_job(hits["understanding"], pair["mllm"])})
    loads.append(load_average())

    labels = [m["label"] for m in contenders]
    summaries = {m: {task: summarize([run["hits"][task] for run in runs[m]]) for task in (*TASKS, *CHECKS)}
                 for m in labels}
    costs = {m["label"]: {"tokens": m["tokens"],
                          "mllm_step_s": [x["mllm"]["step_s"] for x in runs[m["label"]]],
                          "decoder_step_s": [x["decoder"]["step_s"] for x in runs[m["label"]]],
                          "mllm_wall_s": [x["mllm"]["wall_s"] for x in runs[m["label"]]],
                          "decoder_wall_s": [x["decoder"]["wall_s"] for x in runs[m["label"]]],
                          "generate_s": [x["eval_s"]["tokens_per_clip"] for x in runs[m["label"]]]}
             for m in contenders}
    print(accuracy_table(labels, summaries))
    print()
    print(cost_table(labels, costs))
    mismatched = [f"{m} seed {x['seed']}" for m in labels for x in runs[m] if x["matches_job"] is False]
    if mismatched:
        log(f"WARNING: understanding differs from the training job's held-out accuracy for {mismatched}")
    wall = time.perf_counter() - started
    print(f"\n{seeds} seed(s), {len(held_rows)} held-out clips, {wall / 60:.1f} min; load: {loads[0]} ... {loads[-1]}")
    write_results("fidelity", {
        "quick": args.quick, "seeds": seeds, "sizes": size, "world": WORLD, "lowres_side": LOWRES_SIDE,
        "S": s, "R": r, "T": t, "modes": contenders, "split": split, "train_data": train, "heldout_data": held,
        "mllm_args": MLLM_ARGS, "decoder_args": DECODER_ARGS, "sample_steps": SAMPLE_STEPS, "guidance": GUIDANCE,
        "summaries": summaries, "costs": costs, "wall_s": wall, "uptime": loads, "work_dir": str(work),
        "runs": {m: [{k: v for k, v in x.items() if k != "hits"}
                     | {"hits": {task: {c: [sum(h), len(h)] for c, h in x["hits"][task].items()}
                                 for task in (*TASKS, *CHECKS)}}
                     for x in runs[m]] for m in labels},
    }, args.out)


if __name__ == "__main__":
    main()
