"""The shapes world: determinism, geometry read back from pixels, captions, and the written corpus."""

from __future__ import annotations

import io
import json
import posixpath
import uuid
from pathlib import Path

import av
import fsspec
import numpy as np
import pytest

from vtok.shapes import (
    COLORS,
    MOTIONS,
    POSITIONS,
    SHAPES,
    SIZES,
    ShapeObject,
    ShapesConfig,
    generate,
    make_caption,
    render,
    sample_objects,
    write_corpus,
)

SMALL = ShapesConfig(width=64, height=64, num_frames=16)
INDICES = range(12)
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "static": (0, 0)}


def colour_mask(frame: np.ndarray, color: str) -> np.ndarray:
    return np.all(frame == np.array(COLORS[color], dtype=np.uint8), axis=-1)


def centroid(mask: np.ndarray) -> np.ndarray:
    """(x, y) in array indices."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def third_name(x: float, y: float, width: int, height: int) -> str:
    """Independent re-derivation of the 3x3 naming the generator should use."""
    cols = ["left", "", "right"]
    rows = ["top", "", "bottom"]
    col, row = min(2, int(3 * x / width)), min(2, int(3 * y / height))
    name = f"{rows[row]} {cols[col]}".strip()
    return name or "center"


def decode(source: str | io.BytesIO) -> np.ndarray:
    with av.open(source) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def nearest_colour_counts(frame: np.ndarray, min_pixels: int) -> set[str]:
    """Colours that own at least `min_pixels` pixels when each pixel is assigned to the nearest palette
    entry (background included) within a tolerance: what a judge does on lossy frames."""
    names = ["background", *COLORS]
    palette = np.array([SMALL.background, *COLORS.values()], dtype=np.float64)
    dist = np.linalg.norm(frame[..., None, :].astype(np.float64) - palette, axis=-1)
    label = np.where(dist.min(-1) < 80, dist.argmin(-1), -1)
    return {names[k] for k in range(1, len(names)) if np.sum(label == k) >= min_pixels}


def test_constants() -> None:
    assert SHAPES == ("circle", "square", "triangle")
    assert MOTIONS == ("static", "left", "right", "up", "down")
    assert set(COLORS) == {"red", "green", "blue", "yellow", "magenta", "cyan"}
    assert set(SIZES) == {"small", "large"} and SIZES["large"] > SIZES["small"]
    assert len(POSITIONS) == 9 and "center" in POSITIONS and "top left" in POSITIONS


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("width", 63),
        ("height", 16),
        ("num_frames", 0),
        ("fps", 0.0),
        ("min_objects", 0),
        ("max_objects", 5),
        ("speed", -1.0),
        ("background", (0, 0, 300)),
        ("background", (250, 5, 5)),  # indistinguishable from red
        ("static_prob", 1.5),
    ],
)
def test_config_validation_names_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        ShapesConfig(**{field: value})


def test_min_above_max_names_max_objects() -> None:
    with pytest.raises(ValueError, match="max_objects"):
        ShapesConfig(min_objects=3, max_objects=2)


def test_generate_is_deterministic_and_index_dependent() -> None:
    a, b = generate(7, 3, SMALL), generate(7, 3, SMALL)
    assert np.array_equal(a.frames, b.frames)
    assert a.objects == b.objects and a.caption == b.caption
    assert a.frames.shape == (16, 64, 64, 3) and a.frames.dtype == np.uint8
    assert (a.index, a.seed) == (3, 7)
    assert not np.array_equal(a.frames, generate(8, 3, SMALL).frames)
    # Different indices of one corpus are different scenes, not the same scene re-rendered.
    captions = {generate(7, i, SMALL).caption for i in INDICES}
    assert len(captions) == len(INDICES)


def test_scene_invariants() -> None:
    for i in INDICES:
        video = generate(0, i, SMALL)
        objects = video.objects
        assert SMALL.min_objects <= len(objects) <= SMALL.max_objects
        assert len({o.color for o in objects}) == len(objects)
        for o in objects:
            assert o.shape in SHAPES and o.size in SIZES and o.motion in MOTIONS
            assert o.position == third_name(o.x, o.y, SMALL.width, SMALL.height)
        # Only exact palette colours and background appear: hard edges, no blending.
        palette = {tuple(SMALL.background), *(COLORS[o.color] for o in objects)}
        present = {tuple(p) for p in np.unique(video.frames.reshape(-1, 3), axis=0)}
        assert present == palette


def test_count_by_colour_segmentation_matches_objects() -> None:
    for i in INDICES:
        video = generate(1, i, SMALL)
        for t in (0, SMALL.num_frames - 1):
            seen = {c for c in COLORS if colour_mask(video.frames[t], c).any()}
            assert seen == {o.color for o in video.objects}


def test_initial_centroid_and_position() -> None:
    for i in INDICES:
        video = generate(2, i, SMALL)
        for o in video.objects:
            c = centroid(colour_mask(video.frames[0], o.color))
            # Pixel (i, j) is centred at (j + 0.5, i + 0.5); the triangle's area centroid is its centre.
            tolerance = 0.75 if o.shape == "triangle" else 1e-9
            assert np.allclose(c + 0.5, [o.x, o.y], atol=tolerance), (o, c)
            assert third_name(c[0] + 0.5, c[1] + 0.5, SMALL.width, SMALL.height) == o.position


def test_static_video_has_identical_frames() -> None:
    for i in range(4):
        video = generate(3, i, SMALL, static=True)
        assert all(o.motion == "static" for o in video.objects)
        assert (video.frames == video.frames[0]).all()


def test_moving_objects_travel_speed_times_frames_in_their_direction() -> None:
    travel = SMALL.speed * (SMALL.num_frames - 1)
    assert travel >= 0.25 * SMALL.width  # the motion is large enough to see and to judge
    seen_motions = set()
    for i in INDICES:
        video = generate(4, i, SMALL, static=False)
        for o in video.objects:
            assert o.motion != "static"
            seen_motions.add(o.motion)
            first = colour_mask(video.frames[0], o.color)
            last = colour_mask(video.frames[-1], o.color)
            # The whole shape is still in frame at the end, not clipped by the border.
            assert first.sum() == last.sum()
            shift = centroid(last) - centroid(first)
            assert np.allclose(shift, np.array(DIRECTIONS[o.motion]) * travel, atol=1e-6), (o, shift)
            # Per frame too: a constant speed, so a judge can track it frame to frame.
            mid = centroid(colour_mask(video.frames[5], o.color)) - centroid(first)
            assert np.allclose(mid, np.array(DIRECTIONS[o.motion]) * SMALL.speed * 5, atol=1e-6)
    assert seen_motions == {"left", "right", "up", "down"}


def test_objects_stop_at_the_border_when_the_video_is_too_long() -> None:
    cfg = ShapesConfig(width=64, height=64, num_frames=60, speed=2.0, min_objects=1, max_objects=1)
    obj = ShapeObject("square", "red", "small", "right", x=10.0, y=32.0, position="left")
    frames = render([obj], cfg)
    r = cfg.radius("small")
    areas = [colour_mask(f, "red").sum() for f in frames]
    assert len(set(areas)) == 1  # never clipped by the border
    end = centroid(colour_mask(frames[-1], "red")) + 0.5
    assert end[0] == pytest.approx(cfg.width - r)  # clamped against the right edge, fully visible
    assert np.array_equal(frames[-1], frames[-2])  # stopped, not wrapped or vanished
    # Sampling in such a config starts movers against the opposite edge to use all the room there is.
    for i in range(6):
        video = generate(5, i, cfg, static=False)
        (o,) = video.objects
        r = cfg.radius(o.size)
        first, last = colour_mask(video.frames[0], o.color), colour_mask(video.frames[-1], o.color)
        assert first.sum() == last.sum()
        moved = np.abs(centroid(last) - centroid(first)).max()
        assert moved >= cfg.width - 2 * r - 2


def test_sizes_scale_with_frame_and_differ_by_area() -> None:
    assert ShapesConfig().radius("large") == SIZES["large"]
    assert SMALL.radius("large") == SIZES["large"] // 2
    for shape in SHAPES:
        areas = {}
        for size in SIZES:
            obj = ShapeObject(shape, "green", size, "static", x=32.0, y=32.0, position="center")
            areas[size] = colour_mask(render([obj], SMALL)[0], "green").sum()
        assert areas["large"] > 3 * areas["small"], (shape, areas)


def test_sample_objects_respects_config_and_forcing() -> None:
    cfg = ShapesConfig(width=64, height=64, num_frames=8, min_objects=4, max_objects=4, static_prob=1.0)
    rng = np.random.default_rng(0)
    for _ in range(5):
        objects = sample_objects(rng, cfg)
        assert len(objects) == 4
        assert all(o.motion == "static" for o in objects)
        # No overlap at the start: every colour is visible with its full area.
        frame = render(objects, cfg)[0]
        for o in objects:
            alone = render([o], cfg)[0]
            assert colour_mask(frame, o.color).sum() == colour_mask(alone, o.color).sum()
    assert all(o.motion != "static" for o in sample_objects(rng, cfg, static=False))


def test_caption_exact_and_mentions_every_attribute() -> None:
    objects = [
        ShapeObject("circle", "red", "large", "right", 20.0, 20.0, "top left"),
        ShapeObject("square", "blue", "small", "static", 64.0, 64.0, "center"),
    ]
    assert make_caption(objects) == (
        "two objects: a large red circle at the top left moving right, "
        "and a small blue square at the center, static."
    )
    assert make_caption(objects[:1]) == "one object: a large red circle at the top left moving right."
    for i in INDICES:
        video = generate(6, i, SMALL)
        words = {1: "one", 2: "two", 3: "three", 4: "four"}
        assert video.caption.startswith(f"{words[len(video.objects)]} object")
        for o in video.objects:
            motion = "static" if o.motion == "static" else f"moving {o.motion}"
            assert f"a {o.size} {o.color} {o.shape} at the {o.position}" in video.caption
            assert motion in video.caption


def test_attributes_are_json_ground_truth() -> None:
    video = generate(0, 0, SMALL)
    attrs = json.loads(json.dumps(video.attributes()))
    assert attrs["count"] == len(video.objects)
    assert attrs["objects"] == [o.to_dict() for o in video.objects]
    assert (attrs["num_frames"], attrs["width"], attrs["height"], attrs["fps"]) == (16, 64, 64, 8.0)
    assert set(attrs["objects"][0]) == {"shape", "color", "size", "motion", "x", "y", "position"}


def read_manifest(fs: fsspec.AbstractFileSystem, path: str) -> list[dict]:
    with fs.open(path, "r") as f:
        return [json.loads(line) for line in f.read().splitlines()]


def test_write_corpus_local(tmp_path: Path) -> None:
    manifest = write_corpus(str(tmp_path / "corpus"), num_videos=3, seed=11, cfg=SMALL, static_every=2)
    assert Path(manifest) == tmp_path / "corpus" / "manifest.jsonl"
    records = read_manifest(fsspec.filesystem("file"), manifest)
    assert [r["sample_index"] for r in records] == [0, 1, 2]
    assert sorted(p.name for p in (tmp_path / "corpus" / "videos").iterdir()) == [
        f"shapes_{i:06d}.mp4" for i in range(3)
    ]
    for record in records:
        index = record["sample_index"]
        assert record["uri"] == f"videos/shapes_{index:06d}.mp4"
        expected = generate(11, index, SMALL, static=True if index % 2 == 0 else None)
        assert record["caption"] == expected.caption
        assert record["attributes"] == json.loads(json.dumps(expected.attributes()))
        frames = decode(str(Path(manifest).parent / record["uri"]))
        assert frames.shape == (16, 64, 64, 3)
        # Lossy, but close to the rendered frames and the colours still segment into the objects.
        assert np.abs(frames.astype(int) - expected.frames.astype(int)).mean() < 4
        assert nearest_colour_counts(frames[0], min_pixels=8) == {o.color for o in expected.objects}
        if index % 2 == 0:  # static_every=2: indices 0 and 2 are static
            assert all(o["motion"] == "static" for o in record["attributes"]["objects"])
            assert np.abs(frames.astype(int) - frames[:1].astype(int)).max() <= 8


def test_write_corpus_is_byte_identical(tmp_path: Path) -> None:
    paths = [write_corpus(str(tmp_path / name), 2, seed=3, cfg=SMALL) for name in ("a", "b")]
    dirs = [Path(p).parent for p in paths]
    assert (dirs[0] / "manifest.jsonl").read_bytes() == (dirs[1] / "manifest.jsonl").read_bytes()
    for i in range(2):
        rel = f"videos/shapes_{i:06d}.mp4"
        assert (dirs[0] / rel).read_bytes() == (dirs[1] / rel).read_bytes()
    other = write_corpus(str(tmp_path / "c"), 2, seed=4, cfg=SMALL)
    assert (Path(other).parent / "videos/shapes_000000.mp4").read_bytes() != (
        dirs[0] / "videos/shapes_000000.mp4"
    ).read_bytes()


def test_write_corpus_to_memory_fs() -> None:
    root = f"memory://shapes-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    try:
        manifest = write_corpus(root, num_videos=2, seed=0, cfg=SMALL, static_every=1)
        assert manifest == f"{root}/manifest.jsonl"
        records = read_manifest(fs, manifest)
        assert len(records) == 2
        for record in records:
            data = fs.cat_file(posixpath.join(root, record["uri"]))
            frames = decode(io.BytesIO(data))
            assert frames.shape == (16, 64, 64, 3)
            assert record["attributes"]["count"] == len(record["attributes"]["objects"])
    finally:
        fs.rm(root, recursive=True)
