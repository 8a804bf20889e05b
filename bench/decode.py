"""Sampled decode (vtok.video.decode_clip) vs decoding every frame, on a textured clip.

    .venv/bin/python -m bench.decode [--quick] [--baseline-rev REV]

Contenders, for a short-GOP clip (keyframe every 1 s) and a long-GOP one (every 10 s), 60 s of 640x360
at 30 fps (1,800 frames) of moving texture:
  - pyav sampled:   decode_clip(backend="pyav", num_frames=16, seek="auto"), 16 frames at 224x224,
                    decoder threads as FFmpeg chooses (decode.threads=0, the default);
  - pyav sampled, 1 thread: the same with decode.threads=1 (what each pipeline decode task uses);
  - decord sampled: decode_clip(backend="decord", num_frames=16), the same frames;
  - naive decode-all: open with PyAV, decode every frame, convert each to RGB at full size, keep the
    16 sampled ones (what a first script does: `[f.to_ndarray(format="rgb24") for f in decode()]`).
    It gets FFmpeg's frame threads like pyav sampled, so the ratio measures what is decoded and
    converted, not thread settings;
  - with --baseline-rev REV: pyav sampled with vtok/video.py as of git revision REV (before/after).
Each is timed on the whole call (open to frames in hand); figures are medians over interleaved rounds.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from bench.common import interleaved, log, parser, summary, table, write_results
from bench.media import textured_clip

SAMPLED = 16


def naive_decode_all(path: Path, keep: np.ndarray) -> list[np.ndarray]:
    """Every frame decoded and converted to RGB; the frames at `keep` are kept (the others dropped)."""
    import av

    wanted = set(int(i) for i in keep)
    kept: list[np.ndarray] = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for index, frame in enumerate(container.decode(stream)):
            rgb = frame.to_ndarray(format="rgb24")
            if index in wanted:
                kept.append(rgb)
    return kept


def video_module_at(rev: str) -> ModuleType:
    """vtok/video.py as it was at git revision `rev`, imported under its own name (for before/after)."""
    root = Path(__file__).resolve().parent.parent
    source = subprocess.run(
        ["git", "show", f"{rev}:vtok/video.py"], cwd=root, capture_output=True, text=True, check=True
    ).stdout
    folder = Path(tempfile.mkdtemp(prefix="vtok-bench-rev-"))
    path = folder / "video_at_rev.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"vtok_video_at_{rev.replace('~', '_')}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered first: dataclasses look their module up in sys.modules while the class is made.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def contenders(path: Path, size: int, baseline: ModuleType | None, rev: str | None) -> tuple[dict[str, Any], int]:
    """The timed callables for one clip, and the clip's frame count."""
    from vtok.video import DecodeConfig, decode_clip, probe, sample_frame_indices

    base = DecodeConfig(fps=None, num_frames=SAMPLED, max_frames=SAMPLED, size=size, seek="auto")
    info = probe(str(path))
    keep = sample_frame_indices(info.num_frames, info.source_fps, base)
    pyav = dataclasses.replace(base, backend="pyav")
    pyav_1 = dataclasses.replace(base, backend="pyav", threads=1)
    decord = dataclasses.replace(base, backend="decord")
    calls: dict[str, Callable[[], Any]] = {
        "pyav sampled": lambda: decode_clip(str(path), pyav),
        "pyav sampled, 1 thread": lambda: decode_clip(str(path), pyav_1),
        "decord sampled": lambda: decode_clip(str(path), decord),
        "naive decode-all": lambda: naive_decode_all(path, keep),
    }
    if baseline is not None:
        old_cfg = baseline.DecodeConfig(fps=None, num_frames=SAMPLED, max_frames=SAMPLED, size=size, backend="pyav")
        calls[f"pyav sampled @ {rev}"] = lambda: baseline.decode_clip(str(path), old_cfg)
    return calls, info.num_frames


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=None, help="clip length (default 60; 12 with --quick)")
    p.add_argument("--baseline-rev", default=None,
                   help="also time vtok/video.py as of this git revision (before/after of a change)")
    args = p.parse_args()
    baseline = video_module_at(args.baseline_rev) if args.baseline_rev else None
    if args.quick:
        seconds, width, height, repeats = args.seconds or 12.0, 320, 180, args.repeats or 3
    else:
        seconds, width, height, repeats = args.seconds or 60.0, 640, 360, args.repeats or 5
    fps = 30
    gops = {"short GOP (1 s)": fps, "long GOP (10 s)": 10 * fps}
    rows: list[list[Any]] = []
    results: dict[str, Any] = {}
    for label, gop in gops.items():
        path = textured_clip(seconds, fps, width, height, gop)
        calls, num_frames = contenders(path, 224, baseline, args.baseline_rev)
        log(f"{label}: {path.name} ({path.stat().st_size / 1e6:.1f} MB, {num_frames} frames), {repeats} rounds")
        times = interleaved(calls, repeats)
        naive = np.median(times["naive decode-all"])
        entry: dict[str, Any] = {
            "clip": path.name,
            "gop_frames": gop,
            "num_frames": num_frames,
            "file_bytes": path.stat().st_size,
        }
        for name, runs in times.items():
            med = float(np.median(runs))
            entry[name] = summary(runs) | {
                "source_frames_per_s": num_frames / med,
                "speedup_vs_naive": naive / med,
            }
            rows.append([label, name, med, num_frames / med, SAMPLED / med, naive / med])
        results[label] = entry
    headers = ["clip", "contender", "median s", "source frames/s", "output frames/s", "x naive"]
    print(table(headers, rows))
    out = write_results(
        "decode",
        {
            "params": {"seconds": seconds, "width": width, "height": height, "fps": fps, "sampled": SAMPLED,
                       "repeats": repeats, "quick": args.quick, "baseline_rev": args.baseline_rev},
            "results": results,
        },
        args.out,
    )
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
