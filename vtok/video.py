"""Video decode: probe a video, choose the frames to sample, and decode only those, resized and cropped.

`probe` reads a header, `sample_frame_indices` picks source frames (a pure function), `decode_clip`
decodes them with PyAV (any fsspec URI, read in place) or decord (local files; remote ones are copied
to a temporary file first). Source frame k is the frame whose pts is k / fps after the stream's start,
so seeking and scanning name the same frames, and both backends agree on constant-frame-rate video.

Inputs are untrusted: every failure becomes a `DecodeError` with a reason code from `REASONS`, and the
limits of `DecodeConfig` are checked from the container header before any frame is decoded. Nothing here
raises "timeout": that reason is for callers that bound the time a decode may take.
"""

from __future__ import annotations

import io
import math
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
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
    """Target sampling rate in frames per second; ignored when num_frames is set."""
    num_frames: int | None = None
    """Sample exactly this many frames evenly over the clip (capped by max_frames) instead of by fps."""
    max_frames: int = 16
    """Cap on the number of sampled frames per clip."""
    size: int = 224
    """Output frames are size x size: the shortest side is resized to size, then centre-cropped."""
    seek: str = "auto"
    """Reaching sampled frames: "seek" to each, "scan" forward, "auto": seek only where it skips decoding."""
    threads: int = 0
    """Decoder threads per clip: 0 lets FFmpeg choose (about one per core); 1 decodes in the calling
    thread, which does the most work per CPU second when several clips decode in parallel."""
    max_file_bytes: int = 8 << 30
    """Largest accepted file size in bytes, checked before the file is opened."""
    max_duration_s: float = 4 * 3600.0
    """Longest accepted duration in seconds, read from the container header."""
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
    """Duration of the video stream in seconds."""
    height: int
    """Coded frame height in pixels."""
    width: int
    """Coded frame width in pixels."""
    codec: str
    """FFmpeg's canonical codec name, e.g. "h264", "hevc", "av1", "vp9"."""
    file_bytes: int | None
    """File size, where the filesystem reports one."""


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
    """Start of the clip range actually used."""
    clip_end_s: float
    """End of the clip range actually used (clamped to the duration)."""


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
    - otherwise by `cfg.fps`: times start + k / fps for k = 0, 1, ... while < end, at most max_frames of
      them; each maps to index round(t * source_fps) (half up) clamped into the clip; duplicates (a target
      fps above the source fps) are dropped.

    A non-empty clip gives at least one index; an empty one (start at or past the end) gives none.
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
    if cfg.num_frames is not None:
        count = min(cfg.num_frames, cfg.max_frames, last - first + 1)
        indices = _round_half_up(np.linspace(first, last, count))
    else:
        assert cfg.fps is not None
        # Times start + k / fps < end; computed by index rather than accumulation to avoid drift.
        count = max(1, min(cfg.max_frames, math.ceil((end - start) * cfg.fps - 1e-9)))
        times = start + np.arange(count, dtype=np.float64) / cfg.fps
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


def _rgb_resized(frame: Any, size: int) -> np.ndarray:
    """A PyAV VideoFrame as uint8 RGB [size, size, 3]: resize the shortest side, then centre-crop."""
    height, width = _resized_hw(frame.height, frame.width, size)
    # swscale resizes and converts in one pass. Bilinear is the default of FFmpeg's scale filter, which
    # decord resizes with, so the backends give nearly the same pixels; swscale's bilinear widens its
    # kernel when downscaling, so it does not alias.
    rgb = _reformatter().reformat(frame, width=width, height=height, format="rgb24", interpolation="BILINEAR")
    return _center_crop(rgb.to_ndarray(), size)


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
        raise DecodeError(uri, "missing", f"permission denied: {e}") from e
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


def _bmff_truncated(source: _Source) -> bool:
    """Whether an mp4/mov file is cut short: a top-level box runs past the end, or there is no moov.

    Walks the box headers only (a few reads of 16 bytes), so it is cheap even over the network.
    """
    if source.file_bytes is None:
        return False
    f = open(source.target, "rb") if source.local_path is not None else source.target  # noqa: SIM115
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
                return True
        # An mp4 with media data but no moov is what a recorder leaves when it dies mid-write.
        return not seen_moov
    except OSError:
        return False
    finally:
        if source.local_path is not None:
            f.close()


def _open_container(source: _Source) -> Any:
    import av

    uri = source.uri
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


def _video_stream(container: Any, uri: str) -> Any:
    # Cover art in audio files is a one-frame "video" stream flagged attached_pic: not a video.
    import av

    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    kinds = sorted({s.type for s in container.streams}) or ["none"]
    raise DecodeError(uri, "no_video_stream", f"no video stream (streams: {', '.join(kinds)})")


@dataclass
class _StreamMeta:
    """Stream facts the decoder needs beyond VideoInfo."""

    time_base: Any
    """Fraction: seconds per pts tick."""
    start_pts: int
    """pts of the stream's first frame, in time_base ticks."""


def _read_info(source: _Source, container: Any, stream: Any) -> tuple[VideoInfo, _StreamMeta]:
    uri = source.uri
    ctx = stream.codec_context
    if ctx is None:
        raise DecodeError(uri, "unsupported_codec", "no decoder for the video stream's codec in this FFmpeg")
    codec = ctx.codec.canonical_name
    time_base = stream.time_base
    if time_base is None or time_base <= 0:
        raise DecodeError(uri, "not_a_video", "the video stream has no time base")
    duration_s: float | None = None
    if stream.duration is not None and stream.duration > 0:
        duration_s = float(stream.duration * time_base)
    elif container.duration is not None and container.duration > 0:
        duration_s = container.duration / 1_000_000  # AV_TIME_BASE
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    header_frames = stream.frames or 0
    if rate is not None and rate > 0:
        fps = float(rate)
    elif header_frames > 0 and duration_s:
        fps = header_frames / duration_s
    else:
        raise DecodeError(uri, "zero_frames", "the video stream has no frame rate and no frame count")
    if header_frames > 0:
        num_frames = header_frames
    else:
        # Matroska and MPEG-TS store no frame count.
        num_frames = int(_round_half_up(duration_s * fps)) if duration_s else 0
    if duration_s is None:
        duration_s = num_frames / fps
    info = VideoInfo(
        uri=uri,
        source_fps=fps,
        num_frames=num_frames,
        duration_s=duration_s,
        height=int(ctx.height),
        width=int(ctx.width),
        codec=codec,
        file_bytes=source.file_bytes,
    )
    start_pts = stream.start_time if stream.start_time is not None else 0
    return info, _StreamMeta(time_base=time_base, start_pts=start_pts)


def _wrap_unexpected(uri: str, e: BaseException) -> DecodeError:
    import av

    if isinstance(e, (av.error.DecoderNotFoundError, av.error.PatchWelcomeError)):
        # No decoder for the codec in this FFmpeg build, or a codec feature FFmpeg does not implement.
        return DecodeError(uri, "unsupported_codec", f"{type(e).__name__}: {e}")
    return DecodeError(uri, "decoder_crash", f"{type(e).__name__}: {e}")


def probe(uri: str, storage_options: dict | None = None, byte_range: tuple[int, int] | None = None) -> VideoInfo:
    """Read a video's header (no frame is decoded): frame rate, frame count, duration, size, codec.

    Raises DecodeError (missing, zero_bytes, not_a_video, truncated, no_video_stream, unsupported_codec,
    zero_frames, decoder_crash). Limits are not checked here: `decode_clip` checks them against its config.
    """
    try:
        with _open_source(uri, storage_options, None, byte_range) as source:
            container = _open_container(source)
            try:
                return _read_info(source, container, _video_stream(container, uri))[0]
            finally:
                container.close()
    except DecodeError:
        raise
    except Exception as e:
        raise _wrap_unexpected(uri, e) from e


def _check_limits(info: VideoInfo, cfg: DecodeConfig) -> None:
    checks = [
        ("duration (s)", info.duration_s, "max_duration_s", cfg.max_duration_s),
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

    def __init__(self, uri: str, container: Any, stream: Any, info: VideoInfo, meta: _StreamMeta) -> None:
        self.uri = uri
        self.container = container
        self.stream = stream
        self.fps = info.source_fps
        self.time_base = meta.time_base
        self.start_pts = meta.start_pts
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
                # A damaged packet: skip it like the ffmpeg CLI does; a cut-off file then shows up as
                # frames missing at the end.
                self.packet_errors += 1
                self.last_error = str(e)
                if self.packet_errors > _MAX_PACKET_ERRORS:
                    raise DecodeError(
                        self.uri, "decoder_crash", f"too many damaged packets, last: {e}"
                    ) from e
                continue
            for frame in decoded:
                index = previous + 1 if frame.pts is None else self.frame_index(frame.pts)
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


def _prepend(first: tuple[int, Any], rest: Iterator[tuple[int, Any]]) -> Iterator[tuple[int, Any]]:
    yield first
    yield from rest


def _decode_pyav(reader: _PyAVReader, targets: np.ndarray, cfg: DecodeConfig, info: VideoInfo) -> np.ndarray:
    """Decode exactly the frames `targets` (sorted), converting to RGB only those.

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
                rgb = _rgb_resized(frame, cfg.size)
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
            out[j:] = _rgb_resized(last_frame, cfg.size)
        else:
            raise DecodeError(
                info.uri,
                "truncated",
                f"the stream ends after frame {position} but the header promises {info.num_frames} frames; "
                f"sampled frames {missing.tolist()} are missing",
            )
    return out


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


def _decode_decord(source: _Source, targets: np.ndarray, cfg: DecodeConfig, info: VideoInfo) -> np.ndarray:
    """Decode `targets` with decord, resized by its FFmpeg scale filter, then centre-cropped.

    Frame-exact for H.264; for HEVC with frequent keyframes decord 0.6.0 returns some frames one late
    after its internal seeks (measured), so PyAV is the reference backend.
    """
    import decord

    if info.codec in _DECORD_UNSUPPORTED:
        raise DecodeError(
            info.uri, "unsupported_codec", f"decord 0.6.0 cannot decode {info.codec}; use backend pyav"
        )
    height, width = _resized_hw(info.height, info.width, cfg.size)
    with _local_copy(source) as path:
        try:
            reader = decord.VideoReader(path, ctx=decord.cpu(0), width=width, height=height, num_threads=cfg.threads)
        except decord.DECORDError as e:
            # decord indexes every packet when it opens a file, so a cut-off file fails here.
            if "cannot find video stream" in str(e):
                raise DecodeError(
                    info.uri, "unsupported_codec", f"decord cannot decode {info.codec}: {e}"
                ) from e
            if "av_read_frame failed" in str(e):
                raise DecodeError(info.uri, "truncated", f"decord cannot read all packets: {e}") from e
            raise DecodeError(info.uri, "decoder_crash", f"decord: {e}") from e
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
        batch = reader.get_batch(np.minimum(targets, available - 1).tolist()).asnumpy()
        del reader
    top = (height - cfg.size) // 2
    left = (width - cfg.size) // 2
    return np.ascontiguousarray(batch[:, top : top + cfg.size, left : left + cfg.size])


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
    such as a WebDataset tar, in place. The header is checked against the limits of `cfg` before any decode.
    Every failure raises DecodeError with a reason from REASONS; an exception nobody expected from the
    decoder becomes reason "decoder_crash" carrying the original message.
    """
    try:
        with ExitStack() as stack:
            source = stack.enter_context(_open_source(uri, storage_options, cfg.max_file_bytes, byte_range))
            container = _open_container(source)
            stack.callback(container.close)
            stream = _video_stream(container, uri)
            info, meta = _read_info(source, container, stream)
            _check_limits(info, cfg)
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
                frames = _decode_decord(source, targets, cfg, info)
            else:
                frames = _decode_pyav(_PyAVReader(uri, container, stream, info, meta), targets, cfg, info)
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
