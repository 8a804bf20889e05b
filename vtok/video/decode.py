"""`decode_clip`: open, check the header against the limits, sample, and decode with the chosen backend."""

from __future__ import annotations

from contextlib import ExitStack

import numpy as np

from vtok.video.config import DecodeConfig, DecodedClip, DecodeError
from vtok.video.decord import _decode_decord, _decord_turn, _first_frame_orientation
from vtok.video.header import (
    _check_bmff_header,
    _check_limits,
    _open_container,
    _read_info,
    _video_stream,
    _with_orientation,
    _wrap_unexpected,
)
from vtok.video.pyav import _decode_pyav, _PyAVReader
from vtok.video.sampling import _clip_bounds_s, sample_frame_indices
from vtok.video.sources import _open_source


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
