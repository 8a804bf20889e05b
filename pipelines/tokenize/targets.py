"""Decoder targets written beside the tokens in the same pass: small frames and video VAE latents.

Both come from the frames the decode stage already has (decode.size, the encoder's input size), so no
video is read twice: the decode stage (CPU) makes frames_lowres and the VAE's input frames, the encoder
actors (GPU) run the VAE. Each target that is on becomes part of the dataset's identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vtok.errors import InputError
from vtok.video import resize_center_crop
from vtok.video_vae import VaeSpec, read_vae_spec

VAE_DTYPES = ("float32", "bfloat16")
TARGET_COLUMNS = ("frames_lowres", "latents")


@dataclass
class TargetsConfig:
    """Decoder training targets stored with the tokens (each off by default)."""

    lowres_side: int | None = None
    """frames_lowres [T, side, side, 3] uint8: every sampled frame's shorter side resized to this, then
    centre-cropped square, so a DiT with patch size 2 or 4 takes it (pick a multiple of the patch size);
    at most decode.size (the encoder's input size); 0 or null: off."""
    vae: str | None = None
    """diffusers video VAE directory (local or s3://, an AutoencoderKLWan) whose latents [C, T', H', W']
    float32 are stored: the posterior's mode of pixels in [-1, 1], normalized by its latents_mean and
    latents_std as WAN's pipelines denoise them; null: off."""
    vae_size: int = 0
    """Side of the square frames the VAE encodes: divisible by its spatial compression (8 for Wan) and at
    most decode.size; 0: decode.size."""
    vae_frames: int = 9
    """Frames the VAE encodes per clip, 1 + 4k for Wan: picked evenly from the clip's sampled frames
    (repeating some when it has fewer); decode.num_frames equal to this encodes exactly the sampled frames."""
    vae_dtype: str = "float32"
    """VAE compute dtype, float32 or bfloat16 (latents are stored as float32 either way)."""

    def __post_init__(self) -> None:
        if self.lowres_side is not None and (isinstance(self.lowres_side, bool) or self.lowres_side < 0):
            raise ValueError(f"targets.lowres_side must be >= 0 or null, got {self.lowres_side!r}")
        if self.vae_size < 0:
            raise ValueError(f"targets.vae_size must be >= 0 (0: decode.size), got {self.vae_size}")
        if self.vae_frames < 1:
            raise ValueError(f"targets.vae_frames must be >= 1, got {self.vae_frames}")
        if self.vae_dtype not in VAE_DTYPES:
            raise ValueError(f"targets.vae_dtype must be one of {VAE_DTYPES}, got {self.vae_dtype!r}")
        if self.vae is not None and not self.vae.strip():
            self.vae = None


@dataclass(frozen=True)
class TargetPlan:
    """The targets of a run as the stages compute them: sizes resolved against the frame size, 0 = off."""

    lowres_side: int = 0
    vae_uri: str | None = None
    vae_size: int = 0
    vae_frames: int = 0
    vae_dtype: str = "float32"
    storage_options: dict[str, Any] | None = None
    """For a remote VAE directory: the actors download it themselves."""

    @property
    def any(self) -> bool:
        return bool(self.lowres_side or self.vae_uri)


@dataclass(frozen=True)
class ResolvedTargets:
    """What the driver knows of a run's targets: the stages' plan, the identity entries, the shapes."""

    plan: TargetPlan
    identity: dict[str, Any]
    """"targets.key" -> value for every target that is on; nothing when all are off, so a dataset made
    before targets existed keeps its identity."""
    shapes: dict[str, list[int]]
    """Column -> its per-clip shape: frames_lowres [side, side, 3] after T; latents [C, T', H', W']."""


def check_vae(cfg: TargetsConfig, storage_options: dict[str, Any] | None) -> VaeSpec | None:
    """The VAE named by targets.vae, refused (naming the key) unless it is a video VAE that takes the
    configured frame count and side; None when latents are off. Reads config.json only."""
    if cfg.vae is None:
        return None
    spec = read_vae_spec(cfg.vae, storage_options, "targets.vae")
    spec.check(cfg.vae_frames, cfg.vae_size or None)
    return spec


def resolve_targets(cfg: TargetsConfig, frame_size: int, storage_options: dict[str, Any] | None) -> ResolvedTargets:
    """Check the targets against the frames the decode stage makes (frame_size square) and plan them."""
    identity: dict[str, Any] = {}
    shapes: dict[str, list[int]] = {}
    side = cfg.lowres_side or 0
    if side > frame_size:
        raise InputError(f"targets.lowres_side={side} exceeds the frame size {frame_size} (decode.size, the "
                         f"encoder's input size) it is made from; choose at most {frame_size}")
    if side:
        identity["targets.lowres_side"] = side
        shapes["frames_lowres"] = [side, side, 3]
    spec = check_vae(cfg, storage_options)
    vae_size = 0
    if spec is not None:
        vae_size = cfg.vae_size or frame_size
        if vae_size > frame_size:
            raise InputError(f"targets.vae_size={vae_size} exceeds the frame size {frame_size} (decode.size, the "
                             f"encoder's input size) the VAE's frames are made from; choose at most {frame_size}")
        spec.check(cfg.vae_frames, vae_size)
        # The resolved side, so vae_size=0 and vae_size=<decode.size> name the same dataset.
        identity |= {"targets.vae": spec.identity(), "targets.vae_size": vae_size,
                     "targets.vae_frames": cfg.vae_frames, "targets.vae_dtype": cfg.vae_dtype}
        shapes["latents"] = spec.latent_shape(cfg.vae_frames, vae_size)
    plan = TargetPlan(lowres_side=side, vae_uri=cfg.vae if spec is not None else None, vae_size=vae_size,
                      vae_frames=cfg.vae_frames if spec is not None else 0, vae_dtype=cfg.vae_dtype,
                      storage_options=storage_options)
    return ResolvedTargets(plan=plan, identity=identity, shapes=shapes)


def pick_frames(count: int, wanted: int) -> np.ndarray:
    """Indices of `wanted` frames spread evenly over `count` (nearest, half up; repeats when count < wanted)."""
    return np.floor(np.linspace(0, count - 1, wanted) + 0.5).astype(np.int64)


def lowres_frames(frames: np.ndarray, side: int) -> np.ndarray:
    """Sampled frames [T, H, W, 3] -> [T, side, side, 3] uint8 (shorter side to `side`, centre crop)."""
    return np.stack([resize_center_crop(f, side) for f in frames])


def vae_input_frames(frames: np.ndarray, count: int, size: int) -> np.ndarray:
    """The VAE's input for a clip: `count` of its sampled frames, evenly picked, at size x size, uint8."""
    return np.stack([resize_center_crop(frames[i], size) for i in pick_frames(len(frames), count)])
