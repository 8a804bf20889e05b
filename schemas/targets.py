"""The decoder targets' shape rules, shared by the Parquet and WebDataset validators.

    frames_lowres  [T, side, side, 3] uint8, T = the clip's frame count (len(frame_indices))
    latents        [C, T', H', W'] float32, the same shape for every clip of a dataset

A dataset's manifest records each target that is on, with its shape ("targets": {"frames_lowres":
[side, side, 3], "latents": [C, T', H', W']}); a column that is there without being recorded, or recorded
without being there, is a problem too.
"""

from __future__ import annotations

from typing import Any

import numpy as np

TARGET_DTYPES = {"frames_lowres": np.dtype(np.uint8), "latents": np.dtype(np.float32)}


def target_problems(
    sample: str, frame_count: int, values: dict[str, Any], expected: dict[str, list[int]] | None
) -> list[str]:
    """Problems of one clip's targets (`values`: column -> ndarray, or None where the clip has none).

    `expected`: the manifest's "targets"; None (a dataset from before targets were recorded) checks only
    what a clip says about itself.
    """
    problems: list[str] = []
    for column, dtype in TARGET_DTYPES.items():
        value = values.get(column)
        wanted = None if expected is None else expected.get(column)
        if value is None:
            if wanted is not None:
                problems.append(f"{sample}: {column} missing (the dataset records it with shape {wanted})")
            continue
        shape = list(np.shape(value))
        if expected is not None and wanted is None:
            problems.append(f"{sample}: {column} present but the dataset was made without it")
        elif column == "frames_lowres" and not _lowres_ok(shape, frame_count, wanted):
            want = f"[{frame_count}, {', '.join(map(str, wanted))}]" if wanted else f"[{frame_count}, side, side, 3]"
            problems.append(f"{sample}: frames_lowres has shape {shape}, expected {want} (T = its frame count)")
        elif column == "latents" and (len(shape) != 4 or (wanted is not None and shape != wanted)):
            problems.append(f"{sample}: latents has shape {shape}, expected {wanted or '[C, T, H, W]'}")
        if isinstance(value, np.ndarray) and value.dtype != dtype:
            problems.append(f"{sample}: {column} has dtype {value.dtype}, expected {dtype}")
    return problems


def _lowres_ok(shape: list[int], frame_count: int, wanted: list[int] | None) -> bool:
    square = len(shape) == 4 and shape[0] == frame_count and shape[1] == shape[2] and shape[3] == 3
    return square and (wanted is None or shape[1:] == list(wanted))
