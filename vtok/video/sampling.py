"""Sampling and resizing: pure functions.

`sample_frame_indices` picks the source frames of a clip (the rule `SAMPLING_POLICY` names); the
resize and crop helpers give the size a frame is scaled to and its centre crop.
"""

from __future__ import annotations

import math

import numpy as np

from vtok.video.config import DecodeConfig

SAMPLING_POLICY = "uniform-when-capped-v1"
"""Names the frame-sampling rule of `sample_frame_indices`; datasets record it, so a change of rule
(a new name) is never mixed into an existing dataset."""


def _round_half_up_int(x: float) -> int:
    """_round_half_up of one float, without numpy's per-call overhead (same float64 arithmetic)."""
    return math.floor(x + 0.5 + 1e-9)


def _round_half_up(x: np.ndarray | float) -> np.ndarray:
    # np.round rounds half to even, which would make 7.5 -> 8 but 6.5 -> 6; the epsilon absorbs float
    # error in products such as 0.25 * 30.
    return np.floor(np.asarray(x, dtype=np.float64) + 0.5 + 1e-9).astype(np.int64)


def _clip_bounds_s(
    num_source_frames: int, source_fps: float, clip_start_s: float | None, clip_end_s: float | None
) -> tuple[float, float]:
    """The clip range in seconds: defaults to the whole video, start >= 0, end <= the duration."""
    duration = num_source_frames / source_fps
    start = 0.0 if clip_start_s is None else max(0.0, float(clip_start_s))
    end = duration if clip_end_s is None else min(duration, float(clip_end_s))
    return start, end


def _clip_frame_range(
    num_source_frames: int, source_fps: float, start: float, end: float
) -> tuple[int, int] | None:
    """First and last frame index of the clip [start, end): frames whose time k / fps lies in it."""
    if not end > start:
        return None
    eps = 1e-6
    first = math.ceil(start * source_fps - eps)
    last = min(math.ceil(end * source_fps - eps) - 1, num_source_frames - 1)
    if last < first:
        # A clip shorter than one frame interval: take the frame on screen at its start.
        first = last = min(math.floor(start * source_fps + eps), num_source_frames - 1)
    return first, last


def sample_frame_indices(
    num_source_frames: int,
    source_fps: float,
    cfg: DecodeConfig,
    clip_start_s: float | None = None,
    clip_end_s: float | None = None,
) -> np.ndarray:
    """Indices (int64, strictly increasing) of the source frames to decode for one clip.

    Source frame k is shown at time k / source_fps. The clip is [clip_start_s, clip_end_s), by default the
    whole video; the end is clamped to the duration num_source_frames / source_fps, and the clip's frames
    are those whose time lies in it (or the one on screen at the start, for a clip shorter than a frame).

    - `cfg.num_frames` set: min(num_frames, max_frames, frames in the clip) indices, evenly spaced from the
      clip's first to its last frame (linspace, rounded half up, which keeps them unique).
    - otherwise by `cfg.fps`: times start + k / fps for k = 0, 1, ... while < end; each maps to index
      round(t * source_fps) (half up) clamped into the clip; duplicates (a target fps above the source
      fps) are dropped.
    - when `cfg.fps` would give more than max_frames times, the clip is sampled as with
      num_frames = max_frames instead: max_frames frames spread evenly over the whole clip, at a lower
      effective rate (Qwen2.5-VL's policy), never the first max_frames / fps seconds only.

    Either way the indices span the whole clip, so [clip start, clip end) is what they represent. A
    non-empty clip gives at least one index; an empty one (start at or past the end) gives none.
    """
    if num_source_frames <= 0:
        return np.zeros(0, dtype=np.int64)
    if not (math.isfinite(source_fps) and source_fps > 0):
        raise ValueError(f"source_fps must be a finite number > 0, got {source_fps!r}")
    for name, value in (("clip_start_s", clip_start_s), ("clip_end_s", clip_end_s)):
        if value is not None and math.isnan(value):
            raise ValueError(f"{name} must be a number, got {value!r}")
    start, end = _clip_bounds_s(num_source_frames, source_fps, clip_start_s, clip_end_s)
    bounds = _clip_frame_range(num_source_frames, source_fps, start, end)
    if bounds is None:
        return np.zeros(0, dtype=np.int64)
    first, last = bounds
    by_rate = None
    if cfg.num_frames is None:
        assert cfg.fps is not None
        by_rate = max(1, math.ceil((end - start) * cfg.fps - 1e-9))
    if by_rate is None or by_rate > cfg.max_frames:
        # num_frames mode, or the rate would overrun the cap: truncating to the first max_frames times
        # would leave most of the clip unseen while its range claims all of it.
        wanted = cfg.max_frames if cfg.num_frames is None else cfg.num_frames
        count = min(wanted, cfg.max_frames, last - first + 1)
        indices = _round_half_up(np.linspace(first, last, count))
    else:
        assert cfg.fps is not None
        # Times start + k / fps < end; computed by index rather than accumulation to avoid drift.
        times = start + np.arange(by_rate, dtype=np.float64) / cfg.fps
        indices = np.clip(_round_half_up(times * source_fps), first, last)
    return np.unique(indices).astype(np.int64)


def _resized_hw(height: int, width: int, size: int) -> tuple[int, int]:
    """The (height, width) whose shortest side is `size`, keeping the aspect ratio."""
    if height <= width:
        return size, max(size, _round_half_up_int(width * size / height))
    return max(size, _round_half_up_int(height * size / width)), size


def _center_crop(image: np.ndarray, size: int) -> np.ndarray:
    top = (image.shape[0] - size) // 2
    left = (image.shape[1] - size) // 2
    return image[top : top + size, left : left + size]
