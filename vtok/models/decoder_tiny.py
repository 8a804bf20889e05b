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

TINY_WAN_VAE: dict[str, Any] = dict(
    base_dim=8,
    z_dim=4,
    dim_mult=[1, 2],
    num_res_blocks=1,
    attn_scales=[],
    temperal_downsample=[True],
    latents_mean=[0.0] * 4,
    latents_std=[1.0] * 4,
)
"""The tiny AutoencoderKLWan's config: 4 latent channels, 2x down in space and time (T' = 1 + (T - 1) / 2)."""


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


def save_tiny_wan_vae(out_dir: str | Path, seed: int = 0, **overrides: Any) -> Path:
    """Build an AutoencoderKLWan of TINY_WAN_VAE's sizes (updated by `overrides`), seeded, and save it."""
    return _save_seeded("AutoencoderKLWan", {**TINY_WAN_VAE, **overrides}, out_dir, seed)
