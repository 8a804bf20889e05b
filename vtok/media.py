"""Writing and reading small video files whole: the shapes world, its judge, tests and benchmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_mp4(
    path: str | Path,
    frames: np.ndarray,
    fps: float,
    codec: str = "libx264",
    gop: int | None = None,
    crf: int = 18,
    display_rotation: int = 0,
) -> Path:
    """Encode uint8 RGB frames [T, H, W, 3] into a video file at `path`.

    `gop` is the keyframe interval in frames (None lets the encoder choose). Even frame sides are
    required by yuv420p, so odd sides are an error rather than a silent crop. `display_rotation` stores
    a display matrix telling players to turn the frames that many degrees clockwise, as a phone does for
    a portrait video (mp4/mov and Matroska keep it).
    """
    from fractions import Fraction

    import av

    assert frames.ndim == 4 and frames.shape[-1] == 3 and frames.dtype == np.uint8, frames.shape
    _, height, width, _ = frames.shape
    if height % 2 or width % 2:
        raise ValueError(f"{path}: frame size {width}x{height} must be even for yuv420p")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        if display_rotation % 360:
            # PyAV takes the angle counterclockwise (FFmpeg's display matrix convention).
            stream.set_display_rotation(-display_rotation)
        # One encoder thread: threaded x264 (lookahead, frame threads) can vary its bytes run to run.
        stream.codec_context.thread_count = 1
        options: dict[str, str] = {}
        if codec in ("libx264", "libx265"):
            options["crf"] = str(crf)
            options["preset"] = "veryfast"
            options["threads"] = "1"
        if gop is not None:
            stream.codec_context.gop_size = gop
            if codec == "libx264":
                options["x264-params"] = f"keyint={gop}:min-keyint={gop}:scenecut=0"
        stream.options = options
        for array in frames:
            # Convert before the encoder sees it: PyAV's in-encoder conversion varied run to run under load.
            frame = av.VideoFrame.from_ndarray(array, format="rgb24").reformat(format="yuv420p")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_audio_only(path: str | Path, seconds: float = 0.5, rate: int = 16000) -> Path:
    """An mp4 holding only a silent AAC track: a real file with no video stream."""
    import av

    path = Path(path)
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=rate)
        for k in range(int(seconds * rate / 1024) + 1):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate = rate
            frame.pts = k * 1024
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


MAX_READ_BYTES = 1 << 30
"""The most decoded frames (uint8 bytes) `read_frames` returns: a shapes-world video is a few MB."""


def read_frames(uri: str, max_bytes: int = MAX_READ_BYTES) -> np.ndarray:
    """Every frame of a video's first video stream as uint8 RGB [T, H, W, 3], at its coded size (a display
    matrix is not applied: the shapes world writes none).

    Unlike `vtok.video.decode_clip`, nothing is sampled, resized or cropped (a judge needs the whole
    frame). `uri` is a local path or any fsspec URI. Raises `vtok.video.DecodeError` naming `uri` for a
    file that is missing, unreadable, not a video, corrupt, or whose frames would pass `max_bytes`.
    """
    import av
    import fsspec

    from vtok.video import DecodeError, probe

    info = probe(uri)
    frame_bytes = info.coded_height * info.coded_width * 3
    if info.num_frames * frame_bytes > max_bytes:
        raise DecodeError(uri, "over_limit", f"{info.num_frames} frames of {info.coded_width}x{info.coded_height} "
                                             f"exceed {max_bytes} bytes decoded")
    frames: list[np.ndarray] = []
    try:
        with fsspec.open(uri, "rb") as f, av.open(f) as container:
            for frame in container.decode(video=0):
                frames.append(frame.to_ndarray(format="rgb24"))
                # The header's frame count can lie; the decoded bytes are what must stay bounded.
                if len(frames) * frame_bytes > max_bytes:
                    raise DecodeError(uri, "over_limit", f"decoded frames exceed {max_bytes} bytes")
    except DecodeError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder failure is this file's, named by its URI
        raise DecodeError(uri, "corrupt", f"{type(e).__name__}: {e}") from e
    if not frames:
        raise DecodeError(uri, "zero_frames", "no frame could be decoded")
    return np.stack(frames)
