"""The shapes-world judge: read count, colour, size, position and motion back from any frames.

It is the inverse of vtok.shapes and reads with the generator's own constants (palette, size classes
rendered by the generator itself, thirds, motions, default speed), so a change there changes what is read
here. It works on uint8 frames [T, H, W, 3] from anywhere: rendered, decoded from
mp4, resized to a low-res square, reconstructed or generated. numpy only.

How it reads (vtok.eval.judge_parts holds the pixel and component steps, vtok.eval.judge_tracks the tracking):

1. Colour segmentation: a pixel is background + alpha * (palette colour - background), the background
   being the frames' median colour. The palette colour that explains it with the least residual labels
   it, and alpha is how much of the pixel that colour covers: a blurred, resized or chroma-subsampled edge
   pixel is a partial cover, not another colour. Covers under MIN_ALPHA (higher in noisy frames) are
   background.
2. Connected components (8-connected) per colour and frame, with their mass (summed alpha: the covered
   area in pixels, which resizing preserves) and alpha-weighted centroid. Specks lighter than half the
   lightest shape the generator draws are the tinted rims of objects (added to the object they touch) or
   noise.
3. Objects: colours are unique within a generator's scene, so a colour's components in a frame are one
   object (an occluder passing over it can split it). A colour that shows more components in most frames
   (a generated video repeating a colour) is that many objects, followed by nearest centroid.
4. Attributes. count: objects seen in at least PRESENCE of the frames. size: the mass against the
   generator's size classes; they separate by mass whatever the (unread) shape, the heaviest small shape
   (the square) being 1.7x lighter than the lightest large one (the triangle). position, x, y: the
   centroid in the first frame it is seen in, in the generator's pixel coordinates (pixel (i, j) covers
   [j, j+1) x [i, i+1)) of the judged frames, named by the generator's thirds. motion: the net
   displacement of the centroid over the frames that show the object whole, along its main axis; one
   frame (or one whole frame) reads UNKNOWN.

Each attribute has a confidence in [0, 1], 1 when the reading is clear: the evidence's distance from the
decision boundary, in units of the generator's own spacing (palette angles, size classes, a pixel from a
thirds line, a frame's travel). `compare` scores a reading against a ground truth, `pool` many of them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vtok.eval.judge_parts import (
    NOISE_SIGMAS,
    components,
    cover_threshold,
    min_object_mass,
    segment,
    size_masses,
)
from vtok.eval.judge_tracks import Track, tracks
from vtok.eval.questions import CATEGORIES
from vtok.shapes import DEFAULT_SIDE, DIRECTIONS, MOTIONS, ShapesConfig, position_name

UNKNOWN = "unknown"
"""The motion read when it cannot be seen: fewer than two frames show the object whole."""
PRESENCE = 0.5
"""Fraction of the frames an object must be seen in to count."""
WHOLE = 0.9
"""A frame whose object mass is under this fraction of its median over the frames is partly hidden; its
centroid is left out of the motion (an occluder passing over a static object drags its centroid). The
median, not the largest mass, so that codec noise on a tiny object does not leave most frames out."""
POSITION_SCALE_PX = 1.0
"""Distance (px) of a centroid from a thirds' boundary at which its position counts as certain: centroids
of rendered and decoded frames are good to a fraction of a pixel."""
STATIC_FRACTION = 0.25
"""Net displacement under this fraction of the travel at the generator's speed over the frames seen reads
as static, with at most TRAVEL_CAP and at least MIN_STEPS frames' travel as the bar."""
TRAVEL_CAP = 0.1
"""Of the frame side: a mover stopped early by the border (its start placed by hand) still moves."""
MIN_STEPS = 0.5
"""Frames' travel: the bar for a two-frame video."""
ATTRIBUTES: tuple[str, ...] = CATEGORIES
"""What `compare` scores: TV-Align's categories, the generator's attributes."""
_QUANTILE = 0.9
_DEFAULT_SPEED = ShapesConfig().speed


def read_attributes(
    frames: np.ndarray, background: Sequence[int] | None = None, speed: float | None = None
) -> dict[str, Any]:
    """The judge's reading of uint8 RGB frames [T, H, W, 3], in the generator's `attributes` structure.

    {"count", "objects": [{"color", "size", "position", "motion", "x", "y", "confidence": {...}}],
    "num_frames", "width", "height", "background", "confidence": {"count"}}, objects in palette order.
    x and y are in the judged frames' pixels. `background` defaults to the frames' median colour; `speed`
    (px per frame of a DEFAULT_SIDE render) to the generator's default, and sets what displacement counts
    as motion.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or 0 in frames.shape:
        raise ValueError(f"expected uint8 RGB frames [T, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    num_frames, height, width, _ = frames.shape
    bg = estimate_background(frames) if background is None else np.asarray(background, np.float32)
    side = min(height, width)
    floor = min_object_mass(side)
    min_alpha = cover_threshold(frames, bg)
    seg = segment(frames, bg, min_alpha)
    objects: list[dict[str, Any]] = []
    # Frames so noisy that the background threshold nears a full cover may hide whole objects.
    count_conf = _clip((1.0 - min_alpha) / 0.5)
    for track in tracks(components(seg, floor), num_frames):
        presence = track.frames_seen / num_frames
        # Seen in about half the frames is as doubtful as a count gets, either way.
        count_conf = min(count_conf, abs(2.0 * presence - 1.0))
        if presence < PRESENCE:
            continue
        reading, mass = _read_object(track, seg.color_confidence(track.colour_sum, track.color), width, height,
                                     speed)
        # An object barely heavier than the noise floor might be noise; certain from 1.5x the floor (3/4 of
        # the lightest shape at DEFAULT_SIDE: a native render of a smaller frame pixelates it lighter).
        count_conf = min(count_conf, _clip(math.log(max(mass, 1e-9) / floor) / math.log(1.5)))
        objects.append(reading)
    return {
        "count": len(objects),
        "objects": objects,
        "num_frames": int(num_frames),
        "width": int(width),
        "height": int(height),
        "background": [round(float(c), 1) for c in bg],
        "confidence": {"count": round(count_conf, 3)},
    }


def estimate_background(frames: np.ndarray) -> np.ndarray:
    """The per-channel median colour of (up to 8 of) the frames: objects cover well under half of a frame."""
    pick = np.unique(np.linspace(0, len(frames) - 1, min(8, len(frames))).round().astype(int))
    return np.median(frames[pick].reshape(-1, 3), axis=0).astype(np.float32)


def _clip(value: float) -> float:
    return float(min(1.0, max(0.0, value)))


def _read_object(
    track: Track, color_conf: float, width: int, height: int, speed: float | None
) -> tuple[dict[str, Any], float]:
    """One object's reading, and the mass it was sized by."""
    side = min(width, height)
    # The object's own mass: occlusion and the border (a generated object leaving the frame) only ever
    # lower it, so a high quantile over the frames, or the first frame's where that is more (the generator
    # never overlaps objects at the start). An object partly outside in every frame is sized as seen.
    mass = max(float(np.quantile(track.mass, _QUANTILE)), float(track.mass[0]))
    size, size_conf = _size(max(float(np.quantile(track.area, _QUANTILE)), float(track.area[0])), side)
    x, y = float(track.x[0]), float(track.y[0])
    margin = min(min(abs(x - k * width / 3.0), abs(y - k * height / 3.0)) for k in (1, 2))
    whole = track.mass >= WHOLE * float(np.median(track.mass))
    motion, motion_conf = _motion(track.t[whole], track.x[whole], track.y[whole], side, speed)
    return {
        "color": track.color,
        "size": size,
        "position": position_name(x, y, width, height),
        "motion": motion,
        "x": round(x, 2),
        "y": round(y, 2),
        "confidence": {
            "color": round(color_conf, 3),
            "size": round(size_conf, 3),
            "position": round(_clip(margin / POSITION_SCALE_PX), 3),
            "motion": round(motion_conf, 3),
        },
    }, mass


def _size(mass: float, side: int) -> tuple[str, float]:
    """Size class of an alpha mass: split at the geometric mean of the heaviest small and lightest large
    shape; certain from the nearest class edge on (log scale)."""
    bounds = size_masses(side)
    small_max, large_min = bounds["small"][1], bounds["large"][0]
    split = math.sqrt(small_max * large_min)
    half_gap = 0.5 * math.log(large_min / small_max)
    distance = math.log(max(mass, 1e-9) / split)
    return ("large" if distance >= 0 else "small"), _clip(abs(distance) / half_gap)


def _motion(t: np.ndarray, x: np.ndarray, y: np.ndarray, side: int, speed: float | None) -> tuple[str, float]:
    """Direction of the centroid's net displacement over the video, and how clear it is.

    The displacement is end minus start (medians of a few frames at each end), not a fitted slope: an
    object the border stops early in a long video has moved all the same. It counts as motion past a
    quarter of what the generator's speed would move it (capped for long videos, floored for two frames),
    or more where the track jitters (a generated video).
    """
    if len(t) < 2:
        return UNKNOWN, 0.0
    t = t.astype(np.float64)
    # Up to 3 frames at each end (a quarter of the track at most), so one noisy frame does not set it.
    k = max(1, min(3, len(t) // 4))
    track = np.stack([x, y], axis=1)
    drift = np.median(track[-k:], axis=0) - np.median(track[:k], axis=0)
    # Jitter: how far each centroid lies off the line through its neighbours in time (frames left out as
    # partly hidden make uneven gaps). A constant speed puts it on the line and a stop at the border bends
    # it once, which the median ignores; with even gaps, noise of sigma gives a deviation of sigma * 1.22.
    jitter = 0.0
    if len(t) >= 3:
        w = ((t[1:-1] - t[:-2]) / (t[2:] - t[:-2]))[:, None]
        off = np.abs(track[1:-1] - (track[:-2] + w * (track[2:] - track[:-2])))
        jitter = 1.4826 * float(np.median(off, axis=0).max()) / math.sqrt(1.5)
    # The generator moves `speed` px per frame in the frame it renders; a low-res copy of a DEFAULT_SIDE
    # render moves speed * side / DEFAULT_SIDE. The judge cannot tell which it sees and takes the slower,
    # erring towards motion: a static object does not move at all in rendered or decoded frames.
    per_frame = (_DEFAULT_SPEED if speed is None else speed) * side / DEFAULT_SIDE
    bar = max(min(STATIC_FRACTION * per_frame * float(t[-1] - t[0]), TRAVEL_CAP * side), MIN_STEPS * per_frame)
    threshold = max(bar, NOISE_SIGMAS * jitter * math.sqrt(2.0 / k), 1e-3)
    length = float(np.hypot(*drift))
    if length < threshold:
        return "static", _clip(1.0 - length / threshold)
    axis = int(np.argmax(np.abs(drift)))
    step = [0, 0]
    step[axis] = int(np.sign(drift[axis]))
    motion = next(m for m in MOTIONS if DIRECTIONS[m] == tuple(step))
    # Clear once the drift is twice the threshold and lies along one axis (the world has no diagonals).
    along, across = abs(float(drift[axis])), abs(float(drift[1 - axis]))
    return motion, min(_clip(length / threshold - 1.0), _clip(1.0 - across / along))


@dataclass
class Agreement:
    """How a reading agrees with a ground truth, attribute by attribute."""

    count: bool
    """Whether the number of objects agrees."""
    objects: int
    """Objects in the ground truth."""
    agree: dict[str, int] = field(default_factory=dict)
    """color/size/position/motion -> ground-truth objects whose matched reading agrees on it."""
    xy_error: list[float] = field(default_factory=list)
    """Per matched object, the distance between read and true centres, in fractions of each frame's width
    and height (so frames of different sizes compare)."""

    def rates(self) -> dict[str, float]:
        """Per attribute, the fraction that agrees (count: 0 or 1; the others: of the objects)."""
        out = {"count": float(self.count)}
        for name in ATTRIBUTES[1:]:
            out[name] = self.agree.get(name, 0) / self.objects if self.objects else float(self.count)
        return out


def compare(reading: Mapping[str, Any], truth: Mapping[str, Any]) -> Agreement:
    """Compare a reading with ground-truth attributes field by field.

    Objects are matched by colour (colours are unique within a scene), then the remaining ones by nearest
    centre (in fractions of each frame's size), so a miscoloured object is still scored on the rest. A
    truth object left without a match disagrees on everything.
    """
    read_objs = list(reading.get("objects", []))
    true_objs = list(truth.get("objects", []))

    def centre(obj: Mapping[str, Any], where: Mapping[str, Any]) -> np.ndarray:
        return np.array([obj["x"] / where["width"], obj["y"] / where["height"]])

    def distance(a: Mapping[str, Any], b: Mapping[str, Any]) -> float:
        return float(np.hypot(*(centre(a, truth) - centre(b, reading))))

    pairs: dict[int, int] = {}
    free = set(range(len(read_objs)))
    for i, obj in enumerate(true_objs):
        same = [j for j in free if read_objs[j]["color"] == obj["color"]]
        if same:
            j = min(same, key=lambda j: distance(obj, read_objs[j]))
            pairs[i] = j
            free.discard(j)
    rest = sorted((distance(true_objs[i], read_objs[j]), i, j)
                  for i in range(len(true_objs)) if i not in pairs for j in free)
    for _, i, j in rest:
        if i not in pairs and j in free:
            pairs[i] = j
            free.discard(j)
    agree = dict.fromkeys(ATTRIBUTES[1:], 0)
    errors: list[float] = []
    for i, j in pairs.items():
        for name in agree:
            agree[name] += int(true_objs[i][name] == read_objs[j][name])
        errors.append(distance(true_objs[i], read_objs[j]))
    return Agreement(count=int(reading.get("count", -1)) == int(truth["count"]), objects=len(true_objs),
                     agree=agree, xy_error=errors)


def pool(agreements: Sequence[Agreement]) -> dict[str, float]:
    """Agreement over many videos: count over videos, the other attributes over all their objects."""
    objects = sum(a.objects for a in agreements)
    out = {"count": sum(a.count for a in agreements) / len(agreements) if agreements else float("nan")}
    for name in ATTRIBUTES[1:]:
        out[name] = sum(a.agree.get(name, 0) for a in agreements) / objects if objects else float("nan")
    errors = [e for a in agreements for e in a.xy_error]
    out["xy_error"] = float(np.mean(errors)) if errors else float("nan")
    return out
