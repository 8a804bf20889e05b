"""VTok's token-count rules in one place: which sampled frames get a residual, and what a clip costs.

A clip of T sampled frames keeps S = g*g key tokens of its first frame and one residual step for every
`stride`-th later frame: positions stride, 2*stride, ... < T, so R = len(residual_positions(T, stride)).
Each residual step is pooled to an r x r grid (`tokenizer.residual_grid`, default 1: one pooled residual
per step), so a clip stores r*r*R residual tokens and costs S + r*r*R. Frame sampling keeps S tokens of
every frame: T*S.

Stored layout of residual_features (and residual_tokens) for r > 1: [R * r*r, D], step-major, the r*r
cells of a step in row-major order (row i, column j of the grid at index i*r + j), i.e. the [R, r, r, D]
array flattened over its first three axes. r is recorded in the tokenizer config (`residual_grid`; absent
means 1), so `rows.reshape(R, r, r, D)` recovers the grid exactly; r = 1 is today's [R, D].
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

RESIDUAL_GRID_KEY = "residual_grid"
"""The tokenizer config key (as stored in shard metadata and the manifest) recording r; absent = 1."""


def residual_positions(num_frames: int, stride: int) -> list[int]:
    """Positions (within the sampled frames) that get a residual step: stride, 2*stride, ... < T."""
    assert stride >= 1, f"residual stride must be >= 1, got {stride}"
    return list(range(stride, num_frames, stride))


def num_residuals(num_frames: int, stride: int) -> int:
    """R, the residual steps of a clip of T sampled frames."""
    return len(residual_positions(num_frames, stride))


def residual_grid_of(tokenizer: Mapping[str, Any] | None) -> int:
    """r of a stored tokenizer config (a manifest's or a shard's "tokenizer"): 1 where it records none."""
    value = (tokenizer or {}).get(RESIDUAL_GRID_KEY)
    return 1 if value is None else int(value)


def num_residual_tokens(num_frames: int, stride: int, residual_grid: int = 1) -> int:
    """r*r*R: the residual tokens (rows of residual_features) of a clip of T sampled frames."""
    return residual_grid * residual_grid * num_residuals(num_frames, stride)


def vtok_formula(residual_grid: int = 1) -> str:
    """How a clip's VTok count is made, for labels: "S+R", or "S+r*r*R" with a residual grid."""
    return "S+R" if residual_grid == 1 else "S+r*r*R"


def residual_rows_text(steps: int, residual_grid: int) -> str:
    """How many residual rows a clip should have, for error messages: "R=5", or "r*r*R=4*5=20" when r > 1."""
    cells = residual_grid * residual_grid
    return f"R={steps}" if cells == 1 else f"r*r*R={cells}*{steps}={cells * steps}"


def num_key_tokens(grid: int) -> int:
    """S for a g x g key grid."""
    return grid * grid


def vtok_tokens(num_frames: int, grid: int, stride: int, residual_grid: int = 1) -> int:
    """S + r*r*R: what one clip costs in VTok tokens."""
    return num_key_tokens(grid) + num_residual_tokens(num_frames, stride, residual_grid)


def frame_sampling_tokens(num_frames: int, grid: int) -> int:
    """T * S: what one clip costs with frame sampling at the same grid."""
    return num_frames * num_key_tokens(grid)


def mean_counts(frame_counts: dict[int, int], stride: int) -> tuple[float, float]:
    """(mean R, mean T) over clips, from {T: number of clips with T sampled frames}; zeros when empty."""
    clips = sum(frame_counts.values())
    if not clips:
        return 0.0, 0.0
    r = sum(num_residuals(t, stride) * n for t, n in frame_counts.items()) / clips
    return r, sum(t * n for t, n in frame_counts.items()) / clips
