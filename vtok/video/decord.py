"""decord decoding."""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from vtok.video.config import _DECORD_UNSUPPORTED, _MAX_PACKET_ERRORS, DecodeConfig, DecodeError, VideoInfo
from vtok.video.header import _bmff_truncated
from vtok.video.orientation import _UPRIGHT, _Orientation
from vtok.video.pyav import _end_slack, _HeaderEnd, _upright
from vtok.video.sampling import _resized_hw, _round_half_up
from vtok.video.sources import _local_copy, _Source


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
