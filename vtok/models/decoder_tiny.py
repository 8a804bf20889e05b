"""A tiny real WanTransformer3DModel and AutoencoderKLWan with seeded weights, saved the diffusers way.

Machines here reach no model hub, so the decoder's tests and the demo build the classes WAN2.2's
checkpoints use with toy configs, save them with save_pretrained (safetensors) and load them back with
from_pretrained, exactly as a real WAN directory is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TINY_WAN: dict[str, Any] = dict(
    patch_size=(1, 4, 4),
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=3,
    out_channels=3,
    text_dim=32,
    freq_dim=32,
    ffn_dim=64,
    num_layers=2,
    rope_max_seq_len=64,
)
"""The tiny WanTransformer3DModel's config (pixel space: 3 channels)."""

TINY_WAN_VAE_COMPRESSIONS = (2, 4, 8)
"""Spatial compressions the tiny AutoencoderKLWan is built with: 2 for the decoder's toy-scale latents,
8 (with 4x in time, as WAN2.1's VAE) for the tokenizer's `targets.vae` tests and demo."""


def tiny_wan_vae_config(compression: int = 2) -> dict[str, Any]:
    """AutoencoderKLWan kwargs of a tiny VAE: 4 latent channels, `compression`x down in space, and
    min(compression, 4)x in time (T' = 1 + (T - 1) / that), the temporal steps on its deepest levels."""
    if compression not in TINY_WAN_VAE_COMPRESSIONS:
        raise ValueError(f"compression={compression!r}: the tiny Wan VAE is built with one of "
                         f"{TINY_WAN_VAE_COMPRESSIONS}")
    levels = compression.bit_length() - 1
    temporal = min(levels, 2)
    return dict(
        base_dim=8,
        z_dim=4,
        dim_mult=[1] + [2] * levels,
        num_res_blocks=1,
        attn_scales=[],
        temperal_downsample=[False] * (levels - temporal) + [True] * temporal,
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
    )


def _save_seeded(class_name: str, config: dict[str, Any], out_dir: str | Path, seed: int) -> Path:
    """Build the diffusers model `class_name` from `config` with weights seeded by `seed`, and save it."""
    import diffusers
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(diffusers, class_name)(**config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    return out


def save_tiny_wan(out_dir: str | Path, seed: int = 0, **overrides: Any) -> Path:
    """Build a WanTransformer3DModel of TINY_WAN's sizes (updated by `overrides`), seeded, and save it."""
    return _save_seeded("WanTransformer3DModel", {**TINY_WAN, **overrides}, out_dir, seed)


def save_tiny_wan_vae(out_dir: str | Path, seed: int = 0, *, compression: int = 2, **overrides: Any) -> Path:
    """Build an AutoencoderKLWan of tiny_wan_vae_config(compression)'s sizes (updated by `overrides`), seeded,
    and save it."""
    return _save_seeded("AutoencoderKLWan", {**tiny_wan_vae_config(compression), **overrides}, out_dir, seed)
