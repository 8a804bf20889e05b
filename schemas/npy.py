"""Tensors as .npy bytes: the format of WebDataset token files and of tensors in flight between stages.

`allow_pickle=False` on both sides: an object array can neither be written nor read back.
"""

from __future__ import annotations

import io

import numpy as np


def to_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def from_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)
