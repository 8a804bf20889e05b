"""A simple colour check of frames against the shapes world's truth (the full judge reads much more).

The foreground is every pixel far from the background colour; its mean colour, brightness-normalized,
is named by the nearest palette colour. Brightness is normalized (the brightest channel scaled to 255)
because small objects in low-resolution frames blend with the dark background: a half-covered cyan pixel
is a dark cyan, which is nearer to green than to cyan before normalizing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vtok.shapes import COLORS

FOREGROUND_DISTANCE = 64
"""A pixel is foreground when some channel differs from the background by more than this (0..255)."""


def foreground_colour(frames: np.ndarray, background: Any = (32, 32, 32)) -> str | None:
    """The palette name of the mean foreground colour of uint8 frames [..., 3]; None when nothing stands out."""
    pixels = np.asarray(frames).reshape(-1, 3).astype(np.float64)
    far = np.abs(pixels - np.asarray(background, np.float64)).max(1) > FOREGROUND_DISTANCE
    if not far.any():
        return None
    mean = pixels[far].mean(0)
    mean = mean * 255.0 / max(float(mean.max()), 1.0)
    names = list(COLORS)
    palette = np.asarray([COLORS[n] for n in names], np.float64)
    return names[int(np.argmin(((palette - mean) ** 2).sum(1)))]


def true_colour(attributes: Any) -> str | None:
    """The colour of a single-object clip's object from its `attributes` (JSON or dict); None otherwise."""
    from vtok.eval.questions import parse_attributes

    attrs = parse_attributes(attributes)
    if not attrs or len(attrs.get("objects", [])) != 1:
        return None
    return str(attrs["objects"][0]["color"])


def background_of(attributes: Any) -> tuple[int, int, int]:
    """The clip's background colour from its attributes (the shapes world's default when absent)."""
    from vtok.eval.questions import parse_attributes
    from vtok.shapes import ShapesConfig

    attrs = parse_attributes(attributes) or {}
    return tuple(attrs.get("background") or ShapesConfig().background)  # type: ignore[return-value]


CHANCE = 1.0 / len(COLORS)
"""Accuracy of a guess among the palette's colours."""
