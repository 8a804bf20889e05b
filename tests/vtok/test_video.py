"""vtok.video: frame-exact sampled decode with PyAV and decord, sampling, resizing, and error reasons."""

from __future__ import annotations

import pickle
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from vtok.media import write_audio_only, write_mp4
from vtok.video import (
    REASONS,
    DecodeConfig,
    DecodedClip,
    DecodeError,
    decode_clip,
    probe,
    resize_center_crop,
    sample_frame_indices,
)

FPS = 30
NUM_FRAMES = 60
HEIGHT, WIDTH = 48, 64


def make_frame(i: int) -> np.ndarray:
    """Frame i: grey level 20 + 3i under an 8x8-block texture drawn afresh for every frame.

    The level makes each frame closer to its own generator frame than to its neighbours; the texture
    makes every frame cost bits, so a file cut in half keeps about half of its frames.
    """
    texture = np.random.default_rng(i).integers(-12, 13, size=(HEIGHT // 8, WIDTH // 8, 1))
    grey = np.clip(20 + 3 * i + texture.repeat(8, 0).repeat(8, 1), 0, 255).astype(np.uint8)
    return grey.repeat(3, axis=2)


FRAMES = np.stack([make_frame(i) for i in range(NUM_FRAMES)])


def centre(frame: np.ndarray) -> np.ndarray:
    """The centre 48x48 crop of a 64x48 frame: what decode_clip returns at size=48 (no resampling)."""
    return frame[:, (WIDTH - HEIGHT) // 2 : (WIDTH + HEIGHT) // 2]


def assert_frames_match(clip: DecodedClip) -> None:
    """Each returned frame is its source frame: close to it, and closer to it than to its neighbours."""
    assert clip.frames.dtype == np.uint8 and clip.frames.shape == (len(clip.frame_indices), HEIGHT, HEIGHT, 3)
    for frame, index in zip(clip.frames.astype(np.int64), clip.frame_indices.tolist(), strict=True):
        errors = {
            j: np.abs(frame - centre(FRAMES[j])).mean()
            for j in (index - 1, index, index + 1)
            if 0 <= j < NUM_FRAMES
        }
        assert errors[index] < 3.0, (index, errors)
        assert min(errors, key=errors.__getitem__) == index, (index, errors)


def remux_faststart(src: Path, dst: Path) -> Path:
    """Copy an mp4 with its moov box moved to the front, as web-ready files have it."""
    import av

    with av.open(str(src)) as inp, av.open(str(dst), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is None:
                continue
            packet.stream = stream
            out.mux(packet)
    return dst


def cut(src: Path, dst: Path, num_bytes: int) -> Path:
    dst.write_bytes(src.read_bytes()[:num_bytes])
    return dst


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("videos")
    paths = {
        # A keyframe every 5 frames, and one keyframe for the whole clip.
        "short_gop": write_mp4(root / "short_gop.mp4", FRAMES, FPS, gop=5),
        "long_gop": write_mp4(root / "long_gop.mp4", FRAMES, FPS, gop=NUM_FRAMES),
        # Matroska stores no frame count: it is estimated from the duration.
        "mkv": write_mp4(root / "clip.mkv", FRAMES, FPS, gop=10),
    }
    paths["faststart"] = remux_faststart(paths["short_gop"], root / "faststart.mp4")
    return paths


# ---------------------------------------------------------------------------------------------------------
# Frame-exact decode.

DECODERS = [("pyav", "seek"), ("pyav", "scan"), ("pyav", "auto"), ("decord", "auto")]
SAMPLINGS = {
    "fps": (dict(fps=7.0), None, None),
    "num_frames": (dict(num_frames=9), None, None),
    "every_frame": (dict(fps=30.0, max_frames=NUM_FRAMES), None, None),
    "clip_range": (dict(fps=5.0), 0.5, 1.4),
    "num_frames_clip": (dict(num_frames=4), 1.0, 5.0),
}


@pytest.mark.parametrize("backend,seek", DECODERS)
@pytest.mark.parametrize("gop", ["short_gop", "long_gop"])
@pytest.mark.parametrize("sampling", sorted(SAMPLINGS))
def test_decode_returns_the_sampled_source_frames(
    videos: dict[str, Path], backend: str, seek: str, gop: str, sampling: str
) -> None:
    kwargs, start, end = SAMPLINGS[sampling]
    cfg = DecodeConfig(backend=backend, seek=seek, size=HEIGHT, **kwargs)
    clip = decode_clip(str(videos[gop]), cfg, start, end)
    expected = sample_frame_indices(NUM_FRAMES, FPS, cfg, start, end)
    np.testing.assert_array_equal(clip.frame_indices, expected)
    assert clip.frame_indices.dtype == np.int64
    assert_frames_match(clip)


def test_sampled_indices_are_the_documented_ones(videos: dict[str, Path]) -> None:
    clip = decode_clip(str(videos["short_gop"]), DecodeConfig(fps=7.0, size=HEIGHT))
    # t = k / 7 s -> round(30 t), half up
    assert clip.frame_indices.tolist() == [0, 4, 9, 13, 17, 21, 26, 30, 34, 39, 43, 47, 51, 56]
    np.testing.assert_allclose(clip.timestamps_s, clip.frame_indices / FPS)
    assert clip.timestamps_s.dtype == np.float64
    assert (clip.clip_start_s, clip.clip_end_s) == (0.0, 2.0)

    clip = decode_clip(str(videos["short_gop"]), DecodeConfig(num_frames=4, size=HEIGHT), 1.0, 5.0)
    # The end is clamped to the 2 s duration: frames 30..59.
    assert clip.frame_indices.tolist() == [30, 40, 49, 59]
    assert (clip.clip_start_s, clip.clip_end_s) == (1.0, 2.0)


@pytest.mark.parametrize(
    "name,codec,gop",
    [
        # With B-frames an mp4 seek can land on the keyframe just after a target that precedes it in
        # display order (x265 does this); MPEG-TS seeks land late, even when asked for the start.
        ("hevc.mp4", "libx265", 7),
        ("h264.ts", "libx264", 7),
        ("h264_one_keyframe.ts", "libx264", NUM_FRAMES),
    ],
)
@pytest.mark.parametrize("seek", ["seek", "auto"])
def test_seeks_that_land_in_the_wrong_place_are_corrected(
    tmp_path: Path, name: str, codec: str, gop: int, seek: str
) -> None:
    path = write_mp4(tmp_path / name, FRAMES, FPS, codec=codec, gop=gop)
    cfg = DecodeConfig(seek=seek, fps=30.0, max_frames=NUM_FRAMES, size=HEIGHT)
    for start in (0.0, 0.2, 1.0):
        clip = decode_clip(str(path), cfg, start, start + 0.25)
        assert clip.frame_indices.tolist() == list(range(round(start * FPS), round((start + 0.25) * FPS)))
        assert_frames_match(clip)
    clip = decode_clip(str(path), DecodeConfig(seek=seek, fps=9.0, size=HEIGHT))
    assert_frames_match(clip)


def test_seek_scan_and_auto_give_identical_pixels(videos: dict[str, Path]) -> None:
    for name in ("short_gop", "long_gop", "mkv"):
        outputs = [
            decode_clip(str(videos[name]), DecodeConfig(seek=seek, num_frames=7, size=32)).frames
            for seek in ("seek", "scan", "auto")
        ]
        np.testing.assert_array_equal(outputs[0], outputs[1])
        np.testing.assert_array_equal(outputs[0], outputs[2])


def test_pyav_and_decord_agree_when_resizing(videos: dict[str, Path]) -> None:
    # 64x48 -> 43x32 -> 32x32: both resize with swscale bilinear, but different FFmpeg versions.
    pyav = decode_clip(str(videos["short_gop"]), DecodeConfig(backend="pyav", num_frames=6, size=32))
    dec = decode_clip(str(videos["short_gop"]), DecodeConfig(backend="decord", num_frames=6, size=32))
    np.testing.assert_array_equal(pyav.frame_indices, dec.frame_indices)
    assert pyav.frames.shape == dec.frames.shape == (6, 32, 32, 3)
    assert np.abs(pyav.frames.astype(int) - dec.frames.astype(int)).mean() < 2.0
    expected = np.stack([resize_center_crop(FRAMES[i], 32) for i in pyav.frame_indices])
    assert np.abs(pyav.frames.astype(int) - expected.astype(int)).mean() < 3.0


@pytest.mark.parametrize("backend", ["pyav", "decord"])
def test_matroska_without_a_frame_count(videos: dict[str, Path], backend: str) -> None:
    info = probe(str(videos["mkv"]))
    assert (info.num_frames, info.source_fps, info.duration_s) == (NUM_FRAMES, FPS, 2.0)
    clip = decode_clip(str(videos["mkv"]), DecodeConfig(backend=backend, num_frames=8, size=HEIGHT))
    assert clip.frame_indices.tolist() == [0, 8, 17, 25, 34, 42, 51, 59]
    assert_frames_match(clip)


def test_probe_reads_the_header(videos: dict[str, Path]) -> None:
    path = videos["short_gop"]
    info = probe(str(path))
    assert info.uri == str(path)
    assert (info.source_fps, info.num_frames, info.duration_s) == (FPS, NUM_FRAMES, 2.0)
    assert (info.height, info.width, info.codec) == (HEIGHT, WIDTH, "h264")
    assert info.file_bytes == path.stat().st_size


def test_decode_stops_after_the_last_sampled_frame(videos: dict[str, Path], tmp_path: Path) -> None:
    # Frames past the cut are never read when the clip ends before it; sampling the whole file fails.
    half = cut(videos["faststart"], tmp_path / "half.mp4", videos["faststart"].stat().st_size // 2)
    clip = decode_clip(str(half), DecodeConfig(fps=10.0, size=HEIGHT), 0.0, 0.5)
    assert clip.frame_indices.tolist() == [0, 3, 6, 9, 12]
    assert_frames_match(clip)
    with pytest.raises(DecodeError) as e:
        decode_clip(str(half), DecodeConfig(num_frames=4, size=HEIGHT))
    assert e.value.reason == "truncated"


# ---------------------------------------------------------------------------------------------------------
# Reading over fsspec.


@pytest.fixture
def memory_uri(videos: dict[str, Path]) -> Iterator[str]:
    import fsspec

    fs = fsspec.filesystem("memory")
    path = f"/vtok-test-{uuid.uuid4().hex}/short_gop.mp4"
    fs.pipe(path, videos["short_gop"].read_bytes())
    yield f"memory://{path}"
    fs.rm(path)


@pytest.mark.parametrize("backend", ["pyav", "decord"])
def test_memory_uri_decodes_like_the_local_file(
    videos: dict[str, Path], memory_uri: str, backend: str
) -> None:
    cfg = DecodeConfig(backend=backend, num_frames=5, size=HEIGHT)
    remote = decode_clip(memory_uri, cfg)
    local = decode_clip(str(videos["short_gop"]), cfg)
    np.testing.assert_array_equal(remote.frame_indices, local.frame_indices)
    np.testing.assert_array_equal(remote.frames, local.frames)
    assert remote.info.uri == memory_uri and remote.info.file_bytes == local.info.file_bytes
    assert probe(memory_uri).num_frames == NUM_FRAMES


def test_file_uri(videos: dict[str, Path]) -> None:
    clip = decode_clip(f"file://{videos['short_gop']}", DecodeConfig(num_frames=3, size=HEIGHT))
    assert clip.frame_indices.tolist() == [0, 30, 59]
    assert_frames_match(clip)


# ---------------------------------------------------------------------------------------------------------
# sample_frame_indices and resize_center_crop.


def test_sample_by_fps() -> None:
    indices = sample_frame_indices(300, 30.0, DecodeConfig(fps=4.0, max_frames=40))
    # t = k / 4 s -> 7.5 k frames, half rounds up.
    assert indices.tolist()[:16] == [0, 8, 15, 23, 30, 38, 45, 53, 60, 68, 75, 83, 90, 98, 105, 113]
    assert len(indices) == 40 and indices.dtype == np.int64
    # 40 frames by rate exceed max_frames=16: 16 spread over the whole 10 s instead of its first 4 s.
    capped = sample_frame_indices(300, 30.0, DecodeConfig(fps=4.0, max_frames=16))
    assert capped.tolist() == [0, 20, 40, 60, 80, 100, 120, 140, 159, 179, 199, 219, 239, 259, 279, 299]
    assert sample_frame_indices(300, 30.0, DecodeConfig(fps=1.0)).tolist() == [
        0,
        30,
        60,
        90,
        120,
        150,
        180,
        210,
        240,
        270,
    ]


def test_sample_by_num_frames() -> None:
    assert sample_frame_indices(100, 25.0, DecodeConfig(num_frames=5)).tolist() == [0, 25, 50, 74, 99]
    capped = sample_frame_indices(100, 25.0, DecodeConfig(num_frames=50, max_frames=8))
    assert len(capped) == 8 and capped[0] == 0 and capped[-1] == 99
    assert np.all(np.diff(capped) > 0)
    # More frames asked than the clip has: every frame once.
    assert sample_frame_indices(5, 25.0, DecodeConfig(num_frames=9)).tolist() == [0, 1, 2, 3, 4]
    assert sample_frame_indices(50, 25.0, DecodeConfig(num_frames=1)).tolist() == [0]


def test_sample_clip_range() -> None:
    cfg = DecodeConfig(fps=2.0)
    assert sample_frame_indices(300, 30.0, cfg, 1.0, 3.0).tolist() == [30, 45, 60, 75]
    # The end clamps to the duration (10 s); the start alone keeps the rest of the video.
    assert sample_frame_indices(300, 30.0, cfg, 8.0, 60.0).tolist() == [240, 255, 270, 285]
    assert sample_frame_indices(300, 30.0, cfg, 8.0).tolist() == [240, 255, 270, 285]
    assert sample_frame_indices(300, 30.0, DecodeConfig(num_frames=3), 2.0, 4.0).tolist() == [60, 90, 119]
    # A clip shorter than a frame interval still gives the frame on screen at its start.
    assert sample_frame_indices(300, 30.0, cfg, 0.51, 0.52).tolist() == [15]


def test_sample_empty_and_degenerate() -> None:
    cfg = DecodeConfig()
    assert sample_frame_indices(300, 30.0, cfg, 20.0, 25.0).size == 0  # clip past the end
    assert sample_frame_indices(300, 30.0, cfg, 3.0, 3.0).size == 0  # empty clip
    assert sample_frame_indices(0, 30.0, cfg).size == 0
    # A target rate above the source rate cannot repeat frames.
    assert sample_frame_indices(10, 5.0, DecodeConfig(fps=30.0, max_frames=60)).tolist() == list(range(10))
    with pytest.raises(ValueError, match="source_fps"):
        sample_frame_indices(10, 0.0, cfg)


def test_resize_center_crop_wide_and_tall() -> None:
    wide = np.zeros((40, 100, 3), dtype=np.uint8)
    wide[:, :30] = (255, 0, 0)
    wide[:, 30:70] = (0, 255, 0)
    wide[:, 70:] = (0, 0, 255)
    out = resize_center_crop(wide, 20)
    # 40x100 -> 20x50, and the centre 20 columns are source columns 30..70: all green.
    assert out.shape == (20, 20, 3) and out.dtype == np.uint8
    assert np.all(out[:, 2:-2, 1] > 240) and np.all(out[:, 2:-2, [0, 2]] < 15)

    tall = np.ascontiguousarray(wide.transpose(1, 0, 2))
    out = resize_center_crop(tall, 16)
    assert out.shape == (16, 16, 3)
    assert np.all(out[2:-2, :, 1] > 240)

    square = np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize_center_crop(square, 24), square)
    up = resize_center_crop(np.full((8, 12, 3), 77, np.uint8), 16)
    assert up.shape == (16, 16, 3) and np.all(np.abs(up.astype(int) - 77) <= 1)


# ---------------------------------------------------------------------------------------------------------
# Errors: every failure is a DecodeError with a reason and the input's URI.


def decode_error(uri: str | Path, cfg: DecodeConfig | None = None) -> DecodeError:
    with pytest.raises(DecodeError) as e:
        decode_clip(str(uri), cfg or DecodeConfig(num_frames=4, size=32))
    assert str(uri) in str(e.value)
    assert e.value.uri == str(uri) and e.value.reason in REASONS
    return e.value


@pytest.mark.parametrize("backend", ["pyav", "decord"])
def test_error_reasons(videos: dict[str, Path], tmp_path: Path, backend: str) -> None:
    cfg = DecodeConfig(backend=backend, num_frames=4, size=32)
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "garbage.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    mp4 = videos["short_gop"]
    cases = {
        tmp_path / "nope.mp4": "missing",
        tmp_path / "empty.mp4": "zero_bytes",
        tmp_path / "garbage.mp4": "not_a_video",
        tmp_path: "not_a_video",  # a directory
        write_audio_only(tmp_path / "audio.m4a"): "no_video_stream",
        # moov box at the end, cut off: the header itself is gone.
        cut(mp4, tmp_path / "half.mp4", mp4.stat().st_size // 2): "truncated",
        # moov at the front: the header promises 60 frames, the data stops half way.
        cut(
            videos["faststart"], tmp_path / "fs_half.mp4", videos["faststart"].stat().st_size // 2
        ): "truncated",
        cut(videos["mkv"], tmp_path / "half.mkv", videos["mkv"].stat().st_size // 2): "truncated",
        cut(videos["mkv"], tmp_path / "head.mkv", 40): "truncated",
    }
    for uri, reason in cases.items():
        error = decode_error(uri, cfg)
        assert error.reason == reason, (uri, str(error))


def test_header_without_frames_is_zero_frames(videos: dict[str, Path], tmp_path: Path) -> None:
    # A faststart mp4 cut just after its moov box: a valid header, no frame data.
    data = videos["faststart"].read_bytes()
    assert data[36:40] == b"moov"
    moov_end = 32 + int.from_bytes(data[32:36], "big")
    error = decode_error(cut(videos["faststart"], tmp_path / "header_only.mp4", moov_end + 16))
    assert error.reason == "zero_frames"


def test_clip_outside_the_video_is_zero_frames(videos: dict[str, Path]) -> None:
    with pytest.raises(DecodeError) as e:
        decode_clip(str(videos["short_gop"]), DecodeConfig(), 5.0, 6.0)
    assert e.value.reason == "zero_frames"


@pytest.mark.parametrize(
    "limit,value",
    [("max_file_bytes", 1000), ("max_duration_s", 1.5), ("max_side", 63), ("max_source_frames", 59)],
)
def test_over_limit_from_the_header(videos: dict[str, Path], limit: str, value: float) -> None:
    error = decode_error(videos["short_gop"], DecodeConfig(**{limit: value}))
    assert error.reason == "over_limit"
    assert f"decode.{limit}={value}" in error.message


def test_over_limit_over_fsspec(memory_uri: str) -> None:
    error = decode_error(memory_uri, DecodeConfig(max_file_bytes=1000))
    assert error.reason == "over_limit" and "max_file_bytes" in error.message


def test_decord_cannot_decode_av1(tmp_path: Path) -> None:
    av1 = write_mp4(tmp_path / "av1.mp4", FRAMES[:20], FPS, codec="libsvtav1", gop=10)
    assert probe(str(av1)).codec == "av1"
    error = decode_error(av1, DecodeConfig(backend="decord", num_frames=2, size=32))
    assert error.reason == "unsupported_codec"
    # PyAV decodes it (dav1d).
    clip = decode_clip(str(av1), DecodeConfig(backend="pyav", num_frames=3, size=HEIGHT))
    assert clip.frame_indices.tolist() == [0, 10, 19]
    assert_frames_match(clip)


def test_probe_errors(tmp_path: Path) -> None:
    with pytest.raises(DecodeError) as e:
        probe(str(tmp_path / "nope.mp4"))
    assert e.value.reason == "missing"
    with pytest.raises(DecodeError) as e:
        probe(str(write_audio_only(tmp_path / "a.m4a")))
    assert e.value.reason == "no_video_stream"
    with pytest.raises(DecodeError) as e:
        probe("nosuchprotocol://bucket/x.mp4")
    assert e.value.reason == "missing" and "nosuchprotocol://bucket/x.mp4" in str(e.value)


def test_decode_error_is_picklable_and_formatted() -> None:
    error = DecodeError("s3://b/v.mp4", "truncated", "ends early")
    assert str(error) == "s3://b/v.mp4: truncated: ends early"
    again = pickle.loads(pickle.dumps(error))
    assert (again.uri, again.reason, again.message, str(again)) == (
        "s3://b/v.mp4",
        "truncated",
        "ends early",
        str(error),
    )
    with pytest.raises(ValueError, match="reason"):
        DecodeError("x", "bad_reason", "m")


# ---------------------------------------------------------------------------------------------------------
# DecodeConfig validation.


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(fps=-1), "decode.fps must be > 0, got -1"),
        (dict(fps=float("nan")), "decode.fps must be > 0"),
        (dict(num_frames=0), "decode.num_frames must be > 0, got 0"),
        (dict(max_frames=0), "decode.max_frames"),
        (dict(size=0), "decode.size"),
        (dict(size=2.5), "decode.size must be an int"),
        (dict(backend="ffmpeg"), "decode.backend"),
        (dict(seek="fast"), "decode.seek"),
        (dict(fps=None), "decode.fps and decode.num_frames"),
        (dict(max_duration_s=0), "decode.max_duration_s"),
        (dict(max_file_bytes=-5), "decode.max_file_bytes"),
        (dict(max_side=True), "decode.max_side"),
        (dict(max_source_frames=0), "decode.max_source_frames"),
    ],
)
def test_config_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        DecodeConfig(**kwargs)


def test_config_defaults_are_valid() -> None:
    cfg = DecodeConfig()
    assert (cfg.backend, cfg.fps, cfg.num_frames, cfg.max_frames, cfg.size, cfg.seek) == (
        "auto",
        4.0,
        None,
        16,
        224,
        "auto",
    )
    DecodeConfig(fps=None, num_frames=8)
