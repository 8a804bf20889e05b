"""Frame-encoder throughput and model FLOP utilisation (MFU) of CLIP ViT-L/14-336 on a GPU.

    .venv/bin/python -m bench.gpu_encoder                       # on a GPU machine: CLIP-L/336, bf16
    .venv/bin/python -m bench.gpu_encoder --device cpu --quick  # smoke run anywhere (tiny config)

A CLIPVisionModel with the paper encoder's config (24 layers, hidden 1024, MLP 4096, 16 heads, 336 px,
patch 14: 577 tokens) and random weights (throughput does not depend on the values), run under
torch.inference_mode at batch sizes 32..512, in three variants: eager attention, SDPA attention, and
SDPA + torch.compile. Inputs are already-normalised pixel tensors on the device, so the figure is the
encoder alone (decode, upload and pooling are measured elsewhere).

FLOPs per image, counting a multiply-add as 2 FLOPs, N tokens, width d, MLP width m, L layers, patch p:
    L * (8 N d^2  +  4 N d m  +  4 N^2 d)  +  2 (N - 1) (3 p^2) d
     (QKV + out proj)  (MLP)   (QK^T and AV)    (patch embedding)
Layer norms, softmax, GELU and the bias adds are left out (well under 1%). For CLIP-L/336 this is
about 381 GFLOP per image. MFU = images/s x FLOPs per image / peak dense bf16 FLOP/s of the device
(--peak-tflops, or the table PEAK_BF16_TFLOPS by device name).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from bench.common import log, median, parser, table, write_results

# Dense (no sparsity) bf16 tensor-core peaks from the vendor datasheets, TFLOP/s; matched by substring of
# torch.cuda.get_device_name(), most specific first.
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),  # SXM
    ("A100", 312.0),
    ("L40S", 362.05),
    ("A10G", 70.0),
]


@dataclass
class VitShape:
    """The dimensions that set a ViT's FLOPs."""

    layers: int
    hidden: int
    mlp: int
    heads: int
    image: int
    patch: int

    @property
    def tokens(self) -> int:
        return (self.image // self.patch) ** 2 + 1  # patches + CLS


CLIP_L_336 = VitShape(layers=24, hidden=1024, mlp=4096, heads=16, image=336, patch=14)
TINY = VitShape(layers=2, hidden=64, mlp=128, heads=4, image=64, patch=8)


def vit_flops(shape: VitShape) -> float:
    """Forward FLOPs per image by the formula of the module docstring."""
    n, d, m = shape.tokens, shape.hidden, shape.mlp
    per_layer = 8 * n * d * d + 4 * n * d * m + 4 * n * n * d
    patch_embed = 2 * (n - 1) * (3 * shape.patch**2) * d
    return float(shape.layers * per_layer + patch_embed)


def peak_tflops(device_name: str | None, override: float | None) -> float | None:
    if override is not None:
        return override
    if device_name:
        for key, value in PEAK_BF16_TFLOPS:
            if key in device_name:
                return value
    return None


def build_model(shape: VitShape, attn: str, device: Any, dtype: Any) -> Any:
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(
        hidden_size=shape.hidden, intermediate_size=shape.mlp, num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads, image_size=shape.image, patch_size=shape.patch,
    )
    config._attn_implementation = attn
    torch.manual_seed(0)
    return CLIPVisionModel(config).eval().to(device, dtype).requires_grad_(False)


def time_batches(model: Any, batch: int, shape: VitShape, device: Any, dtype: Any, warmup: int, iters: int) -> float:
    """Median seconds per forward pass of `batch` images."""
    import torch

    x = torch.randn(batch, 3, shape.image, shape.image, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times: list[float] = []
    with torch.inference_mode():
        for i in range(warmup + iters):
            sync()
            started = time.perf_counter()
            model(pixel_values=x).last_hidden_state  # noqa: B018 - the forward pass is what is timed
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - started)
    return median(times)


def main() -> None:
    import torch

    p = parser(__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default=None,
                   help="default: bfloat16 on cuda, float32 on cpu")
    p.add_argument("--batch-sizes", default=None, help="comma-separated (default 32,64,128,256,512)")
    p.add_argument("--variants", default="eager,sdpa,sdpa+compile", help="comma-separated subset")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak dense bf16 TFLOP/s of the device")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=None, help="timed passes per batch size (default 10; 2 quick)")
    args = p.parse_args()

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    shape = TINY if args.quick else CLIP_L_336
    default_batches = "2,4" if args.quick else "32,64,128,256,512"
    batches = [int(b) for b in (args.batch_sizes or default_batches).split(",")]
    iters = args.iters or (2 if args.quick else 10)
    warmup = 1 if args.quick else args.warmup
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = peak_tflops(name if device.type == "cuda" else None, args.peak_tflops)
    flops = vit_flops(shape)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    log(f"{name}: {shape} = {flops / 1e9:.4g} GFLOP/image, peak {peak} TFLOP/s, dtype {dtype}")

    rows: list[list[Any]] = []
    results: list[dict[str, Any]] = []
    for variant in args.variants.split(","):
        attn = "eager" if variant == "eager" else "sdpa"
        model = build_model(shape, attn, device, dtype)
        if variant.endswith("+compile"):
            model = torch.compile(model)
        for batch in batches:
            entry: dict[str, Any] = {"variant": variant, "batch": batch}
            try:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                # torch.compile specialises per shape: its first passes at a new batch size compile.
                seconds = time_batches(model, batch, shape, device, dtype, warmup + (2 if "compile" in variant else 0),
                                       iters)
            except torch.cuda.OutOfMemoryError:
                entry["error"] = "out of memory"
                rows.append([variant, batch, "OOM", "", "", ""])
                results.append(entry)
                torch.cuda.empty_cache()
                continue
            fps = batch / seconds
            achieved = fps * flops / 1e12
            entry |= {
                "seconds_per_batch": seconds,
                "frames_per_s": fps,
                "achieved_tflops": achieved,
                "mfu": achieved / peak if peak else None,
                "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
            }
            results.append(entry)
            rows.append([variant, batch, fps, achieved, "n/a" if peak is None else f"{achieved / peak:.1%}",
                         "" if entry["peak_memory_gib"] is None else entry["peak_memory_gib"]])
            log(f"{variant} batch {batch}: {fps:.1f} frames/s, {achieved:.2f} TFLOP/s")
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(table(["variant", "batch", "frames/s", "TFLOP/s", "MFU", "peak GiB"], rows))
    out = write_results("gpu_encoder", {
        "params": {"device": name, "dtype": str(dtype), "shape": asdict(shape), "tokens": shape.tokens,
                   "flops_per_image": flops, "peak_tflops": peak, "iters": iters, "quick": args.quick},
        "results": results,
    }, args.out)
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
