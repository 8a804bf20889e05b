"""PyAV decoding of the sampled frames, and the swscale resize it shares with `resize_center_crop`."""

from __future__ import annotations

import math
import struct
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from vtok.video.config import (
    _END_SLACK_FRACTION,
    _END_SLACK_FRAMES,
    _INDEXED_FORMATS,
    _MAX_PACKET_ERRORS,
    _SEEK_COST_FRAMES,
    DecodeConfig,
    DecodeError,
    VideoInfo,
)
from vtok.video.header import _StreamMeta
from vtok.video.orientation import _UPRIGHT, _frame_orientation, _Orientation, _unsupported_turn
from vtok.video.sampling import _center_crop, _resized_hw, _round_half_up, _round_half_up_int

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
