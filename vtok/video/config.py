"""Decode settings, results and failures: `REASONS`, `DecodeError`, `DecodeConfig`, `VideoInfo`,
`DecodedClip`, and the constants the decoders share."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

REASONS: tuple[str, ...] = (
    "missing",
    "zero_bytes",
    "not_a_video",
    "truncated",
    "no_video_stream",
    "unsupported_codec",
    "zero_frames",
    "over_limit",
    "decoder_crash",
    "timeout",
    # Damage inside an otherwise complete file: packets the decoder rejects, or frame timestamps that
    # contradict the header.
    "corrupt",
    # The input exists but cannot be read: permission denied, a symlink loop, an I/O error.
    "unreadable",
    # A manifest row that cannot be parsed into an input (raised by the listing, not by this module).
    "bad_row",
)


BACKENDS: tuple[str, ...] = ("auto", "pyav", "decord")
SEEK_MODES: tuple[str, ...] = ("auto", "seek", "scan")

# Codecs the decord 0.6.0 wheel cannot decode (its bundled FFmpeg has no AV1 decoder); it fails with an
# opaque "cannot find video stream" otherwise.
_DECORD_UNSUPPORTED = frozenset({"av1"})
# Decode errors tolerated (packets skipped, as the ffmpeg CLI does) before the file counts as broken.
_MAX_PACKET_ERRORS = 64
# Container formats whose index lists every keyframe (mp4 sample table, Matroska cues): seek targets can
# be predicted from it. Others (MPEG-TS) index only what was read so far.
_INDEXED_FORMATS = frozenset({"mov", "matroska"})
# Frames of decoding a seek must save to be worth it: it flushes the frames in flight in decoder threads.
_SEEK_COST_FRAMES = 4
# Frames at the end that may be absent from the timestamps without the file counting as truncated (the
# last decoded frame stands in): the larger of a count and a fraction of the header's frame count.
_END_SLACK_FRAMES = 2
_END_SLACK_FRACTION = 0.01


class DecodeError(Exception):
    """A video that cannot be decoded; `reason` is one of REASONS."""

    def __init__(self, uri: str, reason: str, message: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown decode error reason {reason!r}; expected one of {REASONS}")
        super().__init__(f"{uri}: {reason}: {message}")
        self.uri = uri
        self.reason = reason
        self.message = message

    def __reduce__(self) -> tuple[type[DecodeError], tuple[str, str, str]]:
        # Ray ships exceptions between processes; the default reduce would call __init__ with one arg.
        return (DecodeError, (self.uri, self.reason, self.message))


@dataclass
class DecodeConfig:
    """How to sample, decode and resize frames, and the limits for untrusted input."""

    backend: str = "auto"
    """Decoder: "pyav", "decord", or "auto" (= pyav, which reads any fsspec URI without a local copy)."""
    fps: float | None = 4.0
    """Target sampling rate in frames per second; ignored when num_frames is set.
    Where it would give more than max_frames frames, max_frames are spread evenly over the whole clip."""
    num_frames: int | None = None
    """Sample exactly this many frames evenly over the clip (capped by max_frames) instead of by fps."""
    max_frames: int = 16
    """Cap on the number of sampled frames per clip.
    Reached by spreading the frames wider (a lower effective fps), never by cutting the clip short."""
    size: int = 224
    """Output frames are size x size: the shortest side is resized to size, then centre-cropped."""
    seek: str = "auto"
    """Reaching sampled frames: "seek" to each, "scan" forward, "auto": seek only where it skips decoding."""
    threads: int = 1
    """Decoder threads per clip: 1 decodes in the calling thread, which does the most work per CPU second
    when every core runs a decode task (BENCHMARKS.md); 0 lets FFmpeg choose (about one per core)."""
    max_file_bytes: int = 8 << 30
    """Largest accepted file size in bytes, checked before the file is opened."""
    max_duration_s: float = 4 * 3600.0
    """Longest accepted duration in seconds: every duration the header states, and every frame time read."""
    max_side: int = 8192
    """Largest accepted max(height, width) of the source, read from the container header."""
    max_source_frames: int = 2_000_000
    """Largest accepted number of frames in the source stream, read (or estimated) from the header."""

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"decode.backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.seek not in SEEK_MODES:
            raise ValueError(f"decode.seek must be one of {SEEK_MODES}, got {self.seek!r}")
        if self.fps is None and self.num_frames is None:
            raise ValueError("decode.fps and decode.num_frames cannot both be None: set one of them")
        if self.fps is not None:
            _check_positive("fps", self.fps, integer=False)
        if self.num_frames is not None:
            _check_positive("num_frames", self.num_frames, integer=True)
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 0:
            raise ValueError(f"decode.threads must be an int >= 0, got {self.threads!r}")
        for name in ("max_frames", "size", "max_file_bytes", "max_side", "max_source_frames"):
            _check_positive(name, getattr(self, name), integer=True)
        _check_positive("max_duration_s", self.max_duration_s, integer=False)


def _check_positive(name: str, value: Any, integer: bool) -> None:
    kind = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        expected = "an int" if integer else "a number"
        raise ValueError(f"decode.{name} must be {expected}, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"decode.{name} must be > 0, got {value!r}")


@dataclass
class VideoInfo:
    """What the container header says about a video's video stream (the first that is not cover art)."""

    uri: str
    """The input as given."""
    source_fps: float
    """Average frame rate of the video stream."""
    num_frames: int
    """Frames in the stream: from the header, or round(duration * fps) where the container stores none."""
    duration_s: float
    """Duration of the video stream in seconds: the longest the header states for it (stream duration,
    frame count / fps, a Matroska DURATION tag; the container's duration where the stream states none)."""
    height: int
    """Displayed frame height in pixels: the coded height, or the coded width where the display turns the
    frames by 90 or 270 degrees."""
    width: int
    """Displayed frame width in pixels."""
    codec: str
    """FFmpeg's canonical codec name, e.g. "h264", "hevc", "av1", "vp9"."""
    file_bytes: int | None
    """File size, where the filesystem reports one."""
    coded_height: int
    """Frame height as stored in the stream, before the display rotation."""
    coded_width: int
    """Frame width as stored in the stream, before the display rotation."""
    rotation: int
    """Degrees (0, 90, 180, 270) the coded frames are turned clockwise to be shown upright, from the
    container's display matrix: 90 for a phone's portrait video, as the mp4 "rotate" tag has it."""
    mirrored: bool
    """Whether the display also mirrors the turned frames left to right (a flipped display matrix)."""


@dataclass
class DecodedClip:
    """The sampled frames of one clip."""

    frames: np.ndarray
    """uint8 [T, size, size, 3] RGB."""
    frame_indices: np.ndarray
    """int64 [T], strictly increasing indices into the source stream's frames (0 = first frame)."""
    timestamps_s: np.ndarray
    """float64 [T], frame_indices / source_fps: each frame's time from the start of the stream."""
    info: VideoInfo
    """The probed header of the source."""
    clip_start_s: float
    """Start of the clip range the sampled frames cover."""
    clip_end_s: float
    """End of the clip range the sampled frames cover (the requested end, clamped to the duration): the
    sampling spreads over the whole range, so this is never more than the frames represent."""
