"""Video decode: probe a video, choose the frames to sample, and decode only those, resized and cropped.

`probe` reads a header, `sample_frame_indices` picks source frames (a pure function), `decode_clip`
decodes them with PyAV (any fsspec URI, read in place) or decord (local files; remote ones are copied
to a temporary file first). Source frame k is the frame whose pts is k / fps after the stream's start,
so seeking and scanning name the same frames, and both backends agree on constant-frame-rate video.
Frames come out upright: the container's display matrix (a phone's portrait video) is applied, as
players and `ffmpeg` do.

Inputs are untrusted: every failure becomes a `DecodeError` with a reason code from `REASONS`, and the
limits of `DecodeConfig` are checked from the container header before any frame is decoded, against the
longest of the durations the header states, and again against the timestamps of the frames read.
Nothing here raises "timeout": that reason is for callers that bound the time a decode may take.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import io
import math
import os
import re
import shutil
import struct
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
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

SAMPLING_POLICY = "uniform-when-capped-v1"
"""Names the frame-sampling rule of `sample_frame_indices`; datasets record it, so a change of rule
(a new name) is never mixed into an existing dataset."""

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


# ---------------------------------------------------------------------------------------------------------
# Sampling and resizing: pure functions.


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


@dataclass(frozen=True)
class _Orientation:
    """How a coded frame is turned to be shown: swap its axes, then mirror columns and/or rows.

    These three steps express all eight orientations a display matrix can take (rotations by multiples
    of 90 degrees, each optionally mirrored).
    """

    transpose: bool = False
    hflip: bool = False
    vflip: bool = False

    @property
    def mirrored(self) -> bool:
        # Each step is a reflection; an odd number of them leaves the picture mirrored.
        return (self.transpose + self.hflip + self.vflip) % 2 == 1

    @property
    def rotation(self) -> int:
        """Clockwise degrees, once a final left-right mirror (`mirrored`) is taken off."""
        return _ROTATIONS[(self.transpose, self.hflip != self.mirrored, self.vflip)]

    def apply(self, image: np.ndarray, row_axis: int = 0) -> np.ndarray:
        """`image` (rows on row_axis, columns on the next axis) as displayed: a view, no copy."""
        if self.transpose:
            image = np.swapaxes(image, row_axis, row_axis + 1)
        if self.hflip:
            image = np.flip(image, row_axis + 1)
        if self.vflip:
            image = np.flip(image, row_axis)
        return image


_UPRIGHT = _Orientation()
# (transpose, hflip, vflip) of the four pure rotations, by clockwise degrees: a clockwise quarter turn is
# transpose then mirror columns (FFmpeg's transpose=clock), a counterclockwise one transpose then mirror rows.
_ROTATIONS = {(False, False, False): 0, (True, True, False): 90, (False, True, True): 180, (True, False, True): 270}


@functools.lru_cache(maxsize=64)
def _orientation_of(matrix: tuple[int, ...]) -> _Orientation | None:
    """The orientation an FFmpeg display matrix (3x3 row-major, 16.16 and 2.30 fixed point) describes.

    Follows `ffmpeg`'s own autorotation (fftools: get_rotation, then transpose/hflip/vflip), so frames come
    out as the ffmpeg CLI and players show them. None: a rotation that is not a multiple of 90 degrees.
    """
    a, b, c, d = (float(v) for v in (matrix[0], matrix[1], matrix[3], matrix[4]))
    scale0, scale1 = math.hypot(a, c), math.hypot(b, d)
    if scale0 == 0 or scale1 == 0:
        # A degenerate matrix: FFmpeg's rotation is NaN and it applies nothing.
        return _UPRIGHT
    # av_display_rotation_get is counterclockwise; fftools negates it into a clockwise angle in [0, 360).
    counterclockwise = -math.degrees(math.atan2(b / scale1, a / scale0))
    theta = -float(round(counterclockwise))
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)
    if abs(theta - 90) < 1:
        # transpose=cclock_flip where the matrix mirrors, else transpose=clock.
        return _Orientation(transpose=True) if c > 0 else _Orientation(transpose=True, hflip=True)
    if abs(theta - 180) < 1:
        return _Orientation(hflip=a < 0, vflip=d < 0)
    if abs(theta - 270) < 1:
        # transpose=clock_flip where the matrix mirrors, else transpose=cclock.
        return _Orientation(True, True, True) if c < 0 else _Orientation(transpose=True, vflip=True)
    if abs(theta) < 1:
        return _Orientation(vflip=d < 0)
    return None


def _unsupported_turn(matrix: Sequence[int]) -> str:
    """The message for a display matrix that turns frames by an angle that is not a right angle."""
    clockwise = math.degrees(math.atan2(float(matrix[1]), float(matrix[0]))) % 360
    return f"the display matrix turns frames by {clockwise:.1f} degrees; only multiples of 90 are supported"


def _frame_orientation(frame: Any) -> _Orientation | None:
    """The orientation FFmpeg attached to a decoded frame (the stream's display matrix)."""
    side = frame.side_data.get("DISPLAYMATRIX")
    if side is None:
        return _UPRIGHT
    # FFmpeg stores the matrix as nine native-endian int32.
    return _orientation_of(struct.unpack("=9i", bytes(side)))


_local = threading.local()


def _reformatter() -> Any:
    """This thread's swscale reformatter, kept between frames and clips.

    `VideoFrame.reformat` makes a new reformatter, and so a new swscale context (filter tables included),
    for every frame it is called on: that set-up cost more than the scaling itself (measured: 1.1 ms vs
    0.27 ms per 640x360 frame). One reformatter keeps its context while the source format and size stay
    the same, as they do within a clip and mostly across a corpus; the pixels are identical.
    """
    reformatter = getattr(_local, "reformatter", None)
    if reformatter is None:
        from av.video.reformatter import VideoReformatter

        reformatter = _local.reformatter = VideoReformatter()
    return reformatter


def _rgb_resized(frame: Any, size: int, orientation: _Orientation = _UPRIGHT) -> np.ndarray:
    """A PyAV VideoFrame as uint8 RGB [size, size, 3]: resize the shortest side, turn it upright, then
    centre-crop (after turning, so the crop is centred on the displayed picture)."""
    # Turning swaps the sides but keeps the shortest one, so the coded frame resizes to the same scale.
    height, width = _resized_hw(frame.height, frame.width, size)
    # swscale resizes and converts in one pass. Bilinear is the default of FFmpeg's scale filter, which
    # decord resizes with, so the backends give nearly the same pixels; swscale's bilinear widens its
    # kernel when downscaling, so it does not alias.
    rgb = _reformatter().reformat(frame, width=width, height=height, format="rgb24", interpolation="BILINEAR")
    return _center_crop(orientation.apply(rgb.to_ndarray()), size)


def resize_center_crop(frame: np.ndarray, size: int) -> np.ndarray:
    """Resize a uint8 RGB image [H, W, 3] so its shortest side is `size`, then centre-crop to size x size.

    Uses the same swscale path as decoding, so a decoded frame and a frame resized here agree.
    """
    import av

    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected a uint8 [H, W, 3] image, got {frame.dtype} {frame.shape}")
    if size <= 0:
        raise ValueError(f"size must be > 0, got {size}")
    if frame.shape[:2] == (size, size):
        return frame.copy()
    video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
    return np.ascontiguousarray(_rgb_resized(video_frame, size))


# ---------------------------------------------------------------------------------------------------------
# Opening: local paths directly, anything else through fsspec, with the failure reasons of REASONS.


@dataclass
class _Source:
    """An opened input: what av.open takes, plus what the error paths and decord need."""

    uri: str
    target: Any
    """A local path (str) or a seekable binary file object."""
    local_path: str | None
    """Set for local files, which decord can read directly."""
    file_bytes: int | None


def _stat(uri: str, storage_options: dict | None) -> tuple[Any, str, int | None]:
    """(filesystem, path, size) for `uri`; raises DecodeError for missing, empty or non-file inputs."""
    from vtok.storage import get_fs

    try:
        fs, path = get_fs(uri, storage_options)
    except (ImportError, ValueError) as e:
        # An unknown protocol or a missing fsspec implementation: the object cannot be reached.
        raise DecodeError(uri, "missing", f"cannot resolve the URI: {type(e).__name__}: {e}") from e
    try:
        entry = fs.info(path)
    except FileNotFoundError as e:
        raise DecodeError(uri, "missing", "no such file") from e
    except PermissionError as e:
        raise DecodeError(uri, "unreadable", f"permission denied: {e}") from e
    except OSError as e:
        # It exists but stat fails: a symlink loop (ELOOP), an I/O error, a name too long.
        raise DecodeError(uri, "unreadable", f"cannot stat: {type(e).__name__}: {e}") from e
    if entry.get("type") == "directory":
        raise DecodeError(uri, "not_a_video", "is a directory")
    size = entry.get("size")
    if size == 0:
        raise DecodeError(uri, "zero_bytes", "the file is empty")
    return fs, path, size


class _RangeFile(io.RawIOBase):
    """A read-only, seekable window [offset, offset + size) of another file: a video inside a tar."""

    def __init__(self, f: Any, offset: int, size: int) -> None:
        super().__init__()
        self._f, self._offset, self._size, self._pos = f, offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = max(0, min(self._size, base + pos))
        return self._pos

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self._size - self._pos)
        if n <= 0:
            return 0
        self._f.seek(self._offset + self._pos)
        data = self._f.read(n)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


@contextmanager
def _open_source(
    uri: str, storage_options: dict | None, max_file_bytes: int | None, byte_range: tuple[int, int] | None = None
) -> Iterator[_Source]:
    from fsspec.implementations.local import LocalFileSystem

    fs, path, size = _stat(uri, storage_options)
    if byte_range is not None:
        offset, length = byte_range
        if size is not None and offset + length > size:
            raise DecodeError(uri, "truncated", f"bytes [{offset}, {offset + length}) run past the {size}-byte file")
        if length == 0:
            raise DecodeError(uri, "zero_bytes", f"the member at byte {offset} is empty")
        size = length
    if max_file_bytes is not None and size is not None and size > max_file_bytes:
        raise DecodeError(
            uri, "over_limit", f"file size (bytes) {size} exceeds decode.max_file_bytes={max_file_bytes}"
        )
    if byte_range is not None:
        with fs.open(path, "rb") as f:
            yield _Source(uri, io.BufferedReader(_RangeFile(f, byte_range[0], byte_range[1]), 1 << 16), None, size)
        return
    if isinstance(fs, LocalFileSystem):
        # FFmpeg's own file protocol is faster than reading through Python callbacks.
        yield _Source(uri, path, path, size)
        return
    with fs.open(path, "rb") as f:
        yield _Source(uri, f, None, size)


# Top-level ISO-BMFF (mp4/mov) boxes that may start a file.
_BMFF_FIRST = {b"ftyp", b"styp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot"}


def _bmff_truncated(source: _Source, header_only: bool = False) -> bool:
    """Whether an mp4/mov file is cut short: a top-level box runs past the end, or there is no moov.

    `header_only`: whether the moov box itself is cut or missing (the media data may still be whole up to
    the cut, and clips before it decodable). Walks the box headers only (a few reads of 16 bytes), so it
    is cheap even over the network.
    """
    if source.file_bytes is None:
        return False
    f = open(source.target, "rb") if source.local_path is not None else source.target  # noqa: SIM115
    # FFmpeg reads a file object from where it left it: put the position back.
    position = None if source.local_path is not None else f.tell()
    try:
        pos, seen_moov, boxes = 0, False, 0
        while pos < source.file_bytes and boxes < 10_000:
            f.seek(pos)
            header = f.read(16)
            if len(header) < 8:
                return True
            box_size, box_type = int.from_bytes(header[:4], "big"), header[4:8]
            if boxes == 0 and box_type not in _BMFF_FIRST:
                return False
            if box_size == 1:
                if len(header) < 16:
                    return True
                box_size = int.from_bytes(header[8:16], "big")
            elif box_size == 0:
                # A box that runs to the end of the file: the last one.
                seen_moov |= box_type == b"moov"
                break
            if box_size < 8:
                return False
            seen_moov |= box_type == b"moov"
            pos += box_size
            boxes += 1
            if pos > source.file_bytes:
                return not header_only or box_type == b"moov" or not seen_moov
        # An mp4 with media data but no moov is what a recorder leaves when it dies mid-write.
        return not seen_moov
    except OSError:
        return False
    finally:
        if position is None:
            f.close()
        else:
            f.seek(position)


def _read_head(source: _Source, num_bytes: int) -> bytes:
    """The first bytes of the input, leaving a file object where it was."""
    if source.local_path is not None:
        try:
            with open(source.local_path, "rb") as f:
                return f.read(num_bytes)
        except FileNotFoundError as e:
            raise DecodeError(source.uri, "missing", "no such file") from e
        except OSError as e:
            # stat succeeded, so it exists: permission denied, an I/O error.
            raise DecodeError(source.uri, "unreadable", f"cannot read the file: {e}") from e
    f = source.target
    position = f.tell()
    try:
        f.seek(0)
        return f.read(num_bytes)
    finally:
        f.seek(position)


_Y4M_SIDE = re.compile(rb" ([WH])(\d+)")


def _check_raw_header(source: _Source, max_side: int) -> None:
    """Refuse a raw-video header (YUV4MPEG2) that claims frames larger than max_side, before FFmpeg opens it.

    FFmpeg's y4m demuxer sizes its packets from the header alone and reads one while opening the file, so
    a header claiming 100000x100000 allocates (and fails obscurely) before any limit could be checked
    from the opened container. Coded formats take their size from the bitstream, checked after opening.
    """
    head = _read_head(source, 256)
    if not head.startswith(b"YUV4MPEG2 "):
        return
    line = head.split(b"\n", 1)[0] + b" "
    sides = {key.decode(): int(value) for key, value in _Y4M_SIDE.findall(line)}
    side = max(sides.values(), default=0)
    if side > max_side:
        raise DecodeError(
            source.uri,
            "over_limit",
            f"max(height, width) {side} (y4m header W{sides.get('W')} H{sides.get('H')}) exceeds "
            f"decode.max_side={max_side}",
        )


# errno values of an input that exists but cannot be read.
_UNREADABLE_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.ELOOP, errno.EIO, errno.ENXIO})


def _open_container(source: _Source, max_side: int) -> Any:
    import av

    uri = source.uri
    _check_raw_header(source, max_side)
    try:
        return av.open(source.target, mode="r", metadata_errors="ignore")
    except av.error.EOFError as e:
        # FFmpeg recognised a format and then ran out of bytes while reading its header.
        raise DecodeError(uri, "truncated", f"the file ends inside the container header ({e})") from e
    except av.error.InvalidDataError as e:
        if _bmff_truncated(source):
            raise DecodeError(
                uri, "truncated", "mp4 file is cut short (a box runs past the end or no moov)"
            ) from e
        raise DecodeError(uri, "not_a_video", f"FFmpeg cannot read it as a media container ({e})") from e
    except av.error.FileNotFoundError as e:
        raise DecodeError(uri, "missing", "no such file") from e
    except av.error.IsADirectoryError as e:
        raise DecodeError(uri, "not_a_video", "is a directory") from e
    except OSError as e:
        if e.errno in _UNREADABLE_ERRNOS:
            raise DecodeError(uri, "unreadable", f"cannot read the file: {e}") from e
        raise


def _check_bmff_header(source: _Source, container: Any) -> None:
    """An mp4/mov whose moov box is cut off or missing opens, with whatever part of the header FFmpeg could
    read: its streams, codecs or frame counts would be wrong or absent. Name it for what it is."""
    if container.format.name.split(",")[0] == "mov" and _bmff_truncated(source, header_only=True):
        raise DecodeError(source.uri, "truncated", "mp4 file is cut short inside its header (moov box)")


def _video_stream(container: Any, uri: str) -> Any:
    # Cover art in audio files is a one-frame "video" stream flagged attached_pic: not a video.
    import av

    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    kinds = sorted({s.type for s in container.streams}) or ["none"]
    raise DecodeError(uri, "no_video_stream", f"no video stream (streams: {', '.join(kinds)})")


def _bmff_boxes(f: Any, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, box end) of the ISO-BMFF boxes in [start, end): headers only."""
    pos = start
    for _ in range(10_000):
        if pos + 8 > end:
            return
        f.seek(pos)
        header = f.read(16)
        if len(header) < 8:
            return
        size, kind, payload = int.from_bytes(header[:4], "big"), header[4:8], pos + 8
        if size == 1:
            if len(header) < 16:
                return
            size, payload = int.from_bytes(header[8:16], "big"), pos + 16
        elif size == 0:
            size = end - pos  # a box that runs to the end of its parent
        if size < payload - pos:
            return
        yield kind, payload, min(pos + size, end)
        pos += size


_IDENTITY_MATRIX = (1 << 16, 0, 0, 0, 1 << 16, 0, 0, 0, 1 << 30)


def _bmff_matrix(f: Any, payload: int, end: int, offset_v0: int, offset_v1: int) -> tuple[int, ...] | None:
    """The 3x3 matrix of an mvhd or tkhd box; its offset depends on the box version (32/64-bit times)."""
    f.seek(payload)
    version = f.read(1)
    if not version:
        return None
    at = payload + (offset_v1 if version[0] == 1 else offset_v0)
    if at + 36 > end:
        return None
    f.seek(at)
    data = f.read(36)
    return struct.unpack(">9i", data) if len(data) == 36 else None


def _bmff_display_matrix(source: _Source, track: int) -> tuple[int, ...] | None:
    """The display matrix FFmpeg's mov demuxer gives stream `track`, read from the file's boxes.

    PyAV exposes a stream's display matrix only on decoded frames, and probe decodes nothing; so this
    repeats what mov.c does: the track's tkhd matrix times the movie's mvhd matrix, in fixed point. The
    demuxer makes one stream per trak box, in file order. None: no moov, or no such track.
    """
    end = source.file_bytes if source.file_bytes is not None else 1 << 62
    f = open(source.target, "rb") if source.local_path is not None else source.target  # noqa: SIM115
    position = None if source.local_path is not None else f.tell()
    try:
        moov = next(((p, e) for kind, p, e in _bmff_boxes(f, 0, end) if kind == b"moov"), None)
        if moov is None:
            return None
        movie: tuple[int, ...] | None = _IDENTITY_MATRIX
        traks = []
        for kind, p, e in _bmff_boxes(f, *moov):
            if kind == b"mvhd":
                movie = _bmff_matrix(f, p, e, 36, 48)
            elif kind == b"trak":
                traks.append((p, e))
        if track >= len(traks) or movie is None:
            return None
        tkhd = next(((p, e) for kind, p, e in _bmff_boxes(f, *traks[track]) if kind == b"tkhd"), None)
        matrix = None if tkhd is None else _bmff_matrix(f, tkhd[0], tkhd[1], 40, 52)
        if matrix is None:
            return None
        shifts = (16, 16, 30)
        return tuple(
            sum((matrix[3 * i + e] * movie[3 * e + j]) >> shifts[e] for e in range(3))
            for i in range(3)
            for j in range(3)
        )
    finally:
        if position is None:
            f.close()
        else:
            f.seek(position)


_DURATION_TAG = re.compile(r"^\s*(\d+):(\d{1,2}):(\d{1,2}(?:\.\d*)?)\s*$")


def _duration_tag(metadata: dict[str, str]) -> float | None:
    """Seconds of a Matroska DURATION tag ("HH:MM:SS.nnnnnnnnn"), the track's duration as its muxer wrote it."""
    for key, value in metadata.items():
        if key.upper().split("-")[0] == "DURATION":
            match = _DURATION_TAG.match(str(value))
            if match:
                hours, minutes, seconds = match.groups()
                return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    return None


# Demuxers of still images (FFmpeg's image2 family: png_pipe, jpeg_pipe, webp_pipe, ...). They give a
# one-frame "stream" at a made-up 25 fps: an image, whatever the file is called.
_IMAGE_FORMATS = frozenset({"image2", "image2pipe"})


@dataclass
class _StreamMeta:
    """Stream facts the decoder needs beyond VideoInfo."""

    time_base: Any
    """Fraction: seconds per pts tick."""
    start_pts: int
    """pts of the stream's first frame, in time_base ticks."""
    durations: list[tuple[str, float]]
    """Every duration the header states, named: the limits are checked against each."""
    orientation: _Orientation
    """The display orientation the header gives (upright where it gives none)."""
    display_matrix: tuple[int, ...] | None
    """The mp4/mov display matrix, where there is one."""
    orientation_known: bool
    """Whether the header states the orientation (mp4/mov): elsewhere only decoded frames tell."""


def _with_orientation(info: VideoInfo, orientation: _Orientation) -> VideoInfo:
    turned = orientation.transpose
    return dataclasses.replace(
        info,
        height=info.coded_width if turned else info.coded_height,
        width=info.coded_height if turned else info.coded_width,
        rotation=orientation.rotation,
        mirrored=orientation.mirrored,
    )


def _read_info(source: _Source, container: Any, stream: Any) -> tuple[VideoInfo, _StreamMeta]:
    uri = source.uri
    ctx = stream.codec_context
    if ctx is None:
        raise DecodeError(uri, "unsupported_codec", "no decoder for the video stream's codec in this FFmpeg")
    codec = ctx.codec.canonical_name
    demuxer = container.format.name.split(",")[0]
    if demuxer in _IMAGE_FORMATS or demuxer.endswith("_pipe"):
        raise DecodeError(uri, "not_a_video", f"an image ({demuxer}, {codec}), not a video")
    time_base = stream.time_base
    if time_base is None or time_base <= 0:
        raise DecodeError(uri, "not_a_video", "the video stream has no time base")
    # The video stream's own durations; a header can state several, and a lying one may understate.
    stated: list[tuple[str, float]] = []
    if stream.duration is not None and stream.duration > 0:
        stated.append(("stream duration", float(stream.duration * time_base)))
    tag = _duration_tag(stream.metadata)
    if tag is not None and tag > 0:
        stated.append(("DURATION tag", tag))
    container_s = container.duration / 1_000_000 if container.duration and container.duration > 0 else None
    stream_s = max((value for _, value in stated), default=container_s)
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    header_frames = stream.frames or 0
    if rate is not None and rate > 0:
        fps = float(rate)
    elif header_frames > 0 and stream_s:
        fps = header_frames / stream_s
    else:
        raise DecodeError(uri, "zero_frames", "the video stream has no frame rate and no frame count")
    if header_frames > 0:
        num_frames = header_frames
        # In mp4 the sample table's sum, which the stream duration (the smaller of it and mdhd's) can hide.
        stated.append(("frame count / fps", header_frames / fps))
    else:
        # Matroska and MPEG-TS store no frame count.
        num_frames = int(_round_half_up(stream_s * fps)) if stream_s else 0
    duration_s = max((value for _, value in stated), default=stream_s or num_frames / fps)
    durations = [*stated, *([("container duration", container_s)] if container_s is not None else [])]
    orientation_known = demuxer == "mov"
    matrix = _bmff_display_matrix(source, stream.index) if orientation_known else None
    orientation = _UPRIGHT if matrix is None else _orientation_of(matrix)
    if orientation is None:
        assert matrix is not None
        raise DecodeError(uri, "unsupported_codec", _unsupported_turn(matrix))
    info = VideoInfo(
        uri=uri,
        source_fps=fps,
        num_frames=num_frames,
        duration_s=duration_s,
        height=int(ctx.height),
        width=int(ctx.width),
        codec=codec,
        file_bytes=source.file_bytes,
        coded_height=int(ctx.height),
        coded_width=int(ctx.width),
        rotation=0,
        mirrored=False,
    )
    start_pts = stream.start_time if stream.start_time is not None else 0
    meta = _StreamMeta(
        time_base=time_base,
        start_pts=start_pts,
        durations=durations,
        orientation=orientation,
        display_matrix=matrix,
        orientation_known=orientation_known,
    )
    return _with_orientation(info, orientation), meta


def _wrap_unexpected(uri: str, e: BaseException) -> DecodeError:
    import av

    if isinstance(e, (av.error.DecoderNotFoundError, av.error.PatchWelcomeError)):
        # No decoder for the codec in this FFmpeg build, or a codec feature FFmpeg does not implement.
        return DecodeError(uri, "unsupported_codec", f"{type(e).__name__}: {e}")
    return DecodeError(uri, "decoder_crash", f"{type(e).__name__}: {e}")


def probe(
    uri: str,
    storage_options: dict | None = None,
    byte_range: tuple[int, int] | None = None,
    cfg: DecodeConfig | None = None,
) -> VideoInfo:
    """Read a video's header (no frame is decoded): frame rate, frame count, duration, size, codec.

    duration_s is the longest duration the header states for the video stream, the safe one to cut clips
    by. height/width are the displayed size: mp4/mov display rotation is read from the header; other
    containers' rotation (rare: Matroska) shows only on decoded frames, so `decode_clip` reports it.

    Raises DecodeError (missing, zero_bytes, unreadable, not_a_video, truncated, no_video_stream,
    unsupported_codec, zero_frames, decoder_crash). With `cfg`, its limits are checked as `decode_clip`
    checks them (over_limit); without, only a raw-video header claiming frames larger than the default
    decode.max_side is refused, before FFmpeg would allocate one.
    """
    try:
        with _open_source(uri, storage_options, None if cfg is None else cfg.max_file_bytes, byte_range) as source:
            container = _open_container(source, (cfg or DecodeConfig()).max_side)
            try:
                _check_bmff_header(source, container)
                info, meta = _read_info(source, container, _video_stream(container, uri))
            finally:
                container.close()
            if cfg is not None:
                _check_limits(info, meta, cfg)
            return info
    except DecodeError:
        raise
    except Exception as e:
        raise _wrap_unexpected(uri, e) from e


def _check_limits(info: VideoInfo, meta: _StreamMeta, cfg: DecodeConfig) -> None:
    # The longest stated duration: a header may understate one field and not another.
    what, duration = max([("duration", info.duration_s), *meta.durations], key=lambda d: d[1])
    checks = [
        (f"duration (s, {what})", duration, "max_duration_s", cfg.max_duration_s),
        ("max(height, width)", max(info.height, info.width), "max_side", cfg.max_side),
        ("frame count", info.num_frames, "max_source_frames", cfg.max_source_frames),
    ]
    if info.file_bytes is not None:
        checks.insert(0, ("file size (bytes)", info.file_bytes, "max_file_bytes", cfg.max_file_bytes))
    for what, value, field, limit in checks:
        if value > limit:
            raise DecodeError(info.uri, "over_limit", f"{what} {value} exceeds decode.{field}={limit}")


# ---------------------------------------------------------------------------------------------------------
# PyAV decoding of the sampled frames.


class _PyAVReader:
    """Decodes frames of one stream in order, names each by its pts, and seeks to keyframes."""

    def __init__(
        self, uri: str, container: Any, stream: Any, info: VideoInfo, meta: _StreamMeta, max_duration_s: float
    ) -> None:
        self.uri = uri
        self.container = container
        self.stream = stream
        self.fps = info.source_fps
        self.time_base = meta.time_base
        self.start_pts = meta.start_pts
        self.max_duration_s = max_duration_s
        self.header_end = _HeaderEnd(info)
        self.moved = False
        """Whether the demuxer has left the start of the file (a fresh one needs no seek to frame 0)."""
        self.index_delay: int | None = None
        """pts minus index timestamp of the first index entry (mp4 indexes by dts); None: no index."""
        self.packet_errors = 0
        self.last_error = ""
        self.skip_before = 0
        """Packets of frames before this index may be skipped by the decoder if no frame references them."""

    def frame_index(self, pts: int) -> int:
        # The same formula for seek and scan, so both name a frame by the same index.
        # Integer true division is correctly rounded, as float(Fraction) is: the same float, without
        # building a Fraction for every packet and frame.
        seconds = (pts - self.start_pts) * self.time_base.numerator / self.time_base.denominator
        return _round_half_up_int(seconds * self.fps)

    def pts_of(self, index: int) -> int:
        return self.start_pts + _round_half_up_int(index / self.fps / float(self.time_base))

    def frames(self) -> Iterator[tuple[int, Any]]:
        """(index, frame) from the demuxer's current position to the end of the stream."""
        import av

        previous = -1
        context = self.stream.codec_context
        skipping = False
        # Until a keyframe comes out, rejected packets are ones that lack their references (after a seek,
        # or a stream that starts mid-GOP): expected. After one, a rejected packet is damage.
        synced = False
        for packet in self.container.demux(self.stream):
            if packet.pts is not None:
                # Non-reference frames before the next sampled frame are never shown and nothing is
                # predicted from them, so the decoder may drop them unparsed (AVDISCARD_NONREF): with
                # B-frames that is about half the frames of a long scan between distant keyframes.
                # Decided per packet, so every frame from the target on is decoded in full; frame
                # threads copy the setting when a packet is submitted, so it is exact with them too.
                skip = self.frame_index(packet.pts) < self.skip_before
                if skip != skipping:
                    context.skip_frame = "NONREF" if skip else "DEFAULT"
                    skipping = skip
            try:
                decoded = packet.decode()
            except av.error.InvalidDataError as e:
                self.packet_errors += 1
                self.last_error = str(e)
                # A packet the demuxer marks incomplete (cut off by the end of the file), or the flush at
                # the end: what a truncated file gives, where the missing frames decide (see _decode_pyav).
                at_end = packet.is_corrupt or packet.size == 0
                if synced and not at_end:
                    # The decoder would conceal it and go on, giving frames with wrong pixels.
                    where = "" if packet.pts is None else f" at frame {self.frame_index(packet.pts)}"
                    raise DecodeError(self.uri, "corrupt", f"the decoder rejects a packet{where}: {e}") from e
                if self.packet_errors > _MAX_PACKET_ERRORS:
                    raise DecodeError(self.uri, "corrupt", f"too many damaged packets, last: {e}") from e
                continue
            for frame in decoded:
                if frame.pts is None:
                    index = previous + 1
                else:
                    index = self.frame_index(frame.pts)
                    seconds = (frame.pts - self.start_pts) * self.time_base.numerator / self.time_base.denominator
                    self.header_end.check(self.uri, seconds, index, self.max_duration_s)
                synced = synced or frame.key_frame
                previous = index
                yield index, frame

    def _seek(self, offset: int | None) -> Iterator[tuple[int, Any]]:
        """Seek to the keyframe at or before frame `offset` (None: to byte 0) and decode from there."""
        self.moved = True
        if offset is None:
            self.container.seek(0, unsupported_byte_offset=True)
        else:
            self.container.seek(self.pts_of(offset), backward=True, any_frame=False, stream=self.stream)
        return self.frames()

    def seek_frames(self, target: int, backoff: int) -> Iterator[tuple[int, Any]]:
        """Frames from a keyframe at or before `target`: the first one yielded is a keyframe <= target.

        Demuxers do not always land where asked: mp4 seeks by decode timestamp, so with B-frames it can
        land on the keyframe just after a target that precedes it in display order, and MPEG-TS seeks by
        bisection and lands late. So check where it landed and seek further back if needed, ending at the
        start of the file.
        """
        if not self.moved and target == 0:
            return self.frames()
        back = 0
        while target - back > 0:
            frames = self._seek(target - back)
            first = self._first_keyframe(frames, target)
            if first is not None and first[0] <= target:
                return _prepend(first, frames)
            frames.close()
            back = max(backoff, back * 4)
        return self._frames_from_start(target)

    def _frames_from_start(self, target: int) -> Iterator[tuple[int, Any]]:
        import av

        frames = self._seek(0)
        first = self._first_keyframe(frames, target)
        if first is not None and first[0] <= target:
            return _prepend(first, frames)
        frames.close()
        # A timestamp seek to the start still landed late or past the only keyframe (MPEG-TS): seek to
        # byte 0 where the format can.
        try:
            frames = self._seek(None)
        except av.error.FFmpegError:
            frames = self._seek(0)
        # If even the first frame comes after the target, the stream has no frame at that time and its
        # first frame stands in.
        return frames

    def _first_keyframe(self, frames: Iterator[tuple[int, Any]], target: int) -> tuple[int, Any] | None:
        # Frames decoded from a non-keyframe landing lack their references: never use them.
        for index, frame in frames:
            if frame.key_frame:
                return index, frame
            if index > target:
                return index, frame
        return None

    def load_index(self) -> None:
        """Read the container's keyframe index (mp4 sample table, Matroska cues) if it has one."""
        entries = self.stream.index_entries
        if len(entries) < 2:
            # Matroska loads its cues on the first seek.
            self.moved = True
            self.container.seek(self.start_pts, backward=True, any_frame=False, stream=self.stream)
            entries = self.stream.index_entries
        if len(entries) >= 2 and self.container.format.name.split(",")[0] in _INDEXED_FORMATS:
            self.index_delay = self.start_pts - entries[0].timestamp

    def landing(self, target: int) -> int | None:
        """The frame a seek to `target` lands on (the keyframe at or before it), from the index."""
        if self.index_delay is None:
            return None
        entries = self.stream.index_entries
        k = entries.search_timestamp(self.pts_of(target) - self.index_delay, backward=True)
        return 0 if k < 0 else max(0, self.frame_index(entries[k].timestamp + self.index_delay))

    def keyframe_interval(self, horizon: int) -> int:
        """Frames between the first keyframes, by demuxing from the start (no decode).

        Returns horizon + 1 when no second keyframe appears within `horizon` frames: longer than any gap
        that matters.
        """
        keyframes: list[int] = []
        self.moved = True
        for packet in self.container.demux(self.stream):
            if packet.dts is None:
                continue
            if packet.is_keyframe:
                keyframes.append(packet.dts)
                if len(keyframes) == 3:
                    break
            if self.frame_index(packet.dts) > horizon:
                break
        if len(keyframes) < 2:
            return horizon + 1
        gaps = np.diff(keyframes).astype(np.float64) * float(self.time_base) * self.fps
        return max(1, int(_round_half_up(gaps.max())))


def _end_slack(num_frames: int) -> int:
    return max(_END_SLACK_FRAMES, int(_END_SLACK_FRACTION * num_frames))


class _HeaderEnd:
    """Checks the time of each frame read against the limit and against the end the header states.

    The header's durations were checked against the limits before decoding, but they are claims: the
    frames' timestamps are what the tokens will stand for. A frame past the limit is over_limit; one far
    past the header's last frame means the header is wrong about the length, so frames sampled by it
    are not the frames at their stated times (the next frame, hours later, would stand in).
    """

    def __init__(self, info: VideoInfo) -> None:
        self.info = info
        self.last_index = info.num_frames - 1 + _end_slack(info.num_frames)

    def check(self, uri: str, seconds: float, index: int, max_duration_s: float) -> None:
        if seconds > max_duration_s:
            raise DecodeError(
                uri, "over_limit", f"a frame at {seconds:.3f} s exceeds decode.max_duration_s={max_duration_s}"
            )
        if index > self.last_index:
            raise DecodeError(
                uri,
                "corrupt",
                f"a frame at {seconds:.3f} s lies past the end the header states ({self.info.num_frames} frames, "
                f"{self.info.duration_s:.3f} s): the header's durations are wrong",
            )


def _prepend(first: tuple[int, Any], rest: Iterator[tuple[int, Any]]) -> Iterator[tuple[int, Any]]:
    yield first
    yield from rest


def _upright(uri: str, frame: Any) -> _Orientation:
    """The orientation of a decoded frame, or DecodeError for one that is not a right angle."""
    orientation = _frame_orientation(frame)
    if orientation is None:
        matrix = struct.unpack("=9i", bytes(frame.side_data.get("DISPLAYMATRIX")))
        raise DecodeError(uri, "unsupported_codec", _unsupported_turn(matrix))
    return orientation


def _decode_pyav(
    reader: _PyAVReader, targets: np.ndarray, cfg: DecodeConfig, info: VideoInfo
) -> tuple[np.ndarray, _Orientation | None]:
    """Decode exactly the frames `targets` (sorted), converting to RGB only those, turned upright by the
    display matrix FFmpeg attaches to each; returns them and the first one's orientation.

    How the decoder gets from one target to the next: "seek" seeks to every target; "scan" seeks to the
    first target and decodes forward from there; "auto" seeks when that skips decoding, i.e. when the
    keyframe at or before the target (from the container's index) lies beyond the current position, and
    for files without an index when the gap to the target exceeds the keyframe interval (estimated by
    demuxing a few packets). Decoding stops after the last target.
    """
    if cfg.threads == 1:
        reader.stream.thread_count = 1
    else:
        reader.stream.thread_type = "AUTO"
        reader.stream.thread_count = cfg.threads
    count = len(targets)
    out = np.empty((count, cfg.size, cfg.size, 3), dtype=np.uint8)
    gop: float = math.inf
    if cfg.seek == "auto":
        reader.load_index()
        if reader.index_delay is None:
            horizon = int(max(targets[0], np.diff(targets).max() if count > 1 else 0))
            gop = reader.keyframe_interval(horizon)
    backoff = 4 if math.isinf(gop) else max(4, int(min(gop, 64)))

    def should_seek(target: int, position: int) -> bool:
        if cfg.seek == "seek":
            return True
        if cfg.seek == "scan":
            return position < 0
        landing = reader.landing(target)
        if landing is None:
            return target - position > gop
        return landing > position + _SEEK_COST_FRAMES

    frames: Iterator[tuple[int, Any]] | None = None
    position = -1  # index of the last decoded frame; -1: none yet
    last_frame: Any = None
    orientation: _Orientation | None = None
    # The frames near the end are always decoded in full: where the header over-counts, the last frame
    # decoded stands in for the missing ones and its index decides "truncated" (see below).
    tail = info.num_frames - 1 - 2 * _end_slack(info.num_frames)
    j = 0
    try:
        while j < count:
            target = int(targets[j])
            reader.skip_before = min(target, tail)
            if frames is None:
                # A fresh demuxer is at frame 0; a moved one must seek even to reach frame 0.
                seek = should_seek(target, position) or reader.moved
                frames = reader.seek_frames(target, backoff) if seek else reader.frames()
            elif should_seek(target, position):
                frames.close()
                frames = reader.seek_frames(target, backoff)
            for index, frame in frames:
                position = index
                last_frame = frame
                if index < target:
                    continue
                # index > target only where the stream has no frame at the target's time (variable frame
                # rate, a damaged packet): the next frame stands in for it.
                frame_orientation = _upright(info.uri, frame)
                orientation = orientation or frame_orientation
                rgb = _rgb_resized(frame, cfg.size, frame_orientation)
                while j < count and targets[j] <= index:
                    out[j] = rgb
                    j += 1
                break
            else:
                break
    finally:
        if frames is not None:
            frames.close()

    if j < count:
        missing = targets[j:]
        if last_frame is None:
            detail = ""
            if reader.packet_errors:
                detail = f" ({reader.packet_errors} damaged packets, last: {reader.last_error})"
            raise DecodeError(info.uri, "zero_frames", f"no frame could be decoded{detail}")
        if position >= info.num_frames - 1 - _end_slack(info.num_frames):
            # Timestamps ran out just short of the header's count: a count estimated from the duration
            # (Matroska), or variable frame rate, where the last frames' times are not k / average fps.
            out[j:] = _rgb_resized(last_frame, cfg.size, _upright(info.uri, last_frame))
        else:
            raise DecodeError(
                info.uri,
                "truncated",
                f"the stream ends after frame {position} but the header promises {info.num_frames} frames; "
                f"sampled frames {missing.tolist()} are missing",
            )
    return out, orientation


# ---------------------------------------------------------------------------------------------------------
# decord decoding.


@contextmanager
def _local_copy(source: _Source) -> Iterator[str]:
    """A local path for decord: the file itself, or a streamed copy of a remote one.

    decord accepts file objects but reads them whole into memory; a temporary file bounds memory to a
    copy buffer (its size is already bounded by max_file_bytes).
    """
    if source.local_path is not None:
        yield source.local_path
        return
    suffix = os.path.splitext(source.uri.split("?", 1)[0])[1][:16]
    with tempfile.NamedTemporaryFile(prefix="vtok-", suffix=suffix) as tmp:
        source.target.seek(0)
        shutil.copyfileobj(source.target, tmp, 1 << 20)
        tmp.flush()
        yield tmp.name


def _decord_error(source: _Source, info: VideoInfo, e: Exception) -> DecodeError:
    """The reason for a decord failure, named as the PyAV path names the same input's failure."""
    text = str(e)
    if "cannot find video stream" in text:
        return DecodeError(info.uri, "unsupported_codec", f"decord cannot decode {info.codec}: {e}")
    # decord indexes every packet when it opens a file, so a cut-off file fails there.
    if "av_read_frame failed" in text or _bmff_truncated(source):
        return DecodeError(info.uri, "truncated", f"decord cannot read all packets: {e}")
    if "avcodec_send_packet" in text or "Error sending packet" in text:
        # The decoder rejected a packet of a file whose container is whole: damage inside it.
        return DecodeError(info.uri, "corrupt", f"decord: the decoder rejects a packet: {e}")
    return DecodeError(info.uri, "decoder_crash", f"decord: {e}")


def _check_decord_times(reader: Any, last: int, info: VideoInfo, cfg: DecodeConfig) -> None:
    """The timestamps of decord's frames 0..last, checked in order as the PyAV path checks each frame read."""
    times = np.asarray(reader.get_frame_timestamp(list(range(last + 1))), dtype=np.float64)[:, 0]
    times = times - times[0]
    header_end = _HeaderEnd(info)
    indices = _round_half_up(times * info.source_fps)
    bad = np.nonzero((times > cfg.max_duration_s) | (indices > header_end.last_index))[0]
    if len(bad):
        k = int(bad[0])
        header_end.check(info.uri, float(times[k]), int(indices[k]), cfg.max_duration_s)


def _first_frame_orientation(uri: str, container: Any, stream: Any, fallback: _Orientation) -> _Orientation:
    """The display orientation of the stream's first decodable frame: decord cannot report it, and
    outside mp4/mov the header read here does not (Matroska keeps it where only decoders look)."""
    import av

    stream.codec_context.thread_count = 1
    for count, packet in enumerate(container.demux(stream)):
        if count > _MAX_PACKET_ERRORS:
            break
        try:
            decoded = packet.decode()
        except av.error.InvalidDataError:
            continue
        if decoded:
            return _upright(uri, decoded[0])
    # Nothing decodes: decord will report what is wrong.
    return fallback


_TURNED_CLOCKWISE = {
    0: _UPRIGHT,
    90: _Orientation(transpose=True, hflip=True),
    180: _Orientation(hflip=True, vflip=True),
    270: _Orientation(transpose=True, vflip=True),
}


def _decord_turn(matrix: tuple[int, ...] | None, metadata: dict[str, str]) -> int:
    """The clockwise turn decord 0.6.0 gives frames by itself (VideoReader::GetRotation).

    It reads a "rotate" tag (which its FFmpeg 4.1 sets for mp4/mov from the display matrix, formatted
    with %g), else the stream's display matrix, and turns by 90, 180 or 270 degrees (the angle cast to
    int), never mirroring. Its FFmpeg reads no display matrix outside mp4/mov.
    """
    tag = next((str(v) for k, v in metadata.items() if k.lower() == "rotate"), None)
    theta = 0.0
    if matrix is not None:
        a, b, c, d = (float(v) for v in (matrix[0], matrix[1], matrix[3], matrix[4]))
        if math.hypot(a, c) and math.hypot(b, d):
            clockwise = math.degrees(math.atan2(b / math.hypot(b, d), a / math.hypot(a, c)))
            tag = f"{clockwise + 360 if clockwise < 0 else clockwise:g}"
    if tag and tag != "0":
        try:
            theta = float(tag)
        except ValueError:
            theta = 0.0
    theta = math.fmod(theta, 360)
    turn = int(theta + 360 if theta < 0 else theta)
    return turn if turn in (90, 180, 270) else 0


@functools.lru_cache(maxsize=64)
def _after(done: _Orientation, wanted: _Orientation) -> _Orientation:
    """The orientation that, applied after `done`, gives `wanted`: found by trying all eight on a probe."""
    probe_image = np.arange(6).reshape(2, 3)
    goal = wanted.apply(probe_image)
    start = done.apply(probe_image)
    for transpose in (False, True):
        for hflip in (False, True):
            for vflip in (False, True):
                step = _Orientation(transpose, hflip, vflip)
                candidate = step.apply(start)
                if candidate.shape == goal.shape and np.array_equal(candidate, goal):
                    return step
    raise AssertionError(f"no orientation takes {done} to {wanted}")


def _decode_decord(
    source: _Source,
    targets: np.ndarray,
    cfg: DecodeConfig,
    info: VideoInfo,
    orientation: _Orientation,
    turn: int,
) -> np.ndarray:
    """Decode `targets` with decord, resized by its FFmpeg scale filter, turned upright, then centre-cropped.

    decord turns mp4/mov frames by a right angle itself (`turn`, clockwise) before scaling them to the
    size asked for, but never mirrors, and its FFmpeg sees no Matroska rotation: so it is asked for the
    size of its turned frame, and what it leaves undone of `orientation` is done here. Frame-exact for
    H.264; for HEVC with frequent keyframes decord 0.6.0 returns some frames one late after its internal
    seeks (measured), so PyAV is the reference backend.
    """
    import decord

    if info.codec in _DECORD_UNSUPPORTED:
        raise DecodeError(
            info.uri, "unsupported_codec", f"decord 0.6.0 cannot decode {info.codec}; use backend pyav"
        )
    done = _TURNED_CLOCKWISE[turn]
    sides = (info.coded_width, info.coded_height) if done.transpose else (info.coded_height, info.coded_width)
    height, width = _resized_hw(*sides, cfg.size)
    with _local_copy(source) as path:
        try:
            reader = decord.VideoReader(path, ctx=decord.cpu(0), width=width, height=height, num_threads=cfg.threads)
        except decord.DECORDError as e:
            raise _decord_error(source, info, e) from e
        available = len(reader)
        if available <= 0:
            raise DecodeError(info.uri, "zero_frames", "decord finds no frames")
        # As in the PyAV path, the last frame stands in for the few a header may over-count.
        if int(targets[-1]) >= available and available - 1 < info.num_frames - 1 - _end_slack(
            info.num_frames
        ):
            raise DecodeError(
                info.uri,
                "truncated",
                f"decord finds {available} frames but the header promises {info.num_frames}; "
                f"sampled frames {targets[targets >= available].tolist()} are missing",
            )
        indices = np.minimum(targets, available - 1)
        _check_decord_times(reader, int(indices[-1]), info, cfg)
        try:
            batch = reader.get_batch(indices.tolist()).asnumpy()
        except decord.DECORDError as e:
            raise _decord_error(source, info, e) from e
        del reader
    return np.ascontiguousarray(_crop_batch(_after(done, orientation).apply(batch, row_axis=1), cfg.size))


def _crop_batch(batch: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop every image of [T, H, W, C] to size x size."""
    top = (batch.shape[1] - size) // 2
    left = (batch.shape[2] - size) // 2
    return batch[:, top : top + size, left : left + size]


# ---------------------------------------------------------------------------------------------------------


def decode_clip(
    uri: str,
    cfg: DecodeConfig,
    clip_start_s: float | None = None,
    clip_end_s: float | None = None,
    storage_options: dict | None = None,
    byte_range: tuple[int, int] | None = None,
) -> DecodedClip:
    """Decode the frames that `sample_frame_indices` picks from the clip [clip_start_s, clip_end_s).

    `uri` is a local path or an fsspec URI (opened with `storage_options`), read in place: never whole
    into memory, and only as far as the last sampled frame (decord, which needs a path, gets a streamed
    local copy of a remote file). `byte_range` = (offset, size) reads a video stored inside a bigger file,
    such as a WebDataset tar, in place. The header is checked against the limits of `cfg` before any decode,
    and each frame read against max_duration_s and the header's length. Frames are turned upright by the
    display matrix, and `info` reports the displayed size and rotation. Every failure raises DecodeError
    with a reason from REASONS; an exception nobody expected from the decoder becomes reason
    "decoder_crash" carrying the original message.
    """
    try:
        with ExitStack() as stack:
            source = stack.enter_context(_open_source(uri, storage_options, cfg.max_file_bytes, byte_range))
            container = _open_container(source, cfg.max_side)
            stack.callback(container.close)
            _check_bmff_header(source, container)
            stream = _video_stream(container, uri)
            info, meta = _read_info(source, container, stream)
            _check_limits(info, meta, cfg)
            if info.num_frames <= 0:
                raise DecodeError(uri, "zero_frames", "the header reports no frames")
            targets = sample_frame_indices(info.num_frames, info.source_fps, cfg, clip_start_s, clip_end_s)
            if len(targets) == 0:
                raise DecodeError(
                    uri,
                    "zero_frames",
                    f"the clip [{clip_start_s}, {clip_end_s}) s holds no frame of the "
                    f"{info.num_frames / info.source_fps:.3f} s video",
                )
            if cfg.backend == "decord":
                orientation = meta.orientation
                if not meta.orientation_known:
                    orientation = _first_frame_orientation(uri, container, stream, orientation)
                turn = _decord_turn(meta.display_matrix, stream.metadata)
                frames = _decode_decord(source, targets, cfg, info, orientation, turn)
            else:
                reader = _PyAVReader(uri, container, stream, info, meta, cfg.max_duration_s)
                frames, seen = _decode_pyav(reader, targets, cfg, info)
                # The frames carry FFmpeg's own reading of the display matrix: where it differs from the
                # header's (or the header states none), it is what the frames were turned by.
                orientation = seen or meta.orientation
            if orientation != meta.orientation:
                info = _with_orientation(info, orientation)
    except DecodeError:
        raise
    except Exception as e:
        raise _wrap_unexpected(uri, e) from e
    start, end = _clip_bounds_s(info.num_frames, info.source_fps, clip_start_s, clip_end_s)
    return DecodedClip(
        frames=frames,
        frame_indices=targets,
        timestamps_s=targets.astype(np.float64) / info.source_fps,
        info=info,
        clip_start_s=start,
        clip_end_s=end,
    )
