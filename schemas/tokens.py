"""VTok's token-count rules in one place: which sampled frames get a residual token, and what a clip costs.

A clip of T sampled frames keeps S = g*g key tokens of its first frame and one residual token for every
`stride`-th later frame: positions stride, 2*stride, ... < T, so R = len(residual_positions(T, stride)).
Frame sampling keeps S tokens of every frame: T*S.
"""

from __future__ import annotations


def residual_positions(num_frames: int, stride: int) -> list[int]:
    """Positions (within the sampled frames) that get a residual token: stride, 2*stride, ... < T."""
    assert stride >= 1, f"residual stride must be >= 1, got {stride}"
    return list(range(stride, num_frames, stride))


def num_residuals(num_frames: int, stride: int) -> int:
    """R for a clip of T sampled frames."""
    return len(residual_positions(num_frames, stride))


def num_key_tokens(grid: int) -> int:
    """S for a g x g key grid."""
    return grid * grid


def vtok_tokens(num_frames: int, grid: int, stride: int) -> int:
    """S + R: what one clip costs in VTok tokens."""
    return num_key_tokens(grid) + num_residuals(num_frames, stride)


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
