"""vtok.video on hostile and unusual input: no silent wrong data (issue 10).

Rotated phone video, clips longer than max_frames allows at the target rate, headers whose durations
disagree or claim absurd sizes, and damaged or mislabelled files. Every input is a real file made here.
"""

from __future__ import annotations

import os
import struct
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from vtok.media import write_mp4
from vtok.video import (
    REASONS,
    DecodeConfig,
    DecodeError,
    decode_clip,
    probe,
    sample_frame_indices,
)

BACKENDS = ["pyav", "decord"]
FPS = 10
HEIGHT, WIDTH = 48, 64


def pattern(i: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """Frame i: red ramps left to right, green top to bottom, blue carries the frame number.

    No rotation or mirror maps the picture onto itself, so an unrotated frame is far from a rotated one.
    """
    y, x = np.mgrid[0:height, 0:width]
    frame = np.empty((height, width, 3), np.uint8)
    frame[..., 0] = 30 + 190 * x // (width - 1)
    frame[..., 1] = 30 + 190 * y // (height - 1)
    frame[..., 2] = 20 + 8 * i
    return frame


FRAMES = np.stack([pattern(i) for i in range(20)])


def turn_clockwise(frames: np.ndarray, degrees: int) -> np.ndarray:
    return np.ascontiguousarray(np.rot90(frames, k=-(degrees // 90), axes=(1, 2)))


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a.astype(np.int64) - b.astype(np.int64)).mean())


def error_of(uri: str | Path, cfg: DecodeConfig) -> DecodeError:
    with pytest.raises(DecodeError) as e:
        decode_clip(str(uri), cfg)
    assert e.value.uri == str(uri) and e.value.reason in REASONS
    return e.value


# ---------------------------------------------------------------------------------------------------------
# (A) Display rotation.


def ffmpeg_rotation_cw(path: Path) -> int:
    """The clockwise display rotation FFmpeg itself reads back from the file (PyAV reports it CCW)."""
    import av

    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        return (-frame.rotation) % 360


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("degrees", [90, 180, 270])
@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_rotated_video_is_decoded_upright(tmp_path: Path, backend: str, degrees: int, ext: str) -> None:
    tagged = write_mp4(tmp_path / f"tagged.{ext}", FRAMES, FPS, gop=5, display_rotation=degrees)
    turned = write_mp4(tmp_path / f"turned.{ext}", turn_clockwise(FRAMES, degrees), FPS, gop=5)
    assert ffmpeg_rotation_cw(tagged) == degrees and ffmpeg_rotation_cw(turned) == 0
    plain = write_mp4(tmp_path / f"plain.{ext}", FRAMES, FPS, gop=5)
    display = (WIDTH, HEIGHT) if degrees in (90, 270) else (HEIGHT, WIDTH)
    # Both sizes resample (decord 0.6.0 fails on any 48x64 portrait output, rotation or not).
    for size in (40, 32):
        cfg = DecodeConfig(backend=backend, num_frames=5, size=size)
        got = decode_clip(str(tagged), cfg)
        want = decode_clip(str(turned), cfg)
        np.testing.assert_array_equal(got.frame_indices, want.frame_indices)
        assert mean_abs_diff(got.frames, want.frames) < 3.0
        # The test means something: the coded (unturned) frames are far from the upright ones.
        assert mean_abs_diff(decode_clip(str(plain), cfg).frames, want.frames) > 20.0
        assert (got.info.height, got.info.width) == display
        assert (got.info.coded_height, got.info.coded_width) == (HEIGHT, WIDTH)
        assert (got.info.rotation, got.info.mirrored) == (degrees, False)
        assert (want.info.height, want.info.width, want.info.rotation) == (*display, 0)


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_probe_reports_the_display_size_of_rotated_mp4(tmp_path: Path, degrees: int) -> None:
    tagged = write_mp4(tmp_path / "tagged.mp4", FRAMES, FPS, display_rotation=degrees)
    info = probe(str(tagged))
    display = (WIDTH, HEIGHT) if degrees in (90, 270) else (HEIGHT, WIDTH)
    assert (info.height, info.width, info.rotation, info.mirrored) == (*display, degrees, False)
    assert (info.coded_height, info.coded_width) == (HEIGHT, WIDTH)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mirrored_video_is_unmirrored(tmp_path: Path, backend: str) -> None:
    import av

    path = tmp_path / "mirror.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.set_display_rotation(0, hflip=True)
        for array in FRAMES:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24").reformat(format="yuv420p")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    flipped = write_mp4(tmp_path / "flipped.mp4", np.ascontiguousarray(FRAMES[:, :, ::-1]), FPS)
    cfg = DecodeConfig(backend=backend, num_frames=3, size=HEIGHT)
    got, want = decode_clip(str(path), cfg), decode_clip(str(flipped), cfg)
    assert mean_abs_diff(got.frames, want.frames) < 3.0
    assert (got.info.rotation, got.info.mirrored, got.info.height, got.info.width) == (0, True, HEIGHT, WIDTH)


# ---------------------------------------------------------------------------------------------------------
# (B) Sampling when max_frames caps the clip: spread uniformly over the whole clip, and say so.


def test_fps_sampling_capped_by_max_frames_spreads_over_the_whole_clip() -> None:
    # 20 s at 30 fps, defaults (fps 4, max_frames 16): 80 frames by rate, so 16 spread over all 20 s.
    indices = sample_frame_indices(600, 30.0, DecodeConfig())
    assert len(indices) == 16 and indices[0] == 0 and indices[-1] == 599
    np.testing.assert_array_equal(indices, np.floor(np.linspace(0, 599, 16) + 0.5).astype(np.int64))
    # A clip range: spread over the range's frames, not the video's.
    ranged = sample_frame_indices(600, 30.0, DecodeConfig(), 5.0, 15.0)
    assert len(ranged) == 16 and (ranged[0], ranged[-1]) == (150, 449)


# Outputs of the previous implementation where fps sampling stays within max_frames: unchanged.
UNCAPPED = [
    (300, 30.0, dict(fps=4.0, max_frames=40), None, None,
     [0, 8, 15, 23, 30, 38, 45, 53, 60, 68, 75, 83, 90, 98, 105, 113, 120, 128, 135, 143, 150, 158, 165, 173,
      180, 188, 195, 203, 210, 218, 225, 233, 240, 248, 255, 263, 270, 278, 285, 293]),
    (300, 30.0, dict(fps=1.0), None, None, [0, 30, 60, 90, 120, 150, 180, 210, 240, 270]),
    (60, 30.0, dict(fps=7.0), None, None, [0, 4, 9, 13, 17, 21, 26, 30, 34, 39, 43, 47, 51, 56]),
    (300, 30.0, dict(fps=2.0), 1.0, 3.0, [30, 45, 60, 75]),
    (300, 30.0, dict(fps=2.0), 8.0, 60.0, [240, 255, 270, 285]),
    (300, 30.0, dict(fps=2.0), 0.51, 0.52, [15]),
    (120, 24.0, dict(fps=4.0), 0.0, 4.0, [0, 6, 12, 18, 24, 30, 36, 42, 48, 54, 60, 66, 72, 78, 84, 90]),
    (250, 29.97, dict(fps=4.0), 2.5, 6.5, [75, 82, 90, 97, 105, 112, 120, 127, 135, 142, 150, 157, 165, 172, 180, 187]),
    (10, 5.0, dict(fps=30.0, max_frames=60), None, None, list(range(10))),
    (100, 25.0, dict(num_frames=5), None, None, [0, 25, 50, 74, 99]),
    (100, 25.0, dict(num_frames=50, max_frames=8), None, None, [0, 14, 28, 42, 57, 71, 85, 99]),
    (300, 30.0, dict(num_frames=3), 2.0, 4.0, [60, 90, 119]),
    (601, 30.0, dict(num_frames=16), 0.0, 20.0,
     [0, 40, 80, 120, 160, 200, 240, 280, 319, 359, 399, 439, 479, 519, 559, 599]),
]


@pytest.mark.parametrize("frames,fps,kwargs,start,end,expected", UNCAPPED)
def test_uncapped_and_num_frames_sampling_is_unchanged(
    frames: int, fps: float, kwargs: dict, start: float | None, end: float | None, expected: list[int]
) -> None:
    assert sample_frame_indices(frames, fps, DecodeConfig(**kwargs), start, end).tolist() == expected


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_long_clip_is_tokenized_over_its_whole_range(tmp_path: Path, backend: str) -> None:
    # 20 s at 5 fps; frame i is grey level 2 + 2.5 i, so each decoded frame names its source frame.
    count = 100
    levels = 2 + 2.5 * np.arange(count)
    frames = np.broadcast_to(levels.astype(np.uint8)[:, None, None, None], (count, 32, 32, 3)).copy()
    path = write_mp4(tmp_path / "long.mp4", frames, 5, gop=10)
    clip = decode_clip(str(path), DecodeConfig(backend=backend, size=32))
    assert len(clip.frame_indices) == 16
    assert (clip.frame_indices[0], clip.frame_indices[-1]) == (0, count - 1)
    assert (clip.clip_start_s, clip.clip_end_s) == (0.0, 20.0)
    assert clip.timestamps_s[-1] >= 19.8
    grey = clip.frames.astype(np.float64).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(grey, np.floor(levels[clip.frame_indices]), atol=1.2)


# ---------------------------------------------------------------------------------------------------------
# (C) Limits a header can lie past.


def boxes(data: bytes | bytearray, start: int, end: int) -> dict[bytes, list[int]]:
    """Offsets of the ISO-BMFF boxes in data[start:end], by type (32-bit sizes only: small test files)."""
    found: dict[bytes, list[int]] = {}
    pos = start
    while pos + 8 <= end:
        size = int.from_bytes(data[pos : pos + 4], "big")
        found.setdefault(bytes(data[pos + 4 : pos + 8]), []).append(pos)
        pos += size
    return found


def child(data: bytearray, parent: int, kind: bytes) -> int:
    size = int.from_bytes(data[parent : parent + 4], "big")
    return boxes(data, parent + 8, parent + size)[kind][0]


def set_duration(data: bytearray, box: int, value: int) -> None:
    """Overwrite the duration field of an mvhd, tkhd or mdhd box (version 0 or 1)."""
    version = data[box + 8]
    kind = bytes(data[box + 4 : box + 8])
    # Fields before the duration: creation and modification times, then timescale (mvhd, mdhd) or
    # track id and a reserved word (tkhd).
    offset = box + 12 + (16 if version else 8) + (8 if kind == b"tkhd" else 4)
    if version:
        data[offset : offset + 8] = value.to_bytes(8, "big")
    else:
        data[offset : offset + 4] = value.to_bytes(4, "big")


def write_sparse(path: Path, count: int, seconds_per_frame: int, rate: Fraction | None = None) -> Path:
    """An h264 video whose frames are seconds_per_frame apart (`rate`: the frame rate it declares)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate or Fraction(1, seconds_per_frame))
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for k in range(count):
            frame = av.VideoFrame.from_ndarray(pattern(k), format="rgb24").reformat(format="yuv420p")
            frame.pts, frame.time_base = k * seconds_per_frame * 1000, Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.mark.parametrize("backend", BACKENDS)
def test_mp4_durations_that_disagree_are_checked_against_the_longest(tmp_path: Path, backend: str) -> None:
    # 30 frames 12,000 s apart (100 h), with movie, track and media header durations rewritten to one tick:
    # only the sample table (frames / fps) still tells the truth.
    data = bytearray(write_sparse(tmp_path / "sparse.mp4", 30, 12_000).read_bytes())
    moov = boxes(data, 0, len(data))[b"moov"][0]
    trak = child(data, moov, b"trak")
    for box in (child(data, moov, b"mvhd"), child(data, trak, b"tkhd"), child(data, child(data, trak, b"mdia"), b"mdhd")):
        set_duration(data, box, 1)
    path = tmp_path / "lying.mp4"
    path.write_bytes(data)
    assert probe(str(path)).duration_s == pytest.approx(360_000.0)
    error = error_of(path, DecodeConfig(backend=backend))
    assert error.reason == "over_limit" and "decode.max_duration_s=14400.0" in error.message


def lying_mkv(tmp_path: Path, name: str, seconds_per_frame: int, keep_tag: bool) -> Path:
    """A Matroska file declaring 25 fps whose segment Duration says 1 s; its DURATION tag is kept or also
    set to 1 s."""
    src = write_sparse(tmp_path / f"{name}.src.mkv", 30, seconds_per_frame, rate=Fraction(25))
    data = bytearray(src.read_bytes())
    cluster = data.find(b"\x1f\x43\xb6\x75")
    at = data.find(b"\x44\x89\x88", 0, cluster)  # Duration, an 8-byte float in milliseconds
    assert at > 0
    data[at + 3 : at + 11] = struct.pack(">d", 1000.0)
    if not keep_tag:
        tag = data.find(b"DURATION")
        value = data.find(b"\x44\x87", tag) + 3  # its TagString: HH:MM:SS.nnnnnnnnn, hours padded
        length = data[value - 1] & 0x7F
        data[value : value + length] = b"0" * (length - 16) + b":00:01.000000000"
    path = tmp_path / f"{name}.mkv"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("backend", BACKENDS)
def test_matroska_duration_tag_is_a_stated_duration(tmp_path: Path, backend: str) -> None:
    path = lying_mkv(tmp_path, "tagged", 12_000, keep_tag=True)
    error = error_of(path, DecodeConfig(backend=backend))
    assert error.reason == "over_limit" and "max_duration_s" in error.message


@pytest.mark.parametrize("backend", BACKENDS)
def test_frame_timestamps_past_the_limit_are_over_limit(tmp_path: Path, backend: str) -> None:
    # Every duration in the header says 1 s; the second frame is at 20,000 s, past the 4 h limit.
    path = lying_mkv(tmp_path, "sparse", 20_000, keep_tag=False)
    assert probe(str(path)).duration_s == pytest.approx(1.0, abs=0.05)
    error = error_of(path, DecodeConfig(backend=backend, num_frames=4))
    assert error.reason == "over_limit" and "max_duration_s" in error.message


@pytest.mark.parametrize("backend", BACKENDS)
def test_frame_timestamps_past_the_header_are_not_silently_sampled(tmp_path: Path, backend: str) -> None:
    # Within the limit, but the header's 1 s is a lie: frame 1 is at 12,000 s. The sampled times
    # k / fps do not exist, and the frames that would stand in for them are hours away.
    path = lying_mkv(tmp_path, "sparse", 12_000, keep_tag=False)
    error = error_of(path, DecodeConfig(backend=backend, num_frames=4))
    assert error.reason == "corrupt" and "header" in error.message


def write_y4m(path: Path, header: bytes, payload: bytes) -> Path:
    path.write_bytes(header + b"FRAME\n" + payload)
    return path


@pytest.mark.parametrize("backend", BACKENDS)
def test_y4m_claiming_a_huge_frame_is_over_limit_before_opening(tmp_path: Path, backend: str) -> None:
    path = write_y4m(tmp_path / "huge.y4m", b"YUV4MPEG2 W100000 H100000 F25:1 Ip A1:1 C420jpeg\n", bytes(64))
    error = error_of(path, DecodeConfig(backend=backend))
    assert error.reason == "over_limit" and "decode.max_side=8192" in error.message
    with pytest.raises(DecodeError) as e:
        probe(str(path))
    assert e.value.reason == "over_limit"
    # A custom limit is honoured too, and a small y4m decodes.
    small = np.full((32, 32 * 3 // 2), 128, np.uint8).tobytes()
    ok = write_y4m(tmp_path / "ok.y4m", b"YUV4MPEG2 W32 H32 F25:1 Ip A1:1 C420jpeg\n", small)
    assert decode_clip(str(ok), DecodeConfig(backend=backend, num_frames=1, size=32)).frames.shape == (1, 32, 32, 3)
    assert error_of(ok, DecodeConfig(backend=backend, max_side=8)).reason == "over_limit"
    with pytest.raises(DecodeError) as e:
        probe(str(ok), cfg=DecodeConfig(max_side=8))
    assert e.value.reason == "over_limit"


# ---------------------------------------------------------------------------------------------------------
# (D) Reasons that say what happened, the same with either backend.


def test_reasons_grow_without_reordering() -> None:
    old = ("missing", "zero_bytes", "not_a_video", "truncated", "no_video_stream", "unsupported_codec",
           "zero_frames", "over_limit", "decoder_crash", "timeout")
    assert REASONS[: len(old)] == old
    assert {"corrupt", "unreadable", "bad_row"} <= set(REASONS)
    assert len(set(REASONS)) == len(REASONS)


def garble_mdat(src: Path, dst: Path, num_bytes: int) -> Path:
    """Overwrite num_bytes in the middle of the mp4's media data with noise; the size stays the same."""
    data = bytearray(src.read_bytes())
    mdat = boxes(data, 0, len(data))[b"mdat"][0]
    size = int.from_bytes(data[mdat : mdat + 4], "big")
    assert num_bytes <= size // 4, (num_bytes, size)
    middle = mdat + size // 2
    data[middle : middle + num_bytes] = np.random.default_rng(1).bytes(num_bytes)
    dst.write_bytes(data)
    return dst


def textured(count: int) -> np.ndarray:
    """Frames that each cost bits (noise on every pixel), so damage in the middle hits frames there."""
    rng = np.random.default_rng(0)
    return np.stack(
        [np.clip(20 + 3 * i + rng.integers(-12, 13, (HEIGHT, WIDTH, 1)), 0, 255).astype(np.uint8).repeat(3, 2)
         for i in range(count)]
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "gop,damage,sampling",
    [(60, 8_000, dict(num_frames=4)), (60, 2_000, dict(fps=30.0, max_frames=60)), (5, 2_000, dict(fps=30.0, max_frames=60))],
)
def test_damage_in_the_middle_is_corrupt(tmp_path: Path, backend: str, gop: int, damage: int, sampling: dict) -> None:
    good = write_mp4(tmp_path / "good.mp4", textured(60), 30, gop=gop)
    bad = garble_mdat(good, tmp_path / "bad.mp4", damage)
    assert decode_clip(str(good), DecodeConfig(backend=backend, size=32, **sampling)).frames.shape[0] > 0
    error = error_of(bad, DecodeConfig(backend=backend, size=32, **sampling))
    assert error.reason == "corrupt", str(error)


@pytest.mark.parametrize("backend", BACKENDS)
def test_truncated_stays_truncated(tmp_path: Path, backend: str) -> None:
    good = write_mp4(tmp_path / "good.mp4", textured(60), 30, gop=5)
    data = good.read_bytes()
    moov = boxes(data, 0, len(data))[b"moov"][0]
    # Half the file (no moov at all), and cuts inside the moov box at the end: FFmpeg opens those with
    # what header it could read (they gave no_video_stream, unsupported_codec and decoder_crash).
    cuts = {"half": len(data) // 2, **{f"moov_{f}": moov + int((len(data) - moov) * f) for f in (0.1, 0.25, 0.75)}}
    for name, size in cuts.items():
        cut = tmp_path / f"{name}.mp4"
        cut.write_bytes(data[:size])
        assert error_of(cut, DecodeConfig(backend=backend, num_frames=4, size=32)).reason == "truncated", name
        with pytest.raises(DecodeError) as e:
            probe(str(cut))
        assert e.value.reason == "truncated"


def write_image(path: Path, codec: str) -> Path:
    """One PNG or JPEG image (what an image encoder writes, byte for byte), whatever the file is called."""
    import av

    with av.open(str(path), "w", format="image2pipe") as container:
        stream = container.add_stream(codec, rate=1)
        stream.width, stream.height = WIDTH, HEIGHT
        stream.pix_fmt = "rgb24" if codec == "png" else "yuvj420p"
        frame = av.VideoFrame.from_ndarray(FRAMES[0], format="rgb24").reformat(format=stream.pix_fmt)
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    return path


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("codec,magic", [("png", b"\x89PNG"), ("mjpeg", b"\xff\xd8")])
def test_an_image_named_mp4_is_not_a_video(tmp_path: Path, backend: str, codec: str, magic: bytes) -> None:
    path = write_image(tmp_path / "photo.mp4", codec)
    assert path.read_bytes()[: len(magic)] == magic
    error = error_of(path, DecodeConfig(backend=backend, num_frames=4, size=32))
    assert error.reason == "not_a_video" and "image" in error.message
    with pytest.raises(DecodeError) as e:
        probe(str(path))
    assert e.value.reason == "not_a_video"


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_self_looping_symlink_is_unreadable(tmp_path: Path, backend: str) -> None:
    loop = tmp_path / "x.mp4"
    os.symlink("x.mp4", loop)
    error = error_of(loop, DecodeConfig(backend=backend, num_frames=4, size=32))
    assert error.reason == "unreadable"
    with pytest.raises(DecodeError) as e:
        probe(str(loop))
    assert e.value.reason == "unreadable"


@pytest.mark.parametrize("backend", BACKENDS)
def test_permission_denied_is_unreadable(tmp_path: Path, backend: str) -> None:
    path = write_mp4(tmp_path / "secret.mp4", FRAMES[:4], FPS)
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("this process reads files whatever their permissions (root with CAP_DAC_OVERRIDE)")
        assert error_of(path, DecodeConfig(backend=backend, num_frames=2, size=32)).reason == "unreadable"
        with pytest.raises(DecodeError) as e:
            probe(str(path))
        assert e.value.reason == "unreadable"
    finally:
        path.chmod(0o644)
