"""Visual tokens -> the Wan transformer's encoder_hidden_states: the slot layout and the adapter.

    key token    V(s)_i  ->  out(key_in(V(s)_i))   + kind[key] + cell[i]    + time[0]
    residual     r_t     ->  out(res_in(r_t))      + kind[res] + cell[none] + time[t]     t = 1..R
    baseline     f_k,i   ->  out(key_in(f_k,i))    + kind[key] + cell[i]    + time[k]     k = 0..K-1

(With model.residual_grid = r > 1, a step's r*r residual rows r_t,c take cell[S + c] in place of cell[none] = cell[S].)

(key_in / res_in: per-dimension standardization (x - shift) * scale, LayerNorm + Linear into the hidden
width; out: GELU + Linear into text_dim, then a LayerNorm after the embeddings are added. The shift and
scale start as the identity; the training job sets them from its data's statistics, then they train.) The same layout and the same time / cell conventions as the
MLLM's visual slots (vtok.training.mllm_batch). Clips of a batch differ in R (or T): the states come
with a mask [B, L] (True = a real slot); padded slots are zeroed here and masked out of the
cross-attention by the decoder, so their values never matter. A dropped clip (classifier-free
guidance's condition dropout) gets the learned null sequence [null_tokens, text_dim] instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from vtok.models.decoder_config import DecoderConfig
from vtok.training.mllm_batch import KEY, RESIDUAL, even_frames, residual_layout


@dataclass
class Conditioning:
    """The visual tokens of B clips, split into key-like slots (key or frame tokens) and residual slots."""

    key: torch.Tensor  # [B, N, D] key tokens (N = S) or the chosen frames' tokens, flattened (N = K * S)
    key_valid: torch.Tensor  # [B, N] bool
    key_time: torch.Tensor  # [B, N] int64: 0 for key tokens, the frame's index k for frame tokens
    residual: torch.Tensor  # [B, R_rows, D_r] residual features / tokens, r*r rows per step (none for the baseline)
    residual_valid: torch.Tensor  # [B, R_rows] bool

    @property
    def batch_size(self) -> int:
        return int(self.key.shape[0])

    def to(self, device: torch.device | str) -> Conditioning:
        return Conditioning(*(getattr(self, f.name).to(device) for f in fields(self)))

    def repeat(self, n: int) -> Conditioning:
        """The batch n times over, [n * B, ...] (classifier-free guidance runs cond and null together)."""
        return Conditioning(*(getattr(self, f.name).repeat(n, *[1] * (getattr(self, f.name).dim() - 1))
                              for f in fields(self)))


def conditioning(batch: Mapping[str, Any], cfg: DecoderConfig) -> Conditioning:
    """The decoder's conditioning from a collate_tokens batch; refuses widths and sizes the adapter cannot read."""
    key = batch.get("key_tokens")
    if not isinstance(key, torch.Tensor) or key.dim() != 3:
        raise ValueError("key_tokens: a [B, S, D] tensor is needed (collate_tokens output)")
    b, s, d = key.shape
    if cfg.token_dim is not None and d != cfg.token_dim:
        raise ValueError(f"key_tokens are D={d} wide, the adapter was built for model.token_dim={cfg.token_dim}")
    if cfg.num_key is not None and s != cfg.num_key:
        raise ValueError(f"the shards have S={s} key tokens, the adapter was built for model.num_key={cfg.num_key}")
    if cfg.tokens == "vtok":
        column = cfg.residual_column
        res, valid = batch.get(column), batch.get("residual_mask")
        if not isinstance(res, torch.Tensor) or not isinstance(valid, torch.Tensor):
            raise ValueError(f"model.tokens=vtok, model.residual={cfg.residual}: the batch has no {column}")
        width = cfg.residual_dim or cfg.token_dim
        if width is not None and res.shape[-1] != width:
            raise ValueError(f"{column} are D={res.shape[-1]} wide, the adapter was built for "
                             f"model.residual_dim={width}")
        steps, _ = residual_layout(valid, cfg.residual_grid or 1)
        if len(steps) and int(steps[-1]) > cfg.max_time_steps:
            raise ValueError(f"{column}: R={int(steps[-1])} steps, more than model.max_time_steps={cfg.max_time_steps}")
        return Conditioning(key.float(), torch.ones(b, s, dtype=torch.bool, device=key.device),
                            torch.zeros(b, s, dtype=torch.long, device=key.device), res.float(), valid.bool())
    frames, frame_valid = batch.get("frame_tokens"), batch.get("frame_mask")
    if not isinstance(frames, torch.Tensor) or not isinstance(frame_valid, torch.Tensor):
        raise ValueError("model.tokens=frame_sampling needs frame_tokens in the shards (tokenizer.frame_tokens=true)")
    if tuple(frames.shape[2:]) != (s, d):
        raise ValueError(f"frame_tokens have [S, D]={list(frames.shape[2:])}, key_tokens {[s, d]}")
    frame_valid = frame_valid.bool()
    if cfg.frames is not None:
        t_b = frame_valid.sum(1)  # [B]
        if int(t_b.min()) < cfg.frames:
            raise ValueError(f"model.frames={cfg.frames} exceeds the clips' T={int(t_b.min())}")
        pick = torch.stack([even_frames(int(t), cfg.frames) for t in t_b]).to(frames.device)  # [B, K]
        frames = frames[torch.arange(b, device=frames.device)[:, None], pick]  # [B, K, S, D]
        frame_valid = torch.ones(b, cfg.frames, dtype=torch.bool, device=frames.device)
    t = frames.shape[1]
    if t - 1 > cfg.max_time_steps:
        raise ValueError(f"frame_tokens: T={t} frames, more than model.max_time_steps={cfg.max_time_steps} + 1")
    time = torch.arange(t, device=frames.device).repeat_interleave(s).expand(b, -1)  # [B, T*S]
    return Conditioning(frames.reshape(b, t * s, d).float(), frame_valid.repeat_interleave(s, dim=1),
                        time.contiguous(), key.new_zeros(b, 0, d).float(),
                        torch.zeros(b, 0, dtype=torch.bool, device=key.device))


class TokenAdapter(nn.Module):
    """Conditioning -> (encoder_hidden_states [B, L, text_dim], mask [B, L]); plus the null sequence."""

    def __init__(self, cfg: DecoderConfig, text_dim: int) -> None:
        super().__init__()
        if cfg.token_dim is None or cfg.num_key is None:
            raise ValueError("model.token_dim and model.num_key must be set (the data's D and S) to build the adapter")
        d, h = cfg.token_dim, cfg.adapter_hidden or text_dim
        self.cfg, self.num_key, self.text_dim = cfg, cfg.num_key, text_dim
        # Per-dimension input standardization (x - shift) * scale before key_in / res_in. A frozen encoder's
        # tokens vary across clips in a small part of their scale (about 3% of the variance for the tiny CLIP:
        # colour is a small change to each token), which a per-token LayerNorm does not bring out. Identity
        # until set_input_stats (the training job sets them from its data's statistics); trained and saved.
        self.key_shift = nn.Parameter(torch.zeros(d))
        self.key_scale = nn.Parameter(torch.ones(d))
        self.res_shift = nn.Parameter(torch.zeros(cfg.residual_dim or d))
        self.res_scale = nn.Parameter(torch.ones(cfg.residual_dim or d))
        self.key_in = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, h))
        self.res_in = nn.Sequential(nn.LayerNorm(cfg.residual_dim or d), nn.Linear(cfg.residual_dim or d, h))
        self.out = nn.Sequential(nn.GELU(), nn.Linear(h, text_dim))
        self.kind_embed = nn.Embedding(2, text_dim)  # KEY, RESIDUAL
        # Key grid cells 0..S-1, then the residual cells S..S+r*r-1 (just S = none at r = 1).
        self.cell_embed = nn.Embedding(self.num_key + (cfg.residual_grid or 1) ** 2, text_dim)
        self.time_embed = nn.Embedding(cfg.max_time_steps + 1, text_dim)
        self.norm = nn.LayerNorm(text_dim)
        self.null = nn.Parameter(torch.randn(cfg.null_tokens, text_dim) * 0.02)  # [N0, text_dim]
        for emb in (self.kind_embed, self.cell_embed, self.time_embed):
            nn.init.normal_(emb.weight, std=0.02)
        # The baseline has no residual slots: keep res_in out of the optimizer (and of DDP's unused-parameter check).
        self.res_in.requires_grad_(cfg.tokens == "vtok")
        self.res_shift.requires_grad_(cfg.tokens == "vtok")
        self.res_scale.requires_grad_(cfg.tokens == "vtok")

    @torch.no_grad()
    def set_input_stats(self, key: tuple[torch.Tensor, torch.Tensor],
                        residual: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """Standardize the inputs by (mean [D], std [D]) of the key (or frame) tokens and of the residual column.

        Each std is floored at a tenth of its RMS, so a near-constant dimension does not get a huge scale."""
        pairs = [(key, self.key_shift, self.key_scale)]
        if residual is not None:
            pairs.append((residual, self.res_shift, self.res_scale))
        for (mean, std), shift, scale in pairs:
            assert mean.shape == shift.shape and std.shape == scale.shape, (list(mean.shape), list(shift.shape))
            floor = max(0.1 * float(std.pow(2).mean().sqrt()), 1e-12)
            shift.copy_(mean)
            scale.copy_(1.0 / std.clamp_min(floor))

    def forward(
        self, cond: Conditioning, drop: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """States [B, L, text_dim] (zero at padded slots) and mask [B, L] (True = real); L >= null_tokens.

        `drop`: [B] bool, clips whose conditioning is replaced by the null sequence (then L >= null_tokens).
        """
        b, n = cond.key_valid.shape
        r = cond.residual_valid.shape[1]
        device = cond.key.device
        assert cond.key.shape[-1] == self.key_in[1].in_features, (
            f"key tokens D={cond.key.shape[-1]}, adapter D={self.key_in[1].in_features}"
        )
        cell = torch.arange(n, device=device) % self.num_key  # [N]
        key = self.out(self.key_in((cond.key - self.key_shift) * self.key_scale))
        key = key + self.kind_embed.weight[KEY] + self.cell_embed(cell)
        key = key + self.time_embed(cond.key_time.clamp(0, self.cfg.max_time_steps))  # [B, N, text_dim]
        parts, masks = [key], [cond.key_valid]
        # VTok mode runs res_in even when no clip of the batch has a residual (R = 0): DDP needs every trainable
        # parameter in each step's graph (the loop's prepare_model does not look for unused ones).
        if r or self.cfg.tokens == "vtok":
            steps, cells = (x.to(device) for x in residual_layout(cond.residual_valid, self.cfg.residual_grid or 1))
            steps = steps.clamp(max=self.cfg.max_time_steps)  # [R_rows]
            res = self.out(self.res_in((cond.residual - self.res_shift) * self.res_scale)) + self.kind_embed.weight[RESIDUAL]
            res = res + self.cell_embed(self.num_key + cells) + self.time_embed(steps)  # [B, R_rows, text_dim]
            parts.append(res)
            masks.append(cond.residual_valid)
        states, mask = self.norm(torch.cat(parts, 1)), torch.cat(masks, 1)  # [B, L, text_dim], [B, L]
        if drop is not None and bool(drop.any()):
            states, mask = self.replace_with_null(states, mask, drop)
        else:
            states = states + 0.0 * self.null.sum()  # the null sequence in the graph, for DDP (see above)
        assert bool(mask.any(1).all()), "every clip needs at least one real conditioning slot"
        return states * mask[..., None].to(states.dtype), mask

    def replace_with_null(
        self, states: torch.Tensor, mask: torch.Tensor, drop: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows `drop` [B] of states [B, L, C] / mask [B, L] replaced by the null sequence (L grows to >= N0)."""
        n0 = self.null.shape[0]
        b, length, c = states.shape
        if length < n0:
            states = torch.cat([states, states.new_zeros(b, n0 - length, c)], 1)
            mask = torch.cat([mask, mask.new_zeros(b, n0 - length)], 1)
            length = n0
        null = torch.cat([self.null, self.null.new_zeros(length - n0, c)], 0).to(states.dtype)  # [L, C]
        null_mask = torch.arange(length, device=mask.device) < n0  # [L]
        drop = drop.to(states.device).bool()
        return torch.where(drop[:, None, None], null, states), torch.where(drop[:, None], null_mask, mask)
