"""Tokens and stored bytes per clip: VTok (S + R) vs frame sampling (T x S) at T = 16, 32, 64.

    .venv/bin/python -m bench.tokens [--quick] [--residual-grid R]

`--residual-grid r` (tokenizer.residual_grid) pools each residual step to an r x r grid: S + r*r*R tokens.

Two views, reported side by side:
  - analytic, for the paper's encoder (CLIP ViT-L/14-336: D = 1024) with the tokenizer's shapes
    (grid g = 4: S = 16 key tokens; residual_stride 1: R = T - 1 residual tokens), as float32 values
    (what schema v1 stores) and as bf16 (what an MLLM consumes);
  - measured, with the tiny default encoder (D = 64): real clips decoded at T frames, tokenized by
    VTokTokenizer, written as schema-v1 Parquet (zstd, the sink's default), and the compressed bytes of
    the VTok columns (key_tokens + residual_features) and of the baseline column (frame_tokens) read
    from the Parquet footer. The measured compression factor (stored / raw float32) is then applied to
    the D = 1024 raw sizes as a projection, labelled as such.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import numpy as np

from bench.common import log, parser, table, write_results
from schemas.tokens import frame_sampling_tokens, num_residuals, vtok_formula, vtok_tokens

T_VALUES = (16, 32, 64)
CLIP_L_336 = {"name": "CLIP ViT-L/14-336", "hidden": 1024}
# Decoder targets (targets.*): frames_lowres at this side; latents of the largest 1 + 4k frames in the clip.
LOWRES_SIDE = 32
WAN_VAE = {"name": "WAN2.1 AutoencoderKLWan", "channels": 16, "spatial": 8, "temporal": 4, "size": 336}


def vae_frames_for(t: int) -> int:
    """The largest frame count Wan's VAE takes (1 + 4k) that the clip's t sampled frames cover."""
    return 1 + 4 * ((t - 1) // 4)


def analytic_targets(t: int, side: int = LOWRES_SIDE, vae: dict[str, Any] = WAN_VAE) -> dict[str, Any]:
    """Raw bytes of one clip's decoder targets: frames_lowres [T, side, side, 3] uint8, latents float32."""
    frames = vae_frames_for(t)
    latent = [vae["channels"], 1 + (frames - 1) // vae["temporal"], vae["size"] // vae["spatial"],
              vae["size"] // vae["spatial"]]
    return {"frames_lowres_shape": [t, side, side, 3], "frames_lowres_bytes": t * side * side * 3,
            "latents_shape": latent, "latents_bytes": int(np.prod(latent)) * 4, "vae_frames": frames}


def analytic(t: int, grid: int = 4, stride: int = 1, dim: int = 1024, residual_grid: int = 1) -> dict[str, Any]:
    """Token counts and raw bytes of one clip of t sampled frames ("R": residual steps, r*r tokens each)."""
    s = grid * grid
    r = num_residuals(t, stride)
    vtok, frames = vtok_tokens(t, grid, stride, residual_grid), frame_sampling_tokens(t, grid)
    return {
        "T": t,
        "S": s,
        "R": r,
        "residual_grid": residual_grid,
        "vtok_tokens": vtok,
        "frame_sampling_tokens": frames,
        "token_ratio": frames / vtok,
        "vtok_bytes_fp32": vtok * dim * 4,
        "frame_sampling_bytes_fp32": frames * dim * 4,
        "vtok_bytes_bf16": vtok * dim * 2,
        "frame_sampling_bytes_bf16": frames * dim * 2,
    }


def measured(t: int, uris: list[str], tokenizer: Any, vae: Any) -> dict[str, Any]:
    """Tokenize the clips at t frames; Parquet bytes of the VTok and baseline columns per clip, and of the
    decoder targets (written in a table of their own, so the token figures stay what they were)."""

    from pipelines.tokenize.sink import build_token_table
    from pipelines.tokenize.targets import lowres_frames, vae_input_frames
    from schemas.token_shard import shard_metadata
    from vtok import __version__
    from vtok.video import DecodeConfig, decode_clip

    cfg = DecodeConfig(fps=None, num_frames=t, max_frames=t, size=tokenizer.image_size)
    records: list[dict[str, Any]] = []
    targets: list[dict[str, np.ndarray]] = []
    for uri in uris:
        clip = decode_clip(uri, cfg)
        assert len(clip.frame_indices) == t, f"{uri}: {len(clip.frame_indices)} frames, expected {t}"
        tokens = tokenizer.encode([clip.frames])[0]
        records.append(
            {
                "sample_key": uri, "source_uri": uri, "caption": None, "clip_start_s": clip.clip_start_s,
                "clip_end_s": clip.clip_end_s, "source_fps": clip.info.source_fps, "height": clip.info.height,
                "width": clip.info.width, "attributes": None, "frame_indices": clip.frame_indices.tolist(),
                "key_tokens": tokens.key_tokens, "residual_features": tokens.residual_features,
                "residual_tokens": None, "frame_tokens": tokens.frame_tokens,
            }
        )
        targets.append({"frames_lowres": lowres_frames(clip.frames, LOWRES_SIDE),
                        "latents": vae.encode(vae_input_frames(clip.frames, vae_frames_for(t), tokenizer.image_size))})
    meta = shard_metadata(tokenizer.fingerprint, tokenizer.describe(), __version__)
    target_table = build_token_table([r | x for r, x in zip(records, targets)], meta)
    target_stored, _ = _stored_bytes(target_table, _write_variants(target_table)["sink"])
    table_ = build_token_table(records, meta)
    variants = {name: _stored_bytes(table_, options) for name, options in _write_variants(table_).items()}
    stored, file_bytes = variants["sink"]
    n = len(records)
    dim = tokenizer.hidden_size
    vtok_tokens = [r["key_tokens"].shape[0] + r["residual_features"].shape[0] for r in records]
    frame_tokens = [r["frame_tokens"].shape[0] * r["frame_tokens"].shape[1] for r in records]
    vtok_stored = (stored["key_tokens"] + stored["residual_features"]) / n
    frames_stored = stored["frame_tokens"] / n
    vtok_raw = float(np.mean(vtok_tokens)) * dim * 4
    frames_raw = float(np.mean(frame_tokens)) * dim * 4
    return {
        "T": t,
        "D": dim,
        "clips": n,
        "vtok_tokens": float(np.mean(vtok_tokens)),
        "frame_sampling_tokens": float(np.mean(frame_tokens)),
        "vtok_stored_bytes": vtok_stored,
        "frame_sampling_stored_bytes": frames_stored,
        "stored_ratio": frames_stored / vtok_stored,
        "vtok_compression": vtok_stored / vtok_raw,
        "frame_sampling_compression": frames_stored / frames_raw,
        "file_bytes_per_clip": file_bytes / n,
        "column_bytes_per_clip": {k: v / n for k, v in stored.items()},
        "targets": {
            column: {"shape": list(targets[0][column].shape), "raw_bytes": targets[0][column].nbytes,
                     "stored_bytes": target_stored[column] / n}
            for column in ("frames_lowres", "latents")
        },
        "write_variants": {
            name: {
                "vtok_stored_bytes": (cols["key_tokens"] + cols["residual_features"]) / n,
                "frame_sampling_stored_bytes": cols["frame_tokens"] / n,
                "file_bytes_per_clip": size / n,
            }
            for name, (cols, size) in variants.items()
        },
    }


def _write_variants(table_: Any) -> dict[str, dict[str, Any]]:
    """Parquet writer options compared: the sink's, and pyarrow's defaults (what the sink wrote before).

    pyarrow dictionary-encodes every column by default; float tensors are (nearly) all distinct values,
    so the dictionary page holds every value once more plus an index per value until it falls back to
    plain encoding at 1 MB. BYTE_STREAM_SPLIT puts the k-th byte of every float together, which zstd
    compresses better (the exponent bytes repeat). Both are standard Parquet that pyarrow, DuckDB and
    Hugging Face datasets read.
    """
    from pipelines.tokenize.sink import tensor_encodings

    sink = tensor_encodings(table_.schema)
    return {
        "sink": {"compression": "zstd", **sink},
        "pyarrow defaults (the sink before)": {"compression": "zstd"},
        "no dictionary on tensors, plain": {"compression": "zstd", "use_dictionary": sink["use_dictionary"]},
    }


def _stored_bytes(table_: Any, options: dict[str, Any]) -> tuple[dict[str, int], int]:
    """(compressed bytes per top-level column, file bytes) of the table written with `options`."""
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table_, buf, **options)
    footer = pq.ParquetFile(io.BytesIO(buf.getvalue())).metadata
    stored: dict[str, int] = {}
    for g in range(footer.num_row_groups):
        group = footer.row_group(g)
        for c in range(group.num_columns):
            col = group.column(c)
            # Nested columns are stored per leaf ("key_tokens.list.element.list.element"): sum by top name.
            top = col.path_in_schema.split(".")[0]
            stored[top] = stored.get(top, 0) + col.total_compressed_size
    return stored, len(buf.getvalue())


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--clips", type=int, default=None, help="clips measured per T (default 32; 4 with --quick)")
    p.add_argument("--residual-grid", type=int, default=1,
                   help="tokenizer.residual_grid r: r*r residual tokens per step (default 1)")
    args = p.parse_args()
    num_clips = args.clips or (4 if args.quick else 32)

    from bench.pipeline import make_corpus
    from vtok.tokenizer import VTokTokenizer
    from vtok.tokenizer_spec import TokenizerConfig
    from vtok.video_vae import VideoVAE, ensure_tiny_wan_vae, read_vae_spec

    # 128x128 shapes-world videos of 64 frames: every T up to 64 samples distinct frames.
    manifest = make_corpus(num_clips, 128, 128, max(T_VALUES), 8.0)
    root = manifest.rsplit("/", 1)[0]
    uris = [f"{root}/videos/shapes_{i:06d}.mp4" for i in range(num_clips)]
    tokenizer = VTokTokenizer(TokenizerConfig(device="cpu", residual_grid=args.residual_grid))
    cells = args.residual_grid * args.residual_grid

    def residual_text(steps: int) -> str:
        return str(steps) if cells == 1 else f"{cells}*{steps}"
    vae = VideoVAE(read_vae_spec(str(ensure_tiny_wan_vae())), "cpu")
    cfg = dataclasses.asdict(tokenizer.cfg)

    rows: list[list[Any]] = []
    results: list[dict[str, Any]] = []
    for t in T_VALUES:
        log(f"T = {t}: tokenizing {num_clips} clips")
        a = analytic(t, tokenizer.cfg.grid, tokenizer.cfg.residual_stride, CLIP_L_336["hidden"], args.residual_grid)
        m = measured(t, uris, tokenizer, vae)
        assert m["vtok_tokens"] == a["vtok_tokens"] and m["frame_sampling_tokens"] == a["frame_sampling_tokens"]
        projected = {
            "vtok_bytes": a["vtok_bytes_fp32"] * m["vtok_compression"],
            "frame_sampling_bytes": a["frame_sampling_bytes_fp32"] * m["frame_sampling_compression"],
        }
        results.append({"T": t, "analytic_clip_l_336": a, "measured_tiny": m, "projected_clip_l_336": projected,
                        "analytic_targets": analytic_targets(t)})
        rows.append([
            t, f"{a['vtok_tokens']} = {a['S']} + {residual_text(a['R'])}", a["frame_sampling_tokens"], a["token_ratio"],
            a["vtok_bytes_fp32"] / 1024, a["frame_sampling_bytes_fp32"] / 1024,
            m["vtok_stored_bytes"] / 1024, m["frame_sampling_stored_bytes"] / 1024, m["stored_ratio"],
            projected["vtok_bytes"] / 1024, projected["frame_sampling_bytes"] / 1024,
        ])
    headers = [
        "T", f"VTok tokens {vtok_formula(args.residual_grid)}", "T x S tokens", "token ratio",
        "VTok KiB (D=1024 fp32)", "T x S KiB (D=1024 fp32)",
        "VTok KiB stored (tiny D=64)", "T x S KiB stored (tiny D=64)", "stored ratio (tiny)",
        "VTok KiB proj. (D=1024)", "T x S KiB proj. (D=1024)",
    ]
    print(table(headers, rows))
    vrows = []
    for r in results:
        for name, v in r["measured_tiny"]["write_variants"].items():
            vrows.append([r["T"], name, v["vtok_stored_bytes"] / 1024, v["frame_sampling_stored_bytes"] / 1024,
                          v["frame_sampling_stored_bytes"] / v["vtok_stored_bytes"],
                          v["vtok_stored_bytes"] / (r["measured_tiny"]["vtok_tokens"] * r["measured_tiny"]["D"] * 4)])
    trows = []
    for r in results:
        m, a, tt = r["measured_tiny"], r["analytic_clip_l_336"], r["analytic_targets"]
        lowres, latents = m["targets"]["frames_lowres"], m["targets"]["latents"]
        trows.append([
            r["T"], a["vtok_bytes_fp32"] / 1024, tt["frames_lowres_bytes"] / 1024, lowres["stored_bytes"] / 1024,
            f"{tt['latents_shape']}", tt["latents_bytes"] / 1024, f"{latents['shape']}", latents["raw_bytes"] / 1024,
            latents["stored_bytes"] / 1024,
        ])
    print(f"\nDecoder targets per clip (frames_lowres at {LOWRES_SIDE} px; latents of 1 + 4k frames; "
          f"{WAN_VAE['name']} at {WAN_VAE['size']} px analytic, the tiny Wan VAE at 64 px measured):")
    print(table(["T", "VTok KiB (D=1024 fp32)", "frames_lowres KiB raw", "frames_lowres KiB stored",
                 "WAN latents shape", "WAN latents KiB raw", "tiny latents shape", "tiny latents KiB raw",
                 "tiny latents KiB stored"], trows))
    print("\nParquet writer options (tiny D=64, real tokens):")
    print(table(["T", "writer", "VTok KiB/clip", "T x S KiB/clip", "stored ratio", "VTok stored / raw fp32"], vrows))
    out = write_results(
        "tokens" if cells == 1 else f"tokens_r{args.residual_grid}",
        {"params": {"clips": num_clips, "quick": args.quick, "tokenizer": cfg, "analytic_model": CLIP_L_336,
                    "lowres_side": LOWRES_SIDE, "analytic_vae": WAN_VAE},
         "results": results},
        args.out,
    )
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
