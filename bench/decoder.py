"""Decoder: training step (VTok vs frame-sampling conditioning) and `vtok decode` throughput, side by side.

    python -m bench.decoder                 # CPU: tiny WAN DiT in pixel space, T = 8/16/32; decode throughput
    python -m bench.decoder --realistic     # GPU: WAN2.2-TI2V-5B-sized DiT, random weights, CLIP-L, bf16
    python -m bench.decoder --realistic --device cpu --scale 0.02 --latent 2 8 8 --quick   # that path, shrunk

Training step: the same VTokDecoder (vtok/models/decoder.py), batch and video, conditioned either on VTok's
S + R tokens or on frame sampling's T x S tokens (model.tokens); one forward + backward + AdamW step, each
contender in its own process (peak memory is its own), 3 interleaved rounds, the median round. Reported:
the conditioning length L (the cross-attention context), the video tokens the DiT runs on (the same for both),
step time (median of the timed steps after 2 warm-up steps), CPU seconds per step (the work, whatever share
of a loaded machine the process got), samples/s, peak RSS (peak GPU memory and achieved FLOP/s on a GPU).

Decode throughput (bench/decoder_decode.py): `vtok decode` on shapes-world token shards from the real tokenize
pipeline, against a plain in-process loop over the same per-clip sampling, at 10 and 25 sampling steps.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR, log, machine_info, median, parser, table, write_results

MODES = ("vtok", "frame_sampling")
S, D_TINY, D_CLIP_L = 16, 64, 1024
"""Key tokens per clip (grid 4) and token widths: the tiny CLIP of the tests, CLIP ViT-L."""
TEST_DIT: dict[str, Any] = dict(heads=4, head_dim=12, ffn_dim=128, layers=2, text_dim=32, freq_dim=32,
                                patch_size=[1, 4, 4], rope_max_seq_len=64)
"""The decoder tests' DiT (tests/conftest.py DECODER_ARGS on DiTSizes' defaults)."""
WAN22_TI2V_5B: dict[str, Any] = dict(heads=24, head_dim=128, layers=30, ffn_dim=14336, text_dim=4096,
                                     freq_dim=256, patch_size=[1, 2, 2], channels=48, rope_max_seq_len=1024)
"""Wan2.2-TI2V-5B's transformer (dim 3072 = 24 x 128, ffn 14336, 30 layers, umT5-XXL text width 4096,
patch 1x2x2 on the 48-channel latents of its 4x16x16 VAE); qk_norm and cross_attn_norm: diffusers' defaults,
which are WAN's. 5.0e9 parameters (tests/bench/test_bench_decoder.py)."""
H200_BF16_FLOPS = 989e12
"""Dense bf16 peak of an H200 (the MFU denominator)."""


def _rows(b: int, t: int, s: int, d: int, target: tuple[str, tuple[int, ...]],
          seed: int = 0) -> list[dict[str, Any]]:
    """b token rows of T frames with random tokens and a random decoder target (name, per-clip shape)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(b):
        frames = rng.standard_normal((t, s, d), dtype=np.float32)
        name, shape = target
        value = (rng.integers(0, 256, shape, dtype=np.uint8) if name == "frames_lowres"
                 else rng.standard_normal(shape, dtype=np.float32))
        rows.append({"sample_key": f"bench-{i:04d}", "key_tokens": frames[0], "frame_tokens": frames,
                     "residual_features": rng.standard_normal((t - 1, d), dtype=np.float32), name: value})
    return rows


def _time_steps(model: Any, inputs: Any, optimizer: Any, steps: int, device: str,
                autocast: Any) -> dict[str, Any]:
    """Median wall and CPU seconds of `steps` training steps after 2 warm-up steps."""
    import time

    import torch

    walls, cpus = [], []
    for k in range(steps + 2):
        if device == "cuda":
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter(), time.process_time()
        with autocast:
            loss = model(inputs)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if k >= 2:
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
    return {"step_s": median(walls), "cpu_s_per_step": median(cpus), "step_s_all": walls}


def run_one(mode: str, t: int, args: Any) -> dict[str, Any]:
    """One contender in this process: a decoder of mode `mode` on T-frame clips, timed."""
    import resource

    import torch

    from vtok.models.decoder import VTokDecoder
    from vtok.models.decoder_config import DecoderConfig, DiTSizes
    from vtok.training.batching import collate_tokens

    torch.set_num_threads(args.threads)
    s = args.key_tokens
    device = args.device if args.realistic else "cpu"
    if args.realistic:
        dit, d = scaled_wan(args.scale), D_CLIP_L
        f, h, w = args.latent
        target: tuple[str, tuple[int, ...]] = ("latents", (int(dit["channels"]), f, h, w))
        cfg = DecoderConfig(tokens=mode, token_dim=d, num_key=s, space="latents", dit=DiTSizes(**dit),
                            transformer_mode=args.transformer_mode, num_frames=f, height=h, width=w,
                            shift=5.0)
    else:
        dit, d, f, h, w = TEST_DIT, D_TINY, t, args.side, args.side
        target = ("frames_lowres", (t, h, w, 3))
        cfg = DecoderConfig(tokens=mode, token_dim=d, num_key=s, dit=DiTSizes(**dit), num_frames=f, height=h,
                            width=w, shift=3.0, logit_mean=0.5)
    inputs = collate_tokens(_rows(args.batch, t, s, d, target))
    # Built on the device itself: a 5B transformer is never materialized (20 GB fp32) on the host first.
    with torch.device(device):
        model = VTokDecoder(cfg)
    if args.realistic:
        if cfg.transformer_mode == "frozen":
            model.transformer.to(torch.bfloat16)  # frozen weights need no fp32 master copy
        if args.checkpointing:
            model.transformer.enable_gradient_checkpointing()
    model.train()
    inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    cond = model.conditioning(inputs)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=args.realistic)
    timed = _time_steps(model, inputs, optimizer, args.repeats, device, autocast)
    p = model.patch_size
    out = {"mode": mode, "T": t, "S": s, "D": d, "batch": args.batch, "device": device,
           "threads": args.threads,
           "cond_len": int(cond.key_valid.shape[1] + cond.residual_valid.shape[1]),
           "video_tokens": (f // p[0]) * (h // p[1]) * (w // p[2]), "video": [f, h, w],
           "params": sum(x.numel() for x in model.parameters()), "trainable": sum(x.numel() for x in params),
           **timed, "samples_per_s": args.batch / timed["step_s"],
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if args.realistic:
        out["flops_per_step"] = _step_flops(model, inputs, optimizer, autocast)
        out["tflops_per_s"] = out["flops_per_step"] / timed["step_s"] / 1e12
        if device == "cuda":
            out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
            out["mfu"] = out["flops_per_step"] / timed["step_s"] / H200_BF16_FLOPS
    return out


def _step_flops(model: Any, inputs: Any, optimizer: Any, autocast: Any) -> float:
    """FLOPs of one training step as torch counts them (matmuls and attention; recompute included)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        with autocast:
            loss = model(inputs)["loss"]
        loss.backward()
    optimizer.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def scaled_wan(scale: float) -> dict[str, Any]:
    """WAN22_TI2V_5B with heads, layers, FFN and text widths times `scale` (head_dim kept for WAN's RoPE)."""
    if not 0 < scale <= 1:
        raise SystemExit(f"bench.decoder: --scale must be in (0, 1], got {scale}")
    out = dict(WAN22_TI2V_5B)
    for key in ("heads", "layers", "ffn_dim", "text_dim"):
        out[key] = max(1, round(WAN22_TI2V_5B[key] * scale))
    return out


def step_rows(results: list[dict[str, Any]], realistic: bool) -> str:
    """The step-time table, each row's ratio against VTok at the same T."""
    rows = []
    for r in results:
        vt = next(x for x in results if x["T"] == r["T"] and x["mode"] == "vtok")
        name = "VTok S+R" if r["mode"] == "vtok" else "frame sampling T*S"
        gpu = "mfu" in r
        extra = ([f"{r['tflops_per_s']:.3g}", f"{r['mfu']:.1%}" if gpu else "n/a",
                  f"{r['peak_gpu_mib']:,.0f}" if gpu else "n/a"] if realistic else [])
        rows.append([name, r["T"], r["cond_len"], r["video_tokens"], f"{r['step_s']:.3f}",
                     f"{r['cpu_s_per_step']:.3f}", f"{r['samples_per_s']:.1f}", f"{r['peak_rss_mib']:,.0f}",
                     *extra, f"{r['step_s'] / vt['step_s']:.2f}x",
                     f"{r['cpu_s_per_step'] / vt['cpu_s_per_step']:.2f}x"])
    head = ["conditioning", "T", "cond len L", "video tokens", "step s", "CPU s/step", "samples/s",
            "peak RSS MiB"]
    head += ["TFLOP/s", "MFU", "peak GPU MiB"] if realistic else []
    return table([*head, "step vs VTok", "CPU s vs VTok"], rows)


def measure_steps(args: Any) -> list[dict[str, Any]]:
    """Every contender in its own process, rounds interleaved; the median round of each."""
    ts = tuple(args.frames[:1]) if args.quick else tuple(args.frames)
    contenders = [(mode, t) for t in ts for mode in MODES]
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {c: [] for c in contenders}
    rounds = 1 if args.quick else args.rounds
    passed = ["--batch", str(args.batch), "--side", str(args.side), "--threads", str(args.threads),
              "--key-tokens", str(args.key_tokens),
              "--repeats", str(args.repeats), "--device", args.device, "--scale", str(args.scale),
              "--latent", *map(str, args.latent), "--transformer-mode", args.transformer_mode,
              *(["--realistic"] if args.realistic else []),
              *(["--checkpointing"] if args.checkpointing else [])]
    for r in range(rounds):
        for mode, t in contenders[r % len(contenders):] + contenders[: r % len(contenders)]:
            log(f"step round {r + 1}/{rounds}: {mode} T={t}")
            cmd = [sys.executable, "-m", "bench.decoder", "--one", mode, str(t), *passed]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"bench.decoder: contender {mode} T={t} failed:\n{done.stderr[-3000:]}")
            runs[(mode, t)].append(json.loads(done.stdout.strip().splitlines()[-1]))
    results = []
    for c in contenders:
        mid = sorted(runs[c], key=lambda x: x["step_s"])[len(runs[c]) // 2]  # the median round
        results.append({**mid, "step_s_rounds": [x["step_s"] for x in runs[c]]})
    return results


def _require_cuda(args: Any) -> None:
    import torch

    if args.realistic and args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench.decoder --realistic: needs a GPU (CUDA is not available on this machine); "
                         "--device cpu --scale 0.02 runs its code path shrunk")


def main() -> None:
    import argparse

    p = parser(__doc__.splitlines()[0])
    p.add_argument("--realistic", action="store_true",
                   help="WAN2.2-TI2V-5B-sized DiT, CLIP-L tokens, bf16 on a GPU")
    p.add_argument("--device", default="cuda", help="--realistic only: cuda (default) or cpu")
    p.add_argument("--scale", type=float, default=1.0,
                   help="--realistic only: shrink the DiT's heads/layers/FFN")
    p.add_argument("--latent", type=int, nargs=3, default=[13, 30, 52], metavar=("F", "H", "W"),
                   help="--realistic only: latent frames and size (default 13x30x52: 49 frames at 480x832)")
    p.add_argument("--transformer-mode", default="frozen", choices=["frozen", "full"],
                   help="--realistic only: frozen (WAN2.2 adapter mode, the default) or full")
    p.add_argument("--checkpointing", action="store_true", help="--realistic only: gradient checkpointing")
    p.add_argument("--frames", type=int, nargs="+", default=[8, 16, 32], help="frames T per clip (CPU run)")
    p.add_argument("--batch", type=int, default=None, help="clips per step (default 16; 2 with --realistic)")
    p.add_argument("--key-tokens", type=int, default=S, help="S, key tokens per clip (grid g: S = g*g)")
    p.add_argument("--side", type=int, default=16, help="pixel-space frame side (CPU run; the tests' 16)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per contender (CPU)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the step contenders")
    p.add_argument("--skip-decode", action="store_true", help="only the training step")
    p.add_argument("--decode-clips", type=int, default=48, help="clips of the decode throughput dataset")
    p.add_argument("--one", nargs=2, metavar=("MODE", "T"), help=argparse.SUPPRESS)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    args.batch = args.batch or (2 if args.realistic else 16)
    args.repeats = args.repeats or (3 if args.quick else 8)
    if args.child:
        from bench.decoder_decode import child_main

        print(json.dumps(child_main(json.loads(args.child))))
        return
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), args)))
        return
    _require_cuda(args)
    if args.realistic:
        args.frames = [16, 32]
    started = time.perf_counter()
    steps = measure_steps(args)
    steps_s = time.perf_counter() - started
    log(f"training step contenders: {steps_s:.0f} s")
    print(step_rows(steps, args.realistic))
    payload: dict[str, Any] = {"steps": steps, "steps_seconds": steps_s, "realistic": args.realistic,
                               "scale": args.scale}
    if args.realistic:
        payload["dit"] = scaled_wan(args.scale)
        write_results("decoder", payload, out=args.out or RESULTS_DIR / "decoder_realistic.json")
        return
    if not args.skip_decode:
        from bench.decoder_decode import decode_rows, measure_decode

        write_results("decoder", payload, out=args.out)  # the steps survive a failed decode part
        payload["decode"] = measure_decode(args)
        log(f"decode contenders: {payload['decode']['seconds']:.0f} s")
        print(decode_rows(payload["decode"]))
    payload["machine_during"] = machine_info()
    write_results("decoder", payload, out=args.out)
    log(f"results: {args.out or Path(RESULTS_DIR) / 'decoder.json'}")


if __name__ == "__main__":
    main()
