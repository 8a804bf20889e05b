"""The VTok tokenizer: one key frame's pooled patch grid plus one residual per later step.

For a clip of T sampled frames x_1..x_T and a frozen vision tower F with a p x p patch grid:

    key_tokens        = adaptive_avg_pool(F(x_1), g x g)               [S, D], S = g * g
    residual_features = mean(F(x_t)) - mean(F(x_1)),  t = 1 + k*stride   [R, D]
    residual_tokens   = g_phi(residual_features)                         [R, D'] (when g_phi is given)
    frame_tokens      = adaptive_avg_pool(F(x_t), g x g) for every t     [T, S, D] (the baseline)

With tokenizer.residual_grid = r > 1 each step keeps the layout of its change: the difference of the two
frames' r x r pooled grids, adaptive_avg_pool(F(x_t), r x r) - adaptive_avg_pool(F(x_1), r x r), stored
as [R * r*r, D] (step-major, cells row-major: schemas.tokens), and g_phi maps each of those rows.

Nothing here knows about Ray: the pipeline's encode stage wraps `VTokTokenizer`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from schemas.tokens import residual_positions
from vtok.tokenizer_spec import TokenizerConfig, TokenizerSpec


@dataclass
class ClipTokens:
    """The tokens of one clip, float32 numpy arrays."""

    key_tokens: np.ndarray  # [S, D]
    residual_features: np.ndarray  # [R * r*r, D] (r = cfg.residual_grid; [R, D] at r = 1)
    residual_tokens: np.ndarray | None  # [R * r*r, D'] when g_phi is loaded
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
        self.device, self.dtype = _resolve_device_dtype(cfg)
        self.spec = TokenizerSpec.load(cfg, str(self.dtype).removeprefix("torch."))
        self.encoder_path = self.spec.encoder.path
        self.model = _load_vision_tower(self.encoder_path).eval().to(self.device, self.dtype)
        self.model.requires_grad_(False)
        self.model_type = self.spec.encoder.model_type
        self.image_size = self.spec.encoder.image_size
        self.patch_size = self.spec.encoder.patch_size
        self.hidden_size = self.spec.encoder.hidden_size
        loaded = self.model.config
        assert (loaded.image_size, loaded.patch_size, loaded.hidden_size) == (
            self.image_size, self.patch_size, self.hidden_size
        ), f"{self.encoder_path}: the loaded model's sizes differ from its config.json"
        self.grid_side = self.image_size // self.patch_size
        self.mean = torch.tensor(self.spec.encoder.mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(self.spec.encoder.std, device=self.device).view(1, 3, 1, 1)
        self.g_phi: GPhi | None = None
        if self.spec.g_phi_file is not None:
            self.g_phi = GPhi.from_safetensors(self.spec.g_phi_file).eval().to(self.device, torch.float32)
            assert self.g_phi.fc1.in_features == self.hidden_size, "g_phi input must match the encoder width"
        self._fingerprint_hex: str | None = None

    @property
    def fingerprint(self) -> str:
        """TokenizerSpec.fingerprint (hashes the weight files): computed on first use.

        Encoder actors never read it, and hashing costs them start-up time (CLIP-L/336: 1.2 GB).
        """
        if self._fingerprint_hex is None:
            self._fingerprint_hex = self.spec.fingerprint()
        return self._fingerprint_hex

    @property
    def num_key_tokens(self) -> int:
        return self.cfg.grid * self.cfg.grid

    def describe(self) -> dict[str, Any]:
        """The config that determines the tokens, as stored in every shard's metadata."""
        return self.spec.describe()

    @torch.inference_mode()
    def _features(self, frames: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 [N, H, W, 3] at image_size -> (grid tokens [N, S, D], residual-pooled tokens [N, r*r, D]) in fp32.

        At r = 1 the residual pooling is the plain patch mean, computed as it always was (same bits)."""
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
            if self.cfg.residual_grid == 1:
                means.append(patches[:real].mean(dim=1, keepdim=True))
            else:
                means.append(pool_grid(patches[:real], self.cfg.residual_grid))
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
            residual = (mean_c[res_rows] - mean_c[0:1]).flatten(0, 1)  # [R, r*r, D] -> [R * r*r, D]
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
