"""VBench for vtok: exact temporal_flickering, the weight-free proxies on videos whose answer is known, rows.

The official package's side (config, subprocess, results JSON, scores) is in test_vbench_official.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from vtok.errors import InputError
from vtok.eval.vbench import (
    CATEGORY,
    VBenchConfig,
    proxy_dynamic_degree,
    proxy_flow_magnitudes,
    proxy_motion_smoothness,
    proxy_subject_consistency,
    temporal_flickering,
    temporal_flickering_video,
    vbench_metrics,
)
from vtok.media import read_frames, write_mp4
from vtok.shapes import ShapeObject, ShapesConfig, generate, render

SMALL = ShapesConfig(width=64, height=64, num_frames=16, speed=4.0)


def _unit(frames: np.ndarray) -> np.ndarray:
    return frames.astype(np.float32) / np.float32(255.0)


def _square_at(xs: list[float], color: str = "red", cfg: ShapesConfig = SMALL) -> np.ndarray:
    """uint8 frames of one large square whose centre is at x = xs[t] (y mid-frame)."""
    one = ShapesConfig(width=cfg.width, height=cfg.height, num_frames=1)
    return np.concatenate([render([ShapeObject("square", color, "large", "static", x, 32.0, "center")], one)
                           for x in xs])


def _textured(shift: int, frames: int = 6, side: int = 64) -> np.ndarray:
    """A random texture panning `shift` px per frame to the left: every block's true motion is `shift`."""
    big = np.random.default_rng(0).random((side + 20, side + 20 + shift * frames, 3)).astype(np.float32)
    return np.stack([big[10 : 10 + side, 10 + shift * t : 10 + side + shift * t] for t in range(frames)])


# temporal_flickering: VBench's (255 - mean MAE) / 255


def test_temporal_flickering_constant_and_black_white_and_half() -> None:
    still = np.full((8, 16, 16, 3), 77, np.uint8)
    assert temporal_flickering(still) == 1.0
    flashes = np.zeros((8, 16, 16, 3), np.uint8)
    flashes[1::2] = 255
    assert temporal_flickering(flashes) == 0.0
    half = np.zeros((5, 16, 16, 3), np.uint8)
    half[1::2, :8] = 100  # every pair differs by 100 on half of the pixels: MAE 50
    assert temporal_flickering(half) == (255.0 - 50.0) / 255.0


def test_temporal_flickering_noise_hand_computed() -> None:
    rng = np.random.default_rng(3)
    base = np.full((6, 24, 32, 3), 128, np.int64)
    noisy = (base + rng.integers(-2, 3, size=base.shape)).astype(np.uint8)
    # Mean over the 5 pairs of mean |difference|, in float64 here; VBench sums in float32.
    mae = np.mean([np.abs(noisy[t].astype(np.float64) - noisy[t + 1]).mean() for t in range(5)])
    got = temporal_flickering(noisy)
    assert got == pytest.approx((255.0 - mae) / 255.0, abs=1e-7)
    assert 0.99 < got < 1.0
    # A constant per-frame offset of 3 grey levels: exactly (255 - 3) / 255.
    steps = np.stack([np.full((8, 8, 3), 50 + 3 * (t % 2), np.uint8) for t in range(7)])
    assert temporal_flickering(steps) == 252.0 / 255.0


def test_temporal_flickering_refuses_what_vbench_cannot_score() -> None:
    with pytest.raises(InputError, match=r"temporal_flickering: frames must be \[T >= 2"):
        temporal_flickering(np.zeros((1, 8, 8, 3), np.uint8))  # VBench: NaN
    with pytest.raises(InputError, match="must be uint8"):
        temporal_flickering(np.zeros((4, 8, 8, 3), np.float32))


def test_temporal_flickering_video_reads_every_frame_of_the_mp4(tmp_path: Path) -> None:
    still = generate(0, 0, SMALL, static=True).frames
    path = write_mp4(tmp_path / "still.mp4", still, fps=8.0)
    decoded = read_frames(str(path))
    assert decoded.shape == still.shape
    value = temporal_flickering_video(str(path))
    assert value == temporal_flickering(decoded)
    assert value > 0.995  # x264 noise only
    flashes = np.zeros((8, 32, 32, 3), np.uint8)
    flashes[1::2] = 255
    assert temporal_flickering_video(str(write_mp4(tmp_path / "flash.mp4", flashes, fps=8.0))) < 0.02


# proxy_motion_smoothness: odd frames predicted by the mean of their neighbours


def test_proxy_motion_smoothness_known_values() -> None:
    still = _unit(generate(0, 1, SMALL, static=True).frames)
    assert proxy_motion_smoothness(still) == 1.0
    fade = np.stack([np.full((8, 8, 3), t / 8, np.float32) for t in range(5)])
    assert proxy_motion_smoothness(fade) == 1.0  # linear in time: predicted exactly
    curve = np.stack([np.full((8, 8, 3), (t / 4) ** 2, np.float32) for t in range(5)])
    # frames 1 and 3 are off their neighbours' mean by half the second difference, 1/16
    assert proxy_motion_smoothness(curve) == pytest.approx(1 - 1 / 16, abs=1e-7)
    with pytest.raises(InputError, match="needs T >= 3"):
        proxy_motion_smoothness(fade[:2])


def test_proxy_motion_smoothness_ranks_still_smooth_jittery() -> None:
    xs = [16.0 + 2 * t for t in range(12)]
    smooth = proxy_motion_smoothness(_unit(_square_at(xs)))
    jittery = proxy_motion_smoothness(_unit(_square_at([x + (3 if t % 2 else -3) for t, x in enumerate(xs)])))
    still = proxy_motion_smoothness(_unit(_square_at([16.0] * 12)))
    assert still == 1.0
    assert still > smooth > jittery, (smooth, jittery)
    # A 16 px square moving 2 px a frame: its two half-bright ghosts are off by half the square's contrast
    # with the background on 4 strips of 2 columns, 16 rows each (red (255, 0, 0) over grey (32, 32, 32)).
    side = 2 * SMALL.radius("large")
    contrast = (223 + 32 + 32) / 255
    assert 1 - smooth == pytest.approx(4 * 2 * side * 0.5 * contrast / (64 * 64 * 3), rel=1e-5)


# proxy_dynamic_degree: VBench's rule on block-matching motion


@pytest.mark.parametrize("shift", [1, 2, 3])
def test_proxy_flow_magnitudes_exact_on_a_panning_texture(shift: int) -> None:
    np.testing.assert_array_equal(proxy_flow_magnitudes(_textured(shift)), np.full(5, float(shift)))


def test_proxy_dynamic_degree_static_vs_moving_shapes() -> None:
    for index in range(3):
        still = generate(5, index, SMALL, static=True)
        moving = generate(5, index, SMALL, static=False)
        assert proxy_flow_magnitudes(_unit(still.frames)).max() == 0.0
        assert proxy_dynamic_degree(_unit(still.frames)) == 0.0
        assert any(o.motion != "static" for o in moving.objects)
        assert proxy_dynamic_degree(_unit(moving.frames)) == 1.0, [o.motion for o in moving.objects]


def test_proxy_dynamic_degree_threshold_and_fps_sampling() -> None:
    # 64 px frames: a pair moves past 6 * 64 / 256 = 1.5 px. One px a frame is slow...
    slow = _textured(1, frames=16)
    assert proxy_dynamic_degree(slow) == 0.0
    # ...but at 16 fps VBench keeps every second frame: 2 px per pair, in all 7 pairs (4 * 8 / 16 = 2 needed).
    assert proxy_dynamic_degree(slow, fps=16.0) == 1.0
    assert proxy_dynamic_degree(_textured(2, frames=16)) == 1.0
    # VBench's count is round(4 * T / 16): 0 for two frames, so any pair counts as dynamic (its rule, kept).
    assert proxy_dynamic_degree(slow[:2] * 0) == 1.0
    with pytest.raises(InputError, match="fps must be > 0"):
        proxy_dynamic_degree(slow, fps=0.0)


# proxy_subject_consistency: foreground colour histograms, VBench's first/previous formula


def test_proxy_subject_consistency_known_values() -> None:
    still = _unit(generate(0, 2, SMALL, static=True).frames)
    assert proxy_subject_consistency(still) == 1.0
    moving = _unit(_square_at([16.0 + 2 * t for t in range(10)]))
    assert proxy_subject_consistency(moving) == 1.0  # same subject, another place: like DINO, unmoved
    recoloured = _unit(np.concatenate([_square_at([20.0, 22.0]), _square_at([24.0, 26.0], color="blue")]))
    # frame 1: (1 + 1) / 2; frame 2: new colour vs previous and first, 0; frame 3: (1 + 0) / 2 -> 1.5 / 3
    assert proxy_subject_consistency(recoloured) == 0.5
    empty = np.full((3, 64, 64, 3), 32 / 255, np.float32)
    assert proxy_subject_consistency(empty) == 1.0  # nothing there, nothing changes
    with pytest.raises(InputError, match="finite floats in"):
        proxy_subject_consistency(still * 2)


# vbench_metrics: rows with a 95% interval over videos


def test_vbench_metrics_rows_and_intervals() -> None:
    videos = [generate(7, i, SMALL).frames for i in range(4)]
    videos[0] = videos[0].copy()
    videos[0][1::2] //= 2  # one flickering video widens the interval
    rows = {r["metric"]: r for r in vbench_metrics(videos, VBenchConfig())}
    assert list(rows) == ["temporal_flickering", "proxy_subject_consistency", "proxy_motion_smoothness",
                          "proxy_dynamic_degree"]
    tf = np.array([temporal_flickering(v) for v in videos])
    row = rows["temporal_flickering"]
    half = 1.96 * tf.std(ddof=1) / math.sqrt(4)
    assert row == {"metric": "temporal_flickering", "category": CATEGORY, "value": pytest.approx(tf.mean()),
                   "n": 4, "lo": pytest.approx(tf.mean() - half),
                   "hi": pytest.approx(min(1.0, tf.mean() + half))}
    assert rows["proxy_dynamic_degree"]["value"] == np.mean([proxy_dynamic_degree(_unit(v)) for v in videos])
    for r in rows.values():
        assert r["category"] == "all" and r["n"] == 4
        assert 0.0 <= r["lo"] <= r["value"] <= r["hi"] <= 1.0, r


def test_vbench_metrics_single_video_floats_and_errors() -> None:
    one = _unit(generate(7, 1, SMALL, static=True).frames)
    rows = vbench_metrics([one], VBenchConfig(proxies=False))
    assert rows == [{"metric": "temporal_flickering", "category": "all", "value": 1.0, "n": 1, "lo": None,
                     "hi": None}]
    assert vbench_metrics([one], VBenchConfig(dimensions=(), proxies=False)) == []
    with pytest.raises(InputError, match="no videos"):
        vbench_metrics([], VBenchConfig())
    with pytest.raises(InputError, match=r"video 1 must be uint8 or floats in \[0, 1\]"):
        vbench_metrics([one, one * 255], VBenchConfig())
    with pytest.raises(InputError, match=r"vbench.dimensions: unknown dimension 'flicker'"):
        vbench_metrics([one], VBenchConfig(dimensions=("flicker",)))
