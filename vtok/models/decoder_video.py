"""The decoder's two spaces: uint8 frames <-> the transformer's [-1, 1] pixels, and WAN VAE latents <-> frames.

    frames_lowres  [B, T, h, w, 3] uint8   <->  pixels   [B, 3, T, h, w] float in [-1, 1]
    latents        [B, C, T', H', W']      ->   frames   [B, T, H, W, 3] uint8 (through AutoencoderKLWan)

Latents are in the VAE's normalized space, as WanPipeline denoises them: (mu - latents_mean) / latents_std
per channel (encode_latents writes them so; decode_latents undoes it before vae.decode).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

TRANSFORMER_CLASS = "WanTransformer3DModel"
VAE_CLASS = "AutoencoderKLWan"


def frames_to_pixels(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames [B, T, h, w, 3] -> float [B, 3, T, h, w] in [-1, 1]."""
    assert frames.dim() == 5 and frames.shape[-1] == 3, f"frames must be [B, T, h, w, 3], got {list(frames.shape)}"
    return frames.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0


def pixels_to_frames(pixels: torch.Tensor) -> torch.Tensor:
    """float [B, 3, T, h, w] in [-1, 1] -> uint8 frames [B, T, h, w, 3] (clamped, rounded)."""
    assert pixels.dim() == 5 and pixels.shape[1] == 3, f"pixels must be [B, 3, T, h, w], got {list(pixels.shape)}"
    return ((pixels.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 4, 1).contiguous()


def diffusers_class(path: str | Path, key: str) -> dict[str, Any]:
    """The config.json of a diffusers model directory, or a ValueError naming `key`."""
    config = Path(path) / "config.json"
    if not config.is_file():
        raise ValueError(f"{key}={path}: not a diffusers model directory (no config.json)")
    try:
        return dict(json.loads(config.read_text()))
    except (OSError, ValueError) as err:
        raise ValueError(f"{key}={path}: config.json is not readable JSON ({err})") from None


def check_class(path: str | Path, expected: str, key: str) -> dict[str, Any]:
    """Refuse a diffusers directory of another class than `expected`, naming `key`; returns its config."""
    config = diffusers_class(path, key)
    found = config.get("_class_name")
    if found != expected:
        raise ValueError(f"{key}={path}: a {found!r} directory, expected a diffusers {expected}")
    return config


def load_vae(path: str | Path, key: str = "model.vae") -> Any:
    """A diffusers AutoencoderKLWan from a local directory (float32, eval, frozen), refusing other classes."""
    from diffusers import AutoencoderKLWan

    check_class(path, VAE_CLASS, key)
    vae = AutoencoderKLWan.from_pretrained(str(path), torch_dtype=torch.float32)
    vae.requires_grad_(False)
    return vae.eval()


def _latent_stats(vae: Any, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) [1, C, 1, 1, 1] of the VAE's latent normalization."""
    mean = torch.tensor(vae.config.latents_mean, dtype=like.dtype, device=like.device).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std, dtype=like.dtype, device=like.device).view(1, -1, 1, 1, 1)
    assert mean.shape[1] == like.shape[1], f"the VAE has {mean.shape[1]} latent channels, latents {like.shape[1]}"
    return mean, std


@torch.no_grad()
def encode_latents(vae: Any, frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames [B, T, H, W, 3] -> normalized latents [B, C, T', H', W'] (the posterior's mode)."""
    device = next(vae.parameters()).device
    pixels = frames_to_pixels(frames.to(device))
    z = vae.encode(pixels).latent_dist.mode()
    mean, std = _latent_stats(vae, z)
    return (z - mean) / std


@torch.no_grad()
def decode_latents(vae: Any, latents: torch.Tensor, normalized: bool = True) -> torch.Tensor:
    """Latents [B, C, T', H', W'] -> uint8 frames [B, T, H, W, 3]; `normalized`: as encode_latents writes them."""
    assert latents.dim() == 5, f"latents must be [B, C, T', H', W'], got {list(latents.shape)}"
    device = next(vae.parameters()).device
    z = latents.to(device=device, dtype=torch.float32)
    if normalized:
        mean, std = _latent_stats(vae, z)
        z = z * std + mean
    return pixels_to_frames(vae.decode(z, return_dict=False)[0])
