"""VBench for vtok's generated videos: what is exact, what is a proxy, and the rows an eval job stores.

Exact: `temporal_flickering` is VBench's formula (Vchitect/VBench vbench/temporal_flickering.py) on the
frames given, bit for bit; the other dimensions are exact only through the official package in its own
environment (`vtok.eval.vbench_official.run_official`, used by `vbench_metrics` when `VBenchConfig.python`
and VBENCH_CACHE_DIR are set). VBench's normalization and weights: `quality_score` & co.

Proxies, always named proxy_*: `proxy_motion_smoothness`, `proxy_dynamic_degree`, `proxy_subject_consistency`
follow VBench's formulas with the model replaced by something weight-free (linear interpolation for AMT,
block matching for RAFT, foreground colour histograms for DINO). They rank videos of one kind of scene;
they are not VBench numbers and never enter `quality_score` (`proxy_quality_score` is their own total).

numpy only at import; the official package runs in a subprocess, the mp4 reader is imported when used.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from vtok.errors import InputError
from vtok.eval.vbench_official import (
    VBenchConfig,
    VBenchRunError,
    check_config,
    proxy_quality_score,
    quality_score,
    run_official,
    semantic_score,
    total_score,
)

__all__ = [
    "CATEGORY", "VBenchConfig", "proxy_dynamic_degree", "proxy_flow_magnitudes", "proxy_motion_smoothness",
    "proxy_quality_score", "proxy_subject_consistency", "quality_score", "semantic_score",
    "temporal_flickering", "temporal_flickering_video", "total_score", "vbench_metrics",
]

CATEGORY = "all"
"""The category of every row vbench_metrics returns: VBench's metrics are over all videos."""
Z_95 = 1.96
FOREGROUND_DISTANCE = 0.25
"""proxy_subject_consistency: a pixel is foreground when a channel differs from the background by more."""
HIST_BINS = 4
"""proxy_subject_consistency: bins per channel of the foreground colour histogram (4**3 bins in all)."""
FLOW_BLOCK = 8
"""proxy_flow_magnitudes: side (px) of the blocks matched between frames."""
FLOW_MAX_SIDE = 128
"""proxy_flow_magnitudes: frames whose short side is longer are area-averaged by an integer factor first."""
FLOW_MIN_GAIN = 0.02
"""proxy_flow_magnitudes: a shift must beat standing still by this mean |difference| per channel (0..1),
or the block counts as still (codec noise on flat regions would otherwise pick random shifts)."""


def _frames(frames: Any, name: str, dtype: str) -> np.ndarray:
    x = np.asarray(frames)
    if x.ndim != 4 or x.shape[-1] != 3 or x.shape[0] < 2:
        raise InputError(f"{name}: frames must be [T >= 2, H, W, 3], got shape {x.shape}")
    if dtype == "uint8":
        if x.dtype != np.uint8:
            raise InputError(f"{name}: frames must be uint8 (as VBench reads them), got {x.dtype}")
        return x
    if not np.issubdtype(x.dtype, np.floating):
        raise InputError(f"{name}: frames must be finite floats in [0, 1], got {x.dtype}")
    if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise InputError(f"{name}: frames must be finite floats in [0, 1], got values in "
                         f"[{np.nanmin(x):g}, {np.nanmax(x):g}]")
    return x.astype(np.float32, copy=False)


def temporal_flickering(frames: np.ndarray) -> float:
    """VBench's temporal_flickering of one video: (255 - mean_t MAE(frame_t, frame_t+1)) / 255.

    frames: uint8 [T >= 2, H, W, 3] RGB, every frame (VBench uses all of them). Follows cal_score / mae_seq /
    calculate_mae of Vchitect/VBench vbench/temporal_flickering.py: each pair's MAE is the float32 mean of
    |a - b| over all pixels and channels, the video's the float32 mean of those, then (255 - it) / 255 in
    float64. VBench reads BGR with cv2; the channels are reversed here so the float32 sums run in the same
    order and the value is bit-identical. VBench over videos: the plain mean of these (vbench_metrics).
    A single frame is refused (VBench would return NaN). 1.0 for a still video, 0.0 for black/white flashes.
    """
    x = _frames(frames, "temporal_flickering", "uint8")
    bgr = np.ascontiguousarray(x[..., ::-1]).astype(np.float32)
    maes = [np.mean(np.abs(bgr[t] - bgr[t + 1])) for t in range(len(bgr) - 1)]
    return (255.0 - np.mean(np.array(maes)).item()) / 255.0


def temporal_flickering_video(uri: str) -> float:
    """temporal_flickering of every frame of the video at `uri` (local path or fsspec URI), decoded by PyAV.

    VBench decodes with cv2's FFmpeg backend; on shapes-world mp4s (64 and 128 px, with and without noise)
    both decoders gave the same pixels and this gave VBench's cal_score bit for bit (opencv 5.0, PyAV).
    Raises vtok.video.DecodeError naming `uri` for a file that cannot be read.
    """
    from vtok.media import read_frames

    return temporal_flickering(read_frames(uri))


def proxy_motion_smoothness(frames: np.ndarray) -> float:
    """Proxy of VBench's motion_smoothness: how well each odd frame is predicted from its two neighbours.

    frames: float [T >= 3, H, W, 3] in [0, 1]. As VBench (vbench/motion_smoothness.py): the even frames are
    interpolated and the odd frames 1, 3, ... that have both neighbours are compared with the prediction,
    score = 1 - mean |frame_i - prediction_i|; the prediction is (frame_{i-1} + frame_{i+1}) / 2 where
    VBench runs AMT. 1.0 for a still video or a linear fade. Without motion compensation a moving edge
    leaves two half ghosts even when its motion is smooth: for flat objects in steady motion this equals
    temporal_flickering, so it ranks jitter only among videos of a similar amount of motion.
    """
    x = _frames(frames, "proxy_motion_smoothness", "float")
    if len(x) < 3:
        raise InputError(f"proxy_motion_smoothness: needs T >= 3 frames, got {len(x)}")
    odd = np.arange(1, len(x) - 1, 2)
    pred = (x[odd - 1] + x[odd + 1]) * np.float32(0.5)
    return float(1.0 - np.abs(x[odd] - pred).mean(dtype=np.float64))


def _area_downsample(x: np.ndarray, factor: int) -> np.ndarray:
    t, h, w, c = x.shape
    h, w = h // factor * factor, w // factor * factor
    return x[:, :h, :w].reshape(t, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


def proxy_flow_magnitudes(frames: np.ndarray, block: int = FLOW_BLOCK) -> np.ndarray:
    """Per consecutive pair, the mean of the top 5% per-pixel motion magnitudes in pixels: float64 [T - 1].

    frames: float [T >= 2, H, W, 3] in [0, 1]. VBench's per-pair score (DynamicDegree.get_score: mean of the
    largest 5% of RAFT flow magnitudes) with RAFT replaced by block matching: each `block` x `block` block
    of frame t takes the integer shift within the search range that best matches frame t+1 (sum of absolute
    differences; among equal costs the shortest, and standing still unless a shift gains FLOW_MIN_GAIN).
    Exact for a textured scene that shifts by whole pixels. A flat interior has no texture to match, so a
    flat object moves only on its edges (RAFT fills its interior in): lower values than VBench's.
    """
    x = _frames(frames, "proxy_flow_magnitudes", "float")
    return np.array(list(_pair_motion(x, block)))


def _pair_motion(x: np.ndarray, block: int = FLOW_BLOCK) -> Iterator[float]:
    """proxy_flow_magnitudes' value of each pair in turn (lazily: proxy_dynamic_degree stops when sure)."""
    side = min(x.shape[1], x.shape[2])
    factor = max(1, side // FLOW_MAX_SIDE)
    small = (_area_downsample(x, factor) if factor > 1 else x).transpose(0, 3, 1, 2)  # [T, 3, h, w]
    hb, wb = small.shape[2] // block, small.shape[3] // block
    if hb == 0 or wb == 0:
        raise InputError(f"proxy_flow_magnitudes: frames of {x.shape[2]}x{x.shape[1]} are smaller than "
                         f"one {block}px block")
    h, w = hb * block, wb * block
    # Twice VBench's threshold (6 px at a 256 px side): every motion up to it is measured, and one past the
    # range still matches best far from standing still, which is all the threshold asks.
    reach = int(math.ceil(2 * 6.0 * side / 256.0 / factor)) + 1
    shifts = sorted(((dy, dx) for dy in range(-reach, reach + 1) for dx in range(-reach, reach + 1)),
                    key=lambda s: (s[0] ** 2 + s[1] ** 2, s))  # the shortest first, (0, 0) at 0
    length = np.array([math.hypot(dy, dx) * factor for dy, dx in shifts])
    min_gain = FLOW_MIN_GAIN * 3 * block * block
    cut = max(1, int(x.shape[1] * x.shape[2] * 0.05))
    pixels_per_block = (block * factor) ** 2
    buf = np.empty((3, h, w), np.float32)
    costs = np.empty((len(shifts), hb, wb), np.float32)

    def block_costs(a: np.ndarray, b: np.ndarray, dy: int, dx: int) -> np.ndarray:
        np.subtract(a, b[:, reach + dy : reach + dy + h, reach + dx : reach + dx + w], out=buf)
        np.abs(buf, out=buf)
        return buf.sum(axis=0).reshape(hb, block, wb, block).sum(axis=(1, 3))

    for i in range(len(small) - 1):
        a = np.ascontiguousarray(small[i, :, :h, :w])
        b = np.pad(small[i + 1], ((0, 0), (reach, reach), (reach, reach)), mode="edge")
        costs[0] = block_costs(a, b, 0, 0)
        if not (costs[0] > min_gain).any():
            yield 0.0  # no block differs enough for any shift to gain: a still pair
            continue
        for k, (dy, dx) in enumerate(shifts[1:], start=1):
            costs[k] = block_costs(a, b, dy, dx)
        best = costs.argmin(axis=0)
        gain = costs[0] - costs.min(axis=0)
        mags = np.where(gain > min_gain, length[best], 0.0).ravel()
        # Pixels outside whole blocks count as still, as they would in a per-pixel flow's top 5%.
        yield float(np.sort(np.repeat(mags, pixels_per_block))[::-1][:cut].sum() / cut)


def proxy_dynamic_degree(frames: np.ndarray, fps: float | None = None) -> float:
    """Proxy of VBench's dynamic_degree of one video: 1.0 when it moves, else 0.0 (its mean over videos is
    the dimension).

    frames: float [T >= 2, H, W, 3] in [0, 1]; with `fps`, every round(fps / 8)-th frame is used first, as
    VBench samples about 8 frames a second. VBench's rule (DynamicDegree.set_params / check_move in
    vbench/dynamic_degree.py): a pair moves when its top-5% motion (proxy_flow_magnitudes, for RAFT) passes
    6 * short side / 256 px, and the video is dynamic when round(4 * T / 16) pairs do (Python's round: with
    T = 2 that is 0, so any two frames count as dynamic, as in VBench).
    """
    x = _frames(frames, "proxy_dynamic_degree", "float")
    if fps is not None:
        if not fps > 0:
            raise InputError(f"proxy_dynamic_degree: fps must be > 0, got {fps!r}")
        x = x[:: max(1, round(fps / 8))]
        if len(x) < 2:
            raise InputError(f"proxy_dynamic_degree: fewer than 2 frames left at {fps:g} fps sampled to 8")
    threshold = 6.0 * min(x.shape[1], x.shape[2]) / 256.0
    needed = round(4 * (len(x) / 16.0))
    count = 0
    for seen, score in enumerate(_pair_motion(x), start=1):
        count += int(score > threshold)
        if count >= needed:
            return 1.0
        if count + (len(x) - 1 - seen) < needed:
            return 0.0  # the pairs left cannot reach the count
    return 0.0


def _foreground_histograms(x: np.ndarray) -> np.ndarray:
    """[T, HIST_BINS**3] pixel counts of each frame's foreground colours; background = its border's median."""
    border = np.concatenate([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], axis=1)  # [T, 2W + 2H, 3]
    background = np.median(border, axis=1)[:, None, None, :]
    fg = (np.abs(x - background).max(axis=3) > FOREGROUND_DISTANCE).reshape(len(x), -1)
    q = np.minimum((x * HIST_BINS).astype(np.int64), HIST_BINS - 1).reshape(len(x), -1, 3)
    index = (q[..., 0] * HIST_BINS + q[..., 1]) * HIST_BINS + q[..., 2]
    return np.stack([np.bincount(index[t][fg[t]], minlength=HIST_BINS**3) for t in range(len(x))]).astype(
        np.float64)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    if np.array_equal(a, b) and a.any():
        return 1.0  # exactly: the float cosine of a vector with itself can fall a rounding short
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        # Two frames with no foreground agree; a subject that appears or vanishes does not.
        return 1.0 if na == nb else 0.0
    return min(1.0, float(a @ b) / (na * nb))


def proxy_subject_consistency(frames: np.ndarray) -> float:
    """Proxy of VBench's subject_consistency of one video, in [0, 1].

    frames: float [T >= 2, H, W, 3] in [0, 1]. VBench's formula (vbench/subject_consistency.py): for each
    frame i >= 1, (max(0, cos(f_{i-1}, f_i)) + max(0, cos(f_0, f_i))) / 2, averaged over the T - 1 frames,
    with f the frame's foreground colour histogram (HIST_BINS per channel; foreground = pixels far from the
    median colour of the frame's border) where VBench has DINO features. Like DINO's it ignores where the
    subject is; unlike DINO's it ignores its shape: it sees a subject change colour, appear or vanish.
    """
    x = _frames(frames, "proxy_subject_consistency", "float")
    hist = _foreground_histograms(x)
    sims = [(max(0.0, _cosine(hist[i - 1], hist[i])) + max(0.0, _cosine(hist[0], hist[i]))) / 2
            for i in range(1, len(hist))]
    return float(np.mean(sims))


def _row(metric: str, values: Sequence[float], value: float | None = None) -> dict[str, Any]:
    """{metric, category, value, n, lo, hi}: value (default the mean) +- 1.96 std / sqrt(n) (the margin of
    stats.mean_interval), clipped to [0, 1]; lo = hi = None for a single video (no spread to measure)."""
    from vtok.eval.stats import mean_interval

    mean = float(np.mean(values))
    centre = mean if value is None else float(value)
    lo = hi = None
    if len(values) > 1:
        _, low, _ = mean_interval(values, z=Z_95)
        half = mean - low
        lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    return {"metric": metric, "category": CATEGORY, "value": centre, "n": len(values), "lo": lo, "hi": hi}


def _as_uint8(video: Any, i: int) -> np.ndarray:
    x = np.asarray(video)
    if x.dtype == np.uint8:
        return x
    floats = np.issubdtype(x.dtype, np.floating) and x.size and np.isfinite(x).all()
    if floats and 0 <= x.min() <= x.max() <= 1:
        # What a video writer stores for frames in [0, 1].
        return np.round(x * 255.0).astype(np.uint8)
    raise InputError(f"vbench_metrics: video {i} must be uint8 or floats in [0, 1], got {x.dtype}")


def vbench_metrics(videos: Sequence[np.ndarray], cfg: VBenchConfig | None = None) -> list[dict[str, Any]]:
    """Rows {metric, category, value, n, lo, hi} over `videos` (each uint8 [T, H, W, 3], or floats in [0, 1]).

    temporal_flickering (when in cfg.dimensions): exact, on the frames as given (float frames are rounded to
    uint8 first, as a video writer would), the mean over videos. With cfg.proxies, the proxy_* metrics
    (means over videos; proxy_motion_smoothness over those of 3 or more frames). Every other dimension of
    cfg.dimensions runs through the official package (run_official, on mp4s written at cfg.fps); its value
    is VBench's own aggregate. Intervals: value +- 1.96 * std / sqrt(n) over the per-video values, clipped
    to [0, 1]; None for one video. Configuration errors (check_config) are raised before any work.
    """
    cfg = cfg or VBenchConfig()
    resolved = check_config(cfg)
    if not videos:
        raise InputError("vbench_metrics: no videos")
    clips = [_as_uint8(v, i) for i, v in enumerate(videos)]
    for i, clip in enumerate(clips):
        _frames(clip, f"vbench_metrics video {i}", "uint8")
    rows: list[dict[str, Any]] = []
    if "temporal_flickering" in cfg.dimensions:
        rows.append(_row("temporal_flickering", [temporal_flickering(c) for c in clips]))
    if cfg.proxies:
        unit = [c.astype(np.float32) / np.float32(255.0) for c in clips]
        proxies: list[tuple[str, Callable[[np.ndarray], float]]] = [
            ("proxy_subject_consistency", proxy_subject_consistency),
            ("proxy_motion_smoothness", proxy_motion_smoothness),
            ("proxy_dynamic_degree", lambda u: proxy_dynamic_degree(u, fps=cfg.fps)),
        ]
        for name, fn in proxies:
            # A two-frame video has no frame between two others to predict: motion smoothness skips it.
            usable = [u for u in unit if len(u) >= 3] if name == "proxy_motion_smoothness" else unit
            if usable:
                rows.append(_row(name, [fn(u) for u in usable]))
    if resolved["official"]:
        rows += _official_rows(clips, cfg)
    return rows


def _official_rows(clips: list[np.ndarray], cfg: VBenchConfig) -> list[dict[str, Any]]:
    import tempfile
    from pathlib import Path

    from vtok.media import write_mp4

    with tempfile.TemporaryDirectory(prefix="vtok-vbench-videos-") as tmp:
        for i, clip in enumerate(clips):
            if clip.shape[1] % 2 or clip.shape[2] % 2:
                raise InputError(f"vbench_metrics: video {i} is {clip.shape[2]}x{clip.shape[1]}; the "
                                 "official package reads mp4 (yuv420p), which needs even sides")
            write_mp4(Path(tmp) / f"video_{i:05d}.mp4", clip, fps=cfg.fps)
        found = run_official(tmp, cfg)
    rows = []
    for r in found:
        if r["n"] == 0:
            raise VBenchRunError(f"vbench evaluate --dimension {r['metric']}: scored none of the "
                                 f"{len(clips)} videos")
        rows.append(_row(r["metric"], [p["value"] for p in r["per_video"]], value=r["value"]))
    return rows

