"""Display orientation: how a container's display matrix (a phone's portrait video) turns and mirrors
the coded frames to be shown upright. Pure functions."""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class _Orientation:
    """How a coded frame is turned to be shown: swap its axes, then mirror columns and/or rows.

    These three steps express all eight orientations a display matrix can take (rotations by multiples
    of 90 degrees, each optionally mirrored).
    """

    transpose: bool = False
    hflip: bool = False
    vflip: bool = False

    @property
    def mirrored(self) -> bool:
        # Each step is a reflection; an odd number of them leaves the picture mirrored.
        return (self.transpose + self.hflip + self.vflip) % 2 == 1

    @property
    def rotation(self) -> int:
        """Clockwise degrees, once a final left-right mirror (`mirrored`) is taken off."""
        return _ROTATIONS[(self.transpose, self.hflip != self.mirrored, self.vflip)]

    def apply(self, image: np.ndarray, row_axis: int = 0) -> np.ndarray:
        """`image` (rows on row_axis, columns on the next axis) as displayed: a view, no copy."""
        if self.transpose:
            image = np.swapaxes(image, row_axis, row_axis + 1)
        if self.hflip:
            image = np.flip(image, row_axis + 1)
        if self.vflip:
            image = np.flip(image, row_axis)
        return image


_UPRIGHT = _Orientation()
# (transpose, hflip, vflip) of the four pure rotations, by clockwise degrees: a clockwise quarter turn is
# transpose then mirror columns (FFmpeg's transpose=clock), a counterclockwise one transpose then mirror rows.
_ROTATIONS = {(False, False, False): 0, (True, True, False): 90, (False, True, True): 180, (True, False, True): 270}


@functools.lru_cache(maxsize=64)
def _orientation_of(matrix: tuple[int, ...]) -> _Orientation | None:
    """The orientation an FFmpeg display matrix (3x3 row-major, 16.16 and 2.30 fixed point) describes.

    Follows `ffmpeg`'s own autorotation (fftools: get_rotation, then transpose/hflip/vflip), so frames come
    out as the ffmpeg CLI and players show them. None: a rotation that is not a multiple of 90 degrees.
    """
    a, b, c, d = (float(v) for v in (matrix[0], matrix[1], matrix[3], matrix[4]))
    scale0, scale1 = math.hypot(a, c), math.hypot(b, d)
    if scale0 == 0 or scale1 == 0:
        # A degenerate matrix: FFmpeg's rotation is NaN and it applies nothing.
        return _UPRIGHT
    # av_display_rotation_get is counterclockwise; fftools negates it into a clockwise angle in [0, 360).
    counterclockwise = -math.degrees(math.atan2(b / scale1, a / scale0))
    theta = -float(round(counterclockwise))
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)
    if abs(theta - 90) < 1:
        # transpose=cclock_flip where the matrix mirrors, else transpose=clock.
        return _Orientation(transpose=True) if c > 0 else _Orientation(transpose=True, hflip=True)
    if abs(theta - 180) < 1:
        return _Orientation(hflip=a < 0, vflip=d < 0)
    if abs(theta - 270) < 1:
        # transpose=clock_flip where the matrix mirrors, else transpose=cclock.
        return _Orientation(True, True, True) if c < 0 else _Orientation(transpose=True, vflip=True)
    if abs(theta) < 1:
        return _Orientation(vflip=d < 0)
    return None


def _unsupported_turn(matrix: Sequence[int]) -> str:
    """The message for a display matrix that turns frames by an angle that is not a right angle."""
    clockwise = math.degrees(math.atan2(float(matrix[1]), float(matrix[0]))) % 360
    return f"the display matrix turns frames by {clockwise:.1f} degrees; only multiples of 90 are supported"


def _frame_orientation(frame: Any) -> _Orientation | None:
    """The orientation FFmpeg attached to a decoded frame (the stream's display matrix)."""
    side = frame.side_data.get("DISPLAYMATRIX")
    if side is None:
        return _UPRIGHT
    # FFmpeg stores the matrix as nine native-endian int32.
    return _orientation_of(struct.unpack("=9i", bytes(side)))
