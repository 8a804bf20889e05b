"""The VTok tokenizer: one key frame's pooled patch grid plus one residual per later step.

For a clip of T sampled frames x_1..x_T and a frozen vision tower F with a p x p patch grid:

    key_tokens        = adaptive_avg_pool(F(x_1), g x g)               [S, D], S = g * g
    residual_features = mean(F(x_t)) - mean(F(x_1)),  t = 1 + k*stride   [R, D]
    residual_tokens   = g_phi(residual_features)                         [R, D'] (when g_phi is given)
    frame_tokens      = adaptive_avg_pool(F(x_t), g x g) for every t     [T, S, D] (the baseline)

Nothing here knows about Ray: the pipeline's encode stage wraps `VTokTokenizer`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vtok.storage import cache_root, localize_dir

# CLIP's normalisation, used when a model directory has no preprocessor_config.json.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TINY_CLIP_NAME = "tiny-clip-v1"


@dataclass
class TokenizerConfig:
    """How clips become VTok tokens."""

    encoder: str | None = None
    """HF vision model directory (local or s3://); None uses the built-in tiny CLIP."""
    grid: int = 4
    """Side g of the pooled key-frame grid: S = g * g key tokens."""
    residual_stride: int = 1
    """One residual token per this many sampled frames after the key frame."""
    feature_layer: int = -1
    """Hidden layer whose patch tokens are used (-1 = last; CLIP MLLMs often use -2)."""
    g_phi: str | None = None
    """safetensors file of a trained g_phi (fc1/fc2); when given, residual_tokens are emitted."""
    frame_tokens: bool = True
    """Also emit the frame-sampling baseline tokens [T, S, D]."""
    device: str = "auto"
    """"auto" (cuda when present), "cpu" or "cuda[:N]"."""
    dtype: str = "auto"
    """"auto" (bf16 on GPU, fp32 on CPU), "float32" or "bfloat16"."""
    micro_batch: int = 32
    """Frames per forward pass; every pass is padded to this size so tokens never depend on batching."""
    storage_options: dict[str, Any] = field(default_factory=dict)
    """fsspec options for remote encoder / g_phi URIs."""

    def __post_init__(self) -> None:
        if self.grid < 1:
            raise ValueError(f"tokenizer.grid must be >= 1, got {self.grid}")
        if self.residual_stride < 1:
            raise ValueError(f"tokenizer.residual_stride must be >= 1, got {self.residual_stride}")
        if self.micro_batch < 1:
            raise ValueError(f"tokenizer.micro_batch must be >= 1, got {self.micro_batch}")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"tokenizer.dtype must be auto, float32 or bfloat16, got {self.dtype!r}")
        if not (self.device in ("auto", "cpu") or self.device.startswith("cuda")):
            raise ValueError(f"tokenizer.device must be auto, cpu or cuda[:N], got {self.device!r}")


@dataclass
class ClipTokens:
    """The tokens of one clip, float32 numpy arrays."""

    key_tokens: np.ndarray  # [S, D]
    residual_features: np.ndarray  # [R, D]
    residual_tokens: np.ndarray | None  # [R, D'] when g_phi is loaded
    frame_tokens: np.ndarray | None  # [T, S, D] when cfg.frame_tokens


class GPhi(nn.Module):
    """g_phi: the 2-layer GELU MLP that turns a residual feature into a residual token."""

    def __init__(self, dim_in: int, dim_hidden: int, dim_out: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim_in, dim_hidden)
        self.fc2 = nn.Linear(dim_hidden, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))

    @classmethod
    def from_safetensors(cls, path: str | Path) -> GPhi:
        from safetensors.torch import load_file

        state = load_file(str(path))
        expected = {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
        if set(state) != expected:
            raise ValueError(f"{path}: g_phi needs tensors {sorted(expected)}, found {sorted(state)}")
        hidden, dim_in = state["fc1.weight"].shape
        dim_out = state["fc2.weight"].shape[0]
        module = cls(dim_in, hidden, dim_out)
        module.load_state_dict(state)
        return module


def residual_positions(num_frames: int, stride: int) -> list[int]:
    """Positions (within the sampled frames) that get a residual token: stride, 2*stride, ... < T."""
    return list(range(stride, num_frames, stride))


def pool_grid(patches: torch.Tensor, grid: int) -> torch.Tensor:
    """[N, P, D] square patch grid -> [N, g*g, D] by adaptive average pooling."""
    n, p, d = patches.shape
    side = int(round(p**0.5))
    assert side * side == p, f"patch count {p} is not a square grid"
    x = patches.transpose(1, 2).reshape(n, d, side, side)  # [N, D, p, p]
    x = F.adaptive_avg_pool2d(x, grid)  # [N, D, g, g]
    return x.flatten(2).transpose(1, 2)  # [N, g*g, D]


def _load_vision_tower(path: Path) -> nn.Module:
    from transformers import AutoConfig, AutoModel, CLIPVisionModel, SiglipVisionModel

    model_type = AutoConfig.from_pretrained(path).model_type
    if model_type in ("clip_vision_model", "clip"):
        return CLIPVisionModel.from_pretrained(path)
    if model_type in ("siglip_vision_model", "siglip"):
        return SiglipVisionModel.from_pretrained(path)
    model = AutoModel.from_pretrained(path)
    # Full multimodal checkpoints keep their tower under vision_model.
    return getattr(model, "vision_model", model)


def _normalisation(path: Path, model_type: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    pre = path / "preprocessor_config.json"
    if pre.is_file():
        cfg = json.loads(pre.read_text())
        if "image_mean" in cfg and "image_std" in cfg:
            return tuple(cfg["image_mean"]), tuple(cfg["image_std"])
    if model_type.startswith("siglip"):
        return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    return CLIP_MEAN, CLIP_STD


def _resolve_device_dtype(cfg: TokenizerConfig) -> tuple[torch.device, torch.dtype]:
    if cfg.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
    if cfg.dtype == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    else:
        dtype = getattr(torch, cfg.dtype)
    return device, dtype


class VTokTokenizer:
    """A frozen vision tower plus the VTok pooling; encodes batches of clips at once."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        self.cfg = cfg
        encoder_uri = cfg.encoder or str(ensure_tiny_clip())
        self.encoder_path = localize_dir(encoder_uri, cfg.storage_options)
        self.device, self.dtype = _resolve_device_dtype(cfg)
        self.model = _load_vision_tower(self.encoder_path).eval().to(self.device, self.dtype)
        self.model.requires_grad_(False)
        model_cfg = self.model.config
        self.model_type: str = model_cfg.model_type
        self.image_size: int = int(model_cfg.image_size)
        self.patch_size: int = int(model_cfg.patch_size)
        self.hidden_size: int = int(model_cfg.hidden_size)
        self.grid_side = self.image_size // self.patch_size
        assert cfg.grid <= self.grid_side, f"grid {cfg.grid} exceeds the {self.grid_side}x{self.grid_side} patches"
        mean, std = _normalisation(self.encoder_path, self.model_type)
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        self.g_phi: GPhi | None = None
        if cfg.g_phi:
            self.g_phi = GPhi.from_safetensors(_localize_file(cfg.g_phi, cfg.storage_options))
            self.g_phi = self.g_phi.eval().to(self.device, torch.float32)
            assert self.g_phi.fc1.in_features == self.hidden_size, "g_phi input must match the encoder width"
        self._fingerprint_hex: str | None = None

    @property
    def fingerprint(self) -> str:
        """sha256 of the token-determining config and every weight; computed on first use.

        Encoder actors never read it, and hashing costs them start-up time: 0.8 s for CLIP-L/336's
        1.2 GB of fp32 weights on CPU (measured), plus the copy back from the GPU there. The weights
        are frozen after __init__, so hashing later gives the same digest.
        """
        if self._fingerprint_hex is None:
            self._fingerprint_hex = self._fingerprint()
        return self._fingerprint_hex

    @property
    def num_key_tokens(self) -> int:
        return self.cfg.grid * self.cfg.grid

    def describe(self) -> dict[str, Any]:
        """The config that determines the tokens, as stored in every shard's metadata."""
        return {
            "model_type": self.model_type,
            "model_config": self.model.config.to_dict(),
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "hidden_size": self.hidden_size,
            "grid": self.cfg.grid,
            "residual_stride": self.cfg.residual_stride,
            "feature_layer": self.cfg.feature_layer,
            "frame_tokens": self.cfg.frame_tokens,
            "compute_dtype": str(self.dtype).removeprefix("torch."),
            "mean": self.mean.flatten().tolist(),
            "std": self.std.flatten().tolist(),
            "g_phi": None if self.g_phi is None else list(self.g_phi.fc2.weight.shape),
        }

    def _fingerprint(self) -> str:
        """sha256 of the token-determining config and every weight, in name order."""
        h = hashlib.sha256()
        desc = self.describe()
        desc["model_config"] = {k: v for k, v in desc["model_config"].items() if k not in _VOLATILE_CONFIG_KEYS}
        h.update(json.dumps(desc, sort_keys=True, default=str).encode())
        modules = [("encoder", self.model)] + ([("g_phi", self.g_phi)] if self.g_phi is not None else [])
        for prefix, module in modules:
            for name, tensor in sorted(module.state_dict().items()):
                t = tensor.detach().to("cpu").contiguous()
                h.update(f"{prefix}.{name}:{t.dtype}:{tuple(t.shape)}".encode())
                h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()

    @torch.inference_mode()
    def _features(self, frames: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 [N, H, W, 3] at image_size -> (grid tokens [N, S, D], mean tokens [N, D]) in fp32."""
        n = frames.shape[0]
        assert frames.shape[1:] == (self.image_size, self.image_size, 3), (
            f"frames must be {self.image_size}x{self.image_size} RGB, got {frames.shape[1:]}"
        )
        mb = self.cfg.micro_batch
        grids, means = [], []
        for start in range(0, n, mb):
            chunk = torch.from_numpy(frames[start : start + mb]).to(self.device)
            real = chunk.shape[0]
            if real < mb:
                # Fixed-shape passes: a frame's tokens must not depend on what it was batched with.
                pad = chunk.new_zeros((mb - real, *chunk.shape[1:]))
                chunk = torch.cat([chunk, pad])
            x = chunk.permute(0, 3, 1, 2).float().div_(255.0)  # [mb, 3, H, W]
            x = ((x - self.mean) / self.std).to(self.dtype)
            if self.cfg.feature_layer == -1:
                hidden = self.model(pixel_values=x).last_hidden_state
            else:
                hidden = self.model(pixel_values=x, output_hidden_states=True).hidden_states[self.cfg.feature_layer]
            patches = hidden[:, -self.grid_side * self.grid_side :, :].float()  # [mb, P, D], CLS dropped
            grids.append(pool_grid(patches[:real], self.cfg.grid))
            means.append(patches[:real].mean(dim=1))
        return torch.cat(grids), torch.cat(means)

    @torch.inference_mode()
    def encode(self, clips: list[np.ndarray]) -> list[ClipTokens]:
        """Tokenize many clips in one go; each clip is uint8 [T, H, W, 3] with T >= 1."""
        selections: list[list[int]] = []
        for clip in clips:
            assert clip.ndim == 4 and clip.shape[0] >= 1, f"clip must be [T, H, W, 3], got {clip.shape}"
            t = clip.shape[0]
            # Without baseline tokens only the key frame and the residual frames go through F.
            used = list(range(t)) if self.cfg.frame_tokens else [0, *residual_positions(t, self.cfg.residual_stride)]
            selections.append(used)
        if not clips:
            return []
        frames = np.concatenate([clip[used] for clip, used in zip(clips, selections)])
        grid_tokens, mean_tokens = self._features(frames)
        out: list[ClipTokens] = []
        offset = 0
        for clip, used in zip(clips, selections):
            k = len(used)
            grid_c, mean_c = grid_tokens[offset : offset + k], mean_tokens[offset : offset + k]
            offset += k
            row = {pos: i for i, pos in enumerate(used)}
            res_rows = [row[p] for p in residual_positions(clip.shape[0], self.cfg.residual_stride)]
            residual = mean_c[res_rows] - mean_c[0:1]  # [R, D]
            residual_tokens = None
            if self.g_phi is not None:
                residual_tokens = self.g_phi(residual).cpu().numpy() if len(res_rows) else np.zeros(
                    (0, self.g_phi.fc2.out_features), np.float32
                )
            out.append(
                ClipTokens(
                    key_tokens=grid_c[0].cpu().numpy(),
                    residual_features=residual.cpu().numpy(),
                    residual_tokens=residual_tokens,
                    frame_tokens=grid_c.cpu().numpy() if self.cfg.frame_tokens else None,
                )
            )
        return out


# Keys of a saved config that record how it was saved, not what it computes.
_VOLATILE_CONFIG_KEYS = {"transformers_version", "_name_or_path", "torch_dtype", "dtype", "architectures"}


def _localize_file(uri: str, storage_options: dict[str, Any]) -> Path:
    from vtok.storage import is_local, strip_file_scheme

    if is_local(uri):
        return Path(strip_file_scheme(uri))
    return localize_dir(uri.rsplit("/", 1)[0], storage_options) / uri.rsplit("/", 1)[1]


def save_tiny_vision_model(path: Path, kind: str = "clip", seed: int = 0, image_size: int = 64) -> Path:
    """Build a tiny CLIP or SigLIP vision tower with seeded weights and save it the HF way."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

    dims = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    torch.manual_seed(seed)
    if kind == "clip":
        model = CLIPVisionModel(CLIPVisionConfig(image_size=image_size, patch_size=8, **dims))
        mean, std = CLIP_MEAN, CLIP_STD
    elif kind == "siglip":
        model = SiglipVisionModel(SiglipVisionConfig(image_size=image_size, patch_size=8, **dims))
        mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    else:
        raise ValueError(f"unknown tiny model kind {kind!r}: use clip or siglip")
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    (path / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": list(mean), "image_std": list(std), "size": image_size}, indent=2)
    )
    return path


def ensure_tiny_clip() -> Path:
    """The default encoder: a tiny seeded CLIP saved once into the cache and loaded from there."""
    import shutil
    import tempfile

    target = cache_root() / "models" / TINY_CLIP_NAME
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".staging-"))
    save_tiny_vision_model(staging, "clip", seed=0)
    try:
        staging.rename(target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)  # a concurrent process saved it first
    return target
