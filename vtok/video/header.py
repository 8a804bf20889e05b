"""The container header: opening the container, mp4/mov box checks and display matrix, reading the
video stream's header (`VideoInfo`), `probe`, and the limits of `DecodeConfig` checked against it
before any frame is decoded."""

from __future__ import annotations

import dataclasses
import errno
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from vtok.video.config import DecodeConfig, DecodeError, VideoInfo
from vtok.video.orientation import _UPRIGHT, _Orientation, _orientation_of, _unsupported_turn
from vtok.video.sampling import _round_half_up
from vtok.video.sources import _open_source, _read_head, _Source

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
