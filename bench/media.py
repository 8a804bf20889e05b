"""Benchmark inputs made on the fly and cached outside the repository: textured clips and long videos."""

from __future__ import annotations

import os
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np

from bench.common import cache_dir, cached_corpus, log


def _texture(height: int, width: int, cell: int, seed: int) -> np.ndarray:
    """Smooth random texture uint8 [height, width, 3]: noise on a `cell`-pixel lattice, bicubic-upscaled.

    Pixel-level noise would be incompressible (a bitrate no real video has, so decode would be all
    entropy decoding); a lattice of `cell` pixels gives detail at a few Mbit/s for 640x360, like
    real footage at high quality.
    """
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(1, 3, height // cell + 2, width // cell + 2)).astype(np.float32)
    big = F.interpolate(torch.from_numpy(small), scale_factor=cell, mode="bicubic", align_corners=False)
    return big.clamp(0, 255).to(torch.uint8)[0, :, :height, :width].permute(1, 2, 0).contiguous().numpy()


def textured_frames(num_frames: int, height: int, width: int, seed: int = 0, cell: int = 12) -> np.ndarray:
    """Frames [T, H, W, 3]: two textures panning in different directions, averaged.

    One pan alone would be predicted perfectly by motion compensation (almost no residual); the
    blend of two motions keeps real residuals in every inter frame, as moving scenes have.
    """
    big = _texture(2 * height, 2 * width, cell, seed)
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):
        # Ping-pong offsets instead of wrapping, so there is no cut (an intra-like frame) mid-clip.
        y = _pingpong(2 * t, height)
        x = _pingpong(3 * t, width)
        a = big[y : y + height, :width].astype(np.uint16)
        b = big[:height, x : x + width]
        frames[t] = (a + b) // 2
    return frames


def _pingpong(v: int, span: int) -> int:
    period = 2 * span
    v %= period
    return v if v < span else period - v


def _atomic_target(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    os.close(fd)
    return Path(tmp)


def textured_clip(seconds: float, fps: int, width: int, height: int, gop: int, seed: int = 0) -> Path:
    """A cached H.264 mp4 of the textured content with a keyframe every `gop` frames."""
    from vtok.media import write_mp4

    path = cache_dir("clips") / f"textured_{width}x{height}_{seconds:g}s_{fps}fps_gop{gop}_s{seed}.mp4"
    if path.is_file():
        return path
    log(f"generating {path.name} (cached for later runs)")
    frames = textured_frames(int(round(seconds * fps)), height, width, seed)
    tmp = _atomic_target(path)
    write_mp4(tmp, frames, fps, gop=gop)
    tmp.rename(path)
    return path


def long_video(
    minutes: float, width: int, height: int, fps: int = 30, gop_s: float = 2.0, segment_s: float = 4.0
) -> Path:
    """A cached long H.264 mp4 made cheaply: one `segment_s` segment encoded once, then repeated.

    Encoding 10 minutes of 1080p would take many minutes and a frames array of ~100 GB; the segment
    is encoded once (its frames fit in memory) and its packets are remuxed back to back with shifted
    timestamps, which costs only I/O. The segment starts with a keyframe and its length is a whole
    number of GOPs, so every copy decodes on its own and the result is a valid constant-rate stream.
    """
    import av

    from vtok.media import write_mp4

    path = cache_dir("clips") / f"long_{width}x{height}_{minutes:g}min_{fps}fps_gop{gop_s:g}s.mp4"
    if path.is_file():
        return path
    gop = int(round(gop_s * fps))
    seg_frames = int(round(segment_s * fps)) // gop * gop
    copies = int(np.ceil(minutes * 60 * fps / seg_frames))
    log(f"generating {path.name}: one {seg_frames}-frame segment repeated {copies} times (cached)")
    # Low-complexity content: a small texture panning slowly compresses well, so the file stays
    # small and the segment encodes in seconds even at 1080p.
    frames = textured_frames(seg_frames, height, width, seed=1, cell=48)
    segment = _atomic_target(path.with_suffix(".segment.mp4"))
    write_mp4(segment, frames, fps, gop=gop, crf=28)
    del frames
    tmp = _atomic_target(path)
    with av.open(str(segment)) as src, av.open(str(tmp), mode="w") as dst:
        in_stream = src.streams.video[0]
        out_stream = dst.add_stream_from_template(in_stream)
        # Copies of the payloads: muxing hands a packet's buffer to FFmpeg, so each copy gets new packets.
        packets = [
            (bytes(p), p.pts, p.dts, p.is_keyframe, p.duration)
            for p in src.demux(in_stream)
            if p.dts is not None and p.size
        ]
        # Segment duration in stream ticks: frames x ticks per frame.
        ticks = int(round(seg_frames / Fraction(fps) / in_stream.time_base))
        for k in range(copies):
            for data, pts, dts, key, duration in packets:
                packet = av.Packet(data)
                packet.pts = None if pts is None else pts + k * ticks
                packet.dts = dts + k * ticks
                packet.is_keyframe = key
                packet.duration = duration
                packet.time_base = in_stream.time_base
                packet.stream = out_stream
                dst.mux(packet)
    segment.unlink()
    tmp.rename(path)
    return path


def _write_textured(args: tuple[str, int, int, int, int, int]) -> None:
    path, frames, height, width, fps, gop = args
    from vtok.media import write_mp4

    seed = int(Path(path).stem.rsplit("_", 1)[1])
    write_mp4(path, textured_frames(frames, height, width, seed=1000 + seed), fps, gop=gop)


def textured_corpus(num_videos: int, seconds: float, width: int, height: int, fps: int, gop_s: float) -> str:
    """A cached corpus of textured clips (each its own texture and motion) with a manifest; returns its path.

    Encoding is the slow part (x264 single-threaded for reproducible bytes), so clips are written by one
    process per core, once.
    """
    import json
    from concurrent.futures import ProcessPoolExecutor

    name = f"textured_{width}x{height}_{seconds:g}s_{fps}fps_gop{gop_s:g}s_{num_videos}v"
    rels = [f"videos/textured_{i:06d}.mp4" for i in range(num_videos)]
    frames, gop = int(round(seconds * fps)), int(round(gop_s * fps))

    def fill(folder: Path) -> None:
        log(f"generating {num_videos} textured clips for {name} (cached; about 1.5 s of CPU each)")
        (folder / "videos").mkdir()
        jobs = [(str(folder / rel), frames, height, width, fps, gop) for rel in rels]
        with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            list(pool.map(_write_textured, jobs))
        (folder / "manifest.jsonl").write_text("".join(json.dumps({"uri": rel}) + "\n" for rel in rels))

    return cached_corpus(name, fill)
