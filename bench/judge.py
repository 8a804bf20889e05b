"""Judge agreement: how well the shapes-world judge reads the generator's ground truth back, per attribute.

    python -m bench.judge            # 300 videos of the default world (128 px, 32 frames) + 150 of the smallest
    python -m bench.judge --quick    # 40 + 20 videos, a smoke run

The videos are a corpus that `write_corpus` writes (the mp4s and the manifest's `attributes`, as `vtok
synth` makes them); each is judged as:

- clean: the generator's render (`generate`, the same seed and index);
- mp4: the corpus's mp4 (libx264 crf 18, yuv420p) decoded whole (`vtok.media.read_frames`, as `vtok judge`);
- 32 px / 16 px: squares made by `vtok.video.resize_center_crop` from the clean render, and from the
  decoded mp4 (the path of tokenize's `targets.lowres_side`); 8 px from the clean render, past the limit;
- stand-ins for a decoder's output, from the clean render of the first third of the videos: Gaussian
  noise (sigma 10), a 3x3 binomial blur, every colour dimmed 30% towards the background, and dimmed
  then resized to 16 px.

A second, smallest world (32 px, 8 frames: a small triangle is 6 pixels) is judged clean and as mp4.
Agreement is `vtok.eval.judge.compare`: count per video, the other attributes per ground-truth object,
objects matched by colour then position. Disagreements are listed with the judge's confidence.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import log, parser, table, write_results

ATTRS = ("count", "color", "size", "position", "motion")


def _degradations(seed: int) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    rng = np.random.default_rng(seed)

    def noise(frames: np.ndarray) -> np.ndarray:
        return np.clip(frames + rng.normal(0.0, 10.0, frames.shape), 0, 255).astype(np.uint8)

    def blur(frames: np.ndarray) -> np.ndarray:
        out = frames.astype(np.float32)
        for axis in (1, 2):
            padded = np.concatenate([out.take([0], axis), out, out.take([-1], axis)], axis)
            n = out.shape[axis]
            out = (padded.take(range(0, n), axis) + 2 * padded.take(range(1, n + 1), axis)
                   + padded.take(range(2, n + 2), axis)) / 4.0
        return np.clip(out.round(), 0, 255).astype(np.uint8)

    def dim(frames: np.ndarray) -> np.ndarray:
        bg = np.median(frames.reshape(-1, 3), axis=0)
        return np.clip(bg + 0.7 * (frames - bg), 0, 255).round().astype(np.uint8)

    return {"noise sigma 10": noise, "blur 3x3": blur, "dim 30%": dim}


def _disagreements(name: str, index: int, reading: dict[str, Any], truth: dict[str, Any]) -> list[str]:
    """One line per attribute the reading gets wrong (objects paired by colour, as `compare` pairs them)."""
    lines = []
    if reading["count"] != truth["count"]:
        lines.append(f"{name} #{index}: count {truth['count']} read {reading['count']} "
                     f"(confidence {reading['confidence']['count']})")
    by_colour = {o["color"]: o for o in reading["objects"]}
    for obj in truth["objects"]:
        got = by_colour.get(obj["color"])
        if got is None:
            lines.append(f"{name} #{index}: {obj['size']} {obj['color']} {obj['shape']} at ({obj['x']}, {obj['y']}) "
                         f"moving {obj['motion']} not found")
            continue
        for attr in ATTRS[2:]:
            if got[attr] != obj[attr]:
                lines.append(f"{name} #{index}: {obj['color']} {obj['shape']} {attr} {obj[attr]!r} read "
                             f"{got[attr]!r} (confidence {got['confidence'][attr]}; true centre ({obj['x']}, "
                             f"{obj['y']}), read ({got['x']}, {got['y']}) in {reading['width']} px)")
    return lines


def run_world(label: str, num_videos: int, seed: int, width: int, frames: int, low_res: bool,
              degrade: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Agreement rows of one world, and its disagreements; the degradations run on the first `degrade` videos."""
    from vtok.eval.judge import compare, pool, read_attributes
    from vtok.media import read_frames
    from vtok.shapes import ShapesConfig, generate, write_corpus
    from vtok.video import resize_center_crop

    cfg = ShapesConfig(width=width, height=width, num_frames=frames)
    conditions: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
        "clean": lambda clean, mp4: clean,
        "mp4": lambda clean, mp4: mp4,
    }
    if low_res:
        # 8 px (a small shape is under a pixel) only from the clean render: where the judge stops working.
        for side, sources in ((32, ("clean", "mp4")), (16, ("clean", "mp4")), (8, ("clean",))):
            for source in sources:
                conditions[f"{source} -> {side} px"] = (
                    lambda clean, mp4, side=side, source=source:
                    np.stack([resize_center_crop(f, side) for f in (clean if source == "clean" else mp4)]))
    degraded = set()
    if degrade:
        for name, fn in _degradations(seed).items():
            degraded.add(name)
            conditions[name] = lambda clean, mp4, fn=fn: fn(clean)
        # Dim and small: no fully covered interior is left to tell a dim object from a small one.
        dim = _degradations(seed)["dim 30%"]
        degraded.add("dim 30% -> 16 px")
        conditions["dim 30% -> 16 px"] = lambda clean, mp4: np.stack([resize_center_crop(f, 16) for f in dim(clean)])
    agreements: dict[str, list[Any]] = {name: [] for name in conditions}
    seconds = dict.fromkeys(conditions, 0.0)
    sides = {}
    wrong: list[str] = []
    with tempfile.TemporaryDirectory(prefix="vtok-bench-judge-") as tmp:
        started = time.perf_counter()
        manifest = Path(write_corpus(tmp, num_videos, seed=seed, cfg=cfg))
        log(f"{label}: wrote {num_videos} videos in {time.perf_counter() - started:.1f} s")
        for n, line in enumerate(manifest.read_text().splitlines()):
            record = json.loads(line)
            truth = record["attributes"]
            clean = generate(seed, record["sample_index"], cfg).frames
            mp4 = read_frames(str(manifest.parent / record["uri"]))
            for name, make in conditions.items():
                if name in degraded and n >= degrade:
                    continue
                judged = make(clean, mp4)
                sides[name] = judged.shape[2]
                t0 = time.perf_counter()
                reading = read_attributes(judged)
                seconds[name] += time.perf_counter() - t0
                agreements[name].append(compare(reading, truth))
                wrong += _disagreements(f"{label} {name}", record["sample_index"], reading, truth)
            if (n + 1) % 100 == 0:
                log(f"{label}: judged {n + 1}/{num_videos}")
    rows = []
    for name, found in agreements.items():
        rates = pool(found)
        rows.append({"world": label, "condition": name, "px": sides[name], "videos": len(found),
                     "objects": sum(a.objects for a in found), **{a: rates[a] for a in ATTRS},
                     "centre_error_pct": 100 * rates["xy_error"], "ms_per_video": 1000 * seconds[name] / len(found)})
    return rows, wrong


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--videos", type=int, default=None, help="videos of the default world (default 300; 40 quick)")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--show", type=int, default=12, help="disagreements listed per world")
    args = p.parse_args()
    n = args.videos or (40 if args.quick else 300)
    started = time.perf_counter()
    rows, wrong = run_world("128 px, 32 frames", n, args.seed, 128, 32, low_res=True, degrade=max(n // 3, 1))
    small_rows, small_wrong = run_world("32 px, 8 frames", max(n // 2, 1), args.seed, 32, 8, low_res=False,
                                        degrade=0)
    rows += small_rows

    def pct(x: float) -> str:
        return f"{100 * x:.1f}" if x < 1 else "100"

    print(f"Judge agreement with the ground truth, % ({date.today().isoformat()}, seed {args.seed}):\n")
    print(table(["world", "frames judged", "px", "videos", "objects", *ATTRS, "centre error % side", "ms/video"],
                [[r["world"], r["condition"], r["px"], r["videos"], r["objects"], *(pct(r[a]) for a in ATTRS),
                  f"{r['centre_error_pct']:.2f}", f"{r['ms_per_video']:.0f}"] for r in rows]))
    for label, lines in (("128 px", wrong), ("32 px", small_wrong)):
        print(f"\n{len(lines)} disagreements in the {label} world" + (":" if lines else "."))
        for line in lines[: args.show]:
            print(f"  {line}")
    write_results("judge", {"rows": rows, "disagreements": wrong + small_wrong,
                            "seconds": round(time.perf_counter() - started, 1)}, args.out)
    log(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
