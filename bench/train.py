"""MLLM training step: VTok (S + R tokens) vs frame sampling (T x S), same model and batch, side by side.

    python -m bench.train                 # CPU: tiny Qwen2, tiny-CLIP width D=64, T = 16 and 32, S = 16
    python -m bench.train --realistic     # GPU: a Qwen2-0.5B-sized LM (random weights), CLIP-L width, bf16

Each contender runs in its own process (so peak memory is its own), on the same random token rows: a
forward + backward + AdamW step of VTokLM in full mode, both tasks on. Reported: the sequence length the
LM sees, step time, samples/s, tokens/s, peak memory, and on a GPU the MFU (6 x params x tokens / step
time over the GPU's peak bf16 FLOP/s). The step-time ratio is what VTok saves.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import log, machine_info, median, parser, table, write_results

MODES = ("vtok", "frame_sampling")
H200_BF16_FLOPS = 989e12


def _rows(n: int, t: int, s: int, d: int, seed: int) -> list[dict[str, Any]]:
    import json as _json

    import numpy as np

    from vtok.shapes import ShapesConfig, generate

    rng = np.random.default_rng(seed)
    cfg = ShapesConfig(width=64, height=64, num_frames=2, min_objects=1, max_objects=1)
    rows = []
    for i in range(n):
        video = generate(seed, i, cfg)
        rows.append({"sample_key": f"bench-{i:04d}", "caption": video.caption,
                     "attributes": _json.dumps(video.attributes()),
                     "key_tokens": rng.standard_normal((s, d), dtype=np.float32),
                     "residual_features": rng.standard_normal((t - 1, d), dtype=np.float32),
                     "frame_tokens": rng.standard_normal((t, s, d), dtype=np.float32)})
    return rows


def run_one(mode: str, t: int, batch: int, steps: int, realistic: bool) -> dict[str, Any]:
    """One contender in this process: the measurements of `steps` timed steps after two warm-up steps."""
    import resource

    import torch

    from vtok.eval.questions import template_texts
    from vtok.models.feature_stats import FeatureStats
    from vtok.models.mllm import VTokLM
    from vtok.models.mllm_config import MLLMConfig
    from vtok.models.text import train_word_tokenizer
    from vtok.training.batching import collate_tokens
    from vtok.training.mllm_batch import MLLMCollator

    device = "cuda" if realistic and torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    s, d = 16, (1024 if realistic else 64)
    rows = _rows(batch, t, s, d, seed=0)
    work = Path(tempfile.mkdtemp(prefix="vtok-bench-train-"))
    tokenizer = train_word_tokenizer([*template_texts(), *(r["caption"] for r in rows)], work / "tok")
    llm = work / "llm"
    _save_llm(llm, len(tokenizer) + 8, realistic)
    stats = FeatureStats().update(collate_tokens(rows)).finish()
    cfg = MLLMConfig(llm_mode="full", tokens=mode)
    model = VTokLM(cfg, tokenizer, stats, llm).to(device)
    collate = MLLMCollator(tokenizer, cfg, stats)
    inputs = collate(rows).to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)
    times = []
    for k in range(steps + 2):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        with autocast:
            loss = model(inputs)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if k >= 2:
            times.append(time.perf_counter() - started)
    step = median(times)
    tokens = int(inputs.attention_mask.sum())
    params = sum(p.numel() for p in model.parameters())
    out = {"mode": mode, "T": t, "S": s, "D": d, "batch": batch, "sequences": int(inputs.input_ids.shape[0]),
           "seq_len": int(inputs.attention_mask.sum(1).max()), "tokens_per_step": tokens, "step_s": step,
           "samples_per_s": batch / step, "tokens_per_s": tokens / step, "params": params, "device": device,
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device == "cuda":
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
        out["mfu"] = 6 * params * tokens / step / H200_BF16_FLOPS
    return out


def _save_llm(path: Path, vocab: int, realistic: bool) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from vtok.models.tiny_llm import save_tiny_llm

    if not realistic:
        save_tiny_llm(path, vocab_size=vocab)
        return
    # Qwen2-0.5B's shape with random weights: no download needed, the same FLOPs per token.
    config = Qwen2Config(vocab_size=vocab, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=8192,
                         tie_word_embeddings=True)
    Qwen2ForCausalLM(config).save_pretrained(path)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--realistic", action="store_true", help="Qwen2-0.5B-sized LM, CLIP-L width, bf16 on a GPU")
    p.add_argument("--one", nargs=2, metavar=("MODE", "T"), help=argparse_hidden())
    p.add_argument("--batch", type=int, default=8)
    args = p.parse_args()
    steps = args.repeats or (3 if args.quick else 10)
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), args.batch, steps, args.realistic)))
        return
    contenders = [(mode, t) for t in ((16,) if args.quick else (16, 32)) for mode in MODES]
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {c: [] for c in contenders}
    rounds = 1 if args.quick else 3
    # Rounds interleave the contenders, so load from elsewhere lands on all of them alike; medians per contender.
    for r in range(rounds):
        for mode, t in contenders[r % len(contenders):] + contenders[: r % len(contenders)]:
            log(f"round {r + 1}/{rounds}: {mode} T={t}")
            cmd = [sys.executable, "-m", "bench.train", "--one", mode, str(t), "--batch", str(args.batch),
                   "--repeats", str(steps), *(["--realistic"] if args.realistic else [])]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            runs[(mode, t)].append(json.loads(done.stdout.strip().splitlines()[-1]))
    results = []
    for c in contenders:
        best = sorted(runs[c], key=lambda x: x["step_s"])[len(runs[c]) // 2]  # the median round
        results.append({**best, "step_s_rounds": [x["step_s"] for x in runs[c]]})
    rows = []
    for r in results:
        vt = next(x for x in results if x["T"] == r["T"] and x["mode"] == "vtok")
        rows.append([r["mode"], r["T"], r["seq_len"], f"{r['step_s']:.3f}", f"{r['samples_per_s']:.1f}",
                     f"{r['tokens_per_s']:,.0f}", f"{r['peak_rss_mib']:,.0f}", f"{r['step_s'] / vt['step_s']:.2f}x"])
    print(table(["tokens", "T", "seq len", "step s", "samples/s", "tokens/s", "peak RSS MiB", "step vs VTok"], rows))
    write_results("train", {"machine": machine_info(), "results": results, "realistic": args.realistic})


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
