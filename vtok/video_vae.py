"""Video VAE latents, the decoder's real-scale target: a diffusers video VAE directory, read and run on clips.

`read_vae_spec` reads only the directory's config.json and lists its weight files, so the driver can check
the settings against the VAE's compression and fingerprint it without importing torch or diffusers; the
encoder actors load the model with `VideoVAE`. `ensure_tiny_wan_vae` caches the tiny seeded AutoencoderKLWan
(vtok.models.decoder_tiny) the demo loads the real way (no hub here).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vtok.errors import InputError
from vtok.storage import build_once, cache_root, localize_dir

# Init defaults of the classes below, for a config.json written by hand that leaves keys out
# (save_pretrained writes them all).
_WAN_DEFAULTS: dict[str, Any] = {"z_dim": 16, "dim_mult": [1, 2, 4, 4], "temperal_downsample": [False, True, True],
                                 "patch_size": None}
# AutoencoderKLWan's encoder reads the first frame, then chunks of 4: frames past the last whole chunk are dropped.
_WAN_CHUNK_FRAMES = 4
VAE_CLASSES: tuple[str, ...] = ("AutoencoderKLWan",)
"""diffusers classes accepted as targets.vae; another needs its own frame-count and compression rules."""
_VOLATILE_CONFIG_KEYS = {"_diffusers_version", "_name_or_path", "_use_default_values"}
_WEIGHT_SUFFIXES = {".safetensors", ".bin"}

TINY_WAN_VAE_NAME = "tiny-wan-vae-v1"
"""Cache folder of the tiny demo VAE; a new name when its config or seed changes."""


@dataclass(frozen=True)
class VaeSpec:
    """A saved diffusers video VAE as its files describe it."""

    uri: str
    """Where it was named (what error messages show)."""
    path: Path
    """Its local directory (a download of a remote one)."""
    class_name: str
    config: dict[str, Any]
    """config.json minus the keys that only record how it was saved."""
    latent_channels: int
    spatial_factor: int
    """Pixels per latent along each side."""
    temporal_factor: int
    """Frames per latent step after the first."""
    frame_step: int
    """The VAE takes 1 + k * frame_step frames (a multiple of temporal_factor)."""
    latents_mean: tuple[float, ...]
    latents_std: tuple[float, ...]
    """Per-channel statistics the stored latents are normalized by, as WAN's pipelines denoise them."""
    weight_files: tuple[Path, ...]

    def latent_shape(self, frames: int, size: int) -> list[int]:
        """[C, T', H', W'] of the latents of `frames` frames of size x size."""
        steps = 1 + (frames - 1) // self.temporal_factor
        return [self.latent_channels, steps, size // self.spatial_factor, size // self.spatial_factor]

    def check(self, frames: int, size: int | None, key: str = "targets") -> None:
        """Refuse a frame count or side the VAE does not take, naming the key; `size` None: not known yet."""
        t = self.frame_step
        if frames < 1 or (frames - 1) % t:
            below = 1 + max(0, (frames - 1) // t) * t
            raise InputError(f"{key}.vae_frames={frames}: {self.uri} ({self.class_name}) takes 1 + {t}k frames "
                             f"(e.g. {below} or {below + t})")
        s = self.spatial_factor
        if size is not None and (size < s or size % s):
            raise InputError(f"{key}.vae_size={size}: {self.uri} ({self.class_name}) takes sides divisible by "
                             f"its spatial compression {s} (e.g. {max(s, size // s * s)})")

    def fingerprint(self) -> str:
        """sha256 of the class, its config and the bytes of every weight file (as the tokenizer's fingerprint)."""
        h = hashlib.sha256(json.dumps({"class": self.class_name, "config": self.config}, sort_keys=True).encode())
        for f in self.weight_files:
            h.update(f"\n{f.relative_to(self.path).as_posix()}:{_file_sha256(f)}".encode())
        return h.hexdigest()

    def identity(self) -> str:
        """What the dataset identity records for this VAE: class and weights, not where it was read from."""
        return f"{self.class_name}:{self.fingerprint()[:16]}"


def read_vae_spec(uri: str, storage_options: dict[str, Any] | None = None, key: str = "targets.vae") -> VaeSpec:
    """The VAE directory `uri` (local or remote; remote ones are downloaded once), refused unless it is a
    diffusers video VAE of a class in VAE_CLASSES; errors name `key` and the URI."""
    try:
        path = localize_dir(uri, storage_options)
    except FileNotFoundError:
        raise InputError(f"{key}={uri}: no such directory") from None
    config_file = path / "config.json"
    if not config_file.is_file():
        raise InputError(f"{key}={uri}: no config.json, not a diffusers model directory")
    try:
        saved = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{key}={uri}: config.json is not valid JSON ({err})") from None
    class_name = saved.get("_class_name") if isinstance(saved, dict) else None
    if not class_name:
        raise InputError(f"{key}={uri}: config.json names no diffusers class (_class_name), not a diffusers "
                         f"model directory (expected {', '.join(VAE_CLASSES)})")
    if class_name not in VAE_CLASSES:
        raise InputError(f"{key}={uri}: is a diffusers {class_name}, expected a video VAE ({', '.join(VAE_CLASSES)})")
    weights = tuple(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES))
    if not weights:
        raise InputError(f"{key}={uri}: no weight files ({', '.join(sorted(_WEIGHT_SUFFIXES))})")
    cfg = _WAN_DEFAULTS | saved
    channels = int(cfg["z_dim"])
    mean, std = saved.get("latents_mean"), saved.get("latents_std")
    if not isinstance(mean, list) or not isinstance(std, list) or len(mean) != channels or len(std) != channels:
        count = len(mean) if isinstance(mean, list) else "no"
        raise InputError(f"{key}={uri}: config.json has {count} latents_mean values (and latents_std), the VAE has "
                         f"z_dim={channels} latent channels; the stored latents are normalized by them")
    temporal = 2 ** sum(bool(d) for d in cfg["temperal_downsample"])
    return VaeSpec(
        uri=uri, path=path, class_name=class_name,
        config={k: v for k, v in saved.items() if k not in _VOLATILE_CONFIG_KEYS},
        latent_channels=channels, spatial_factor=2 ** (len(cfg["dim_mult"]) - 1) * int(cfg["patch_size"] or 1),
        temporal_factor=temporal, frame_step=math.lcm(temporal, _WAN_CHUNK_FRAMES),
        latents_mean=tuple(float(v) for v in mean), latents_std=tuple(float(v) for v in std), weight_files=weights,
    )


class VideoVAE:
    """A loaded video VAE that turns clips into latents; torch and diffusers load here, in the actor."""

    def __init__(self, spec: VaeSpec, device: str = "auto", dtype: str = "float32") -> None:
        import diffusers
        import torch

        self.spec = spec
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                   "cpu" if device == "auto" else device)
        self.dtype = getattr(torch, dtype)
        model_class = getattr(diffusers, spec.class_name)
        self.model = model_class.from_pretrained(spec.path, torch_dtype=self.dtype).eval().to(self.device)
        self.model.requires_grad_(False)
        self.mean = torch.tensor(spec.latents_mean, device=self.device).view(-1, 1, 1, 1)
        self.std = torch.tensor(spec.latents_std, device=self.device).view(-1, 1, 1, 1)

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """uint8 [T, H, W, 3] -> float32 latents [C, T', H', W']: the posterior's mode (so reruns agree),
        normalized per channel, (mode - latents_mean) / latents_std, the space WAN's pipelines denoise in.

        One clip per pass: batched convolutions differ in the last bits, and a clip's latents must not
        depend on what it was batched with.
        """
        import torch

        assert frames.ndim == 4 and frames.shape[-1] == 3 and frames.dtype == np.uint8, frames.shape
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
            # [T, H, W, 3] uint8 -> [1, 3, T, H, W] in [-1, 1], the range diffusers video VAEs are trained on.
            x = x.permute(3, 0, 1, 2).unsqueeze(0).float().div_(127.5).sub_(1.0).to(self.dtype)
            mode = self.model.encode(x).latent_dist.mode()[0].float()
            return ((mode - self.mean) / self.std).cpu().numpy()


def ensure_tiny_wan_vae() -> Path:
    """The demo's VAE: the tiny seeded AutoencoderKLWan (8x in space, 4x in time), saved once into the cache
    and loaded from there."""
    target = cache_root() / "models" / TINY_WAN_VAE_NAME
    if (target / "config.json").is_file():
        return target
    from vtok.models.decoder_tiny import save_tiny_wan_vae

    return build_once(target, lambda staging: save_tiny_wan_vae(staging, compression=8))


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()
