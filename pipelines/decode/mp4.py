"""Write stage (CPU tasks): each clip's frames -> one mp4 (H.264, yuv420p) at OUT/<name>.mp4, local or s3://.

The encoder wants a real file, so each video is written to a local temporary file, then renamed into place
(a local output: the temporary file is beside it) or sent in one PUT (an object store): whatever is killed
when, a file under a video's name is a whole video, never half of one. yuv420p needs even sides: frames of
an odd side get their last row / column repeated.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from vtok.storage import get_fs, honour_umask, is_local, join

INDEX_FILE = "index.jsonl"
"""OUT/index.jsonl: one JSON object per video (sample key, source, caption, path, frames, size)."""
TEMP_PREFIX = ".tmp-"
"""Temporary files of videos being written locally (a kill leaves them; a resumed decode removes them)."""
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def video_name(key: str) -> str:
    """A file name for a sample key (keys are hex hashes; anything else is made safe)."""
    return _UNSAFE.sub("_", key)[:200] + ".mp4"


def prepare_frames(frames: np.ndarray, upscale: int = 1) -> np.ndarray:
    """uint8 [T, H, W, 3] ready to encode: enlarged `upscale` times (nearest), sides made even."""
    frames = np.asarray(frames, np.uint8)
    assert frames.ndim == 4 and frames.shape[-1] == 3, f"frames must be [T, H, W, 3], got {list(frames.shape)}"
    if upscale > 1:
        frames = frames.repeat(upscale, axis=1).repeat(upscale, axis=2)
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return np.ascontiguousarray(frames)


def put_mp4(frames: np.ndarray, uri: str, fps: float, storage_options: dict[str, Any] | None = None,
            upscale: int = 1) -> tuple[int, int, int]:
    """Encode `frames` into an mp4 at `uri`; returns the written (frames, height, width)."""
    from vtok.media import write_mp4

    ready = prepare_frames(frames, upscale)
    fs, path = get_fs(uri, storage_options)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    if is_local(uri):
        # The ".mp4" suffix tells the muxer the container.
        fd, tmp = tempfile.mkstemp(dir=parent or ".", prefix=TEMP_PREFIX, suffix=".mp4")
        os.close(fd)
        try:
            write_mp4(tmp, ready, fps)
            honour_umask(tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    else:
        with tempfile.TemporaryDirectory(prefix="vtok-mp4-") as scratch:
            local = Path(scratch) / "video.mp4"
            write_mp4(local, ready, fps)
            fs.put_file(str(local), path)
    return int(ready.shape[0]), int(ready.shape[1]), int(ready.shape[2])


def write_videos(batch: dict[str, Any], out: str, fps: float, storage_options: dict[str, Any] | None = None,
                 upscale: int = 1) -> dict[str, Any]:
    """Ray Data batch function: rows with "frames" -> index rows (the frames dropped, the mp4 written)."""
    keys = [str(k) for k in batch["sample_key"]]
    rows: dict[str, list[Any]] = {"sample_key": [], "source_uri": [], "caption": [], "path": [], "frames": [],
                                  "height": [], "width": []}
    for i, key in enumerate(keys):
        uri = join(out, video_name(key))
        t, h, w = put_mp4(batch["frames"][i], uri, fps, storage_options, upscale)
        rows["sample_key"].append(key)
        rows["source_uri"].append(_text(batch, "source_uri", i))
        rows["caption"].append(_text(batch, "caption", i))
        rows["path"].append(uri)
        rows["frames"].append(t)
        rows["height"].append(h)
        rows["width"].append(w)
    return {k: np.asarray(v, dtype=object if k in ("sample_key", "source_uri", "caption", "path") else np.int64)
            for k, v in rows.items()}


def _text(batch: dict[str, Any], column: str, i: int) -> str | None:
    if column not in batch or batch[column][i] is None:
        return None
    return str(batch[column][i])
