"""Decode stage (CPU tasks): clip rows in, sampled and resized frames out.

A video that cannot be decoded is data, not an exception: its row comes out with
`error_reason` / `error_message` set and no frames, and the sink turns it into a quarantine row. A row
that arrives with `error_reason` already set (a bad manifest row) is not decoded and leaves the same way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.tokenize.targets import TargetPlan, lowres_frames, vae_input_frames
from schemas.npy import to_npy
from vtok.isolated import IsolatedDecoder
from vtok.video import DecodeConfig, DecodeError, decode_clip


@dataclass
class DecodeStageConfig:
    """Resources of the decode tasks."""

    num_cpus: float = 0.5
    """CPUs per decode task (0.5: two per core, so one decodes while the other reads or waits on the IPC)."""
    batch_size: int = 8
    """Clips per decode task."""
    memory_mb: int = 512
    """Memory reserved per decode task; also keeps Ray from fusing decode into the encoder actors."""
    isolate: bool = True
    """Decode in a supervised child process, so a decoder crash or hang costs one clip, not the run."""
    timeout_s: float = 300.0
    """Per-clip decode time limit when isolated; an overrun is quarantined as "timeout"."""

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ValueError(f"decode_stage.timeout_s must be > 0, got {self.timeout_s}")
        if self.num_cpus <= 0:
            raise ValueError(f"decode_stage.num_cpus must be > 0, got {self.num_cpus}")
        if self.memory_mb <= 0:
            raise ValueError(f"decode_stage.memory_mb must be > 0, got {self.memory_mb}")
        if self.batch_size < 1:
            raise ValueError(f"decode_stage.batch_size must be >= 1, got {self.batch_size}")


PASSTHROUGH = ("sample_key", "source_uri", "caption", "clip_start_s", "clip_end_s", "attributes", "shard")

# One decoder child per Ray worker process, reused by every batch that process runs.
_isolated: dict[float, IsolatedDecoder] = {}


def _decoder(timeout_s: float | None) -> Any:
    if timeout_s is None:
        return decode_clip
    if timeout_s not in _isolated:
        _isolated[timeout_s] = IsolatedDecoder(timeout_s)
    return _isolated[timeout_s].decode


def decode_batch(
    batch: dict[str, np.ndarray],
    cfg: DecodeConfig,
    storage_options: dict[str, Any] | None = None,
    timeout_s: float | None = None,
    targets: TargetPlan | None = None,
) -> dict[str, np.ndarray]:
    """Decode every clip of a batch; frames travel as .npy bytes so clips of different T share a column.

    With `timeout_s`, each clip decodes in a supervised child process (see vtok.isolated): a crash or
    a hang becomes that clip's quarantine reason instead of killing the task. `targets` adds
    frames_lowres and vae_frames (the VAE's input, which the encode stage consumes), b"" where off.
    """
    targets = targets or TargetPlan()
    decode = _decoder(timeout_s)
    n = len(batch["sample_key"])
    out: dict[str, list[Any]] = {k: list(batch[k]) for k in PASSTHROUGH}
    columns: dict[str, list[Any]] = {
        "frames": [],
        "frame_indices": [],
        "source_fps": [],
        "height": [],
        "width": [],
        "error_reason": [],
        "error_message": [],
        "decode_s": [],
        "key_frame_thumb": [],
        "frames_lowres": [],
        "vae_frames": [],
    }
    # Rows from before listings could carry an error have no such columns.
    known_reason = batch.get("error_reason")
    known_message = batch.get("error_message")
    for i in range(n):
        started = time.perf_counter()
        reason = _text(known_reason[i]) if known_reason is not None else ""
        if reason:
            message = _text(known_message[i]) if known_message is not None else ""
            _append_error(columns, reason, message or f"{batch['source_uri'][i]}: {reason}")
            columns["decode_s"].append(0.0)
            continue
        start = float(batch["clip_start_s"][i])
        end = float(batch["clip_end_s"][i])
        uri = str(batch["source_uri"][i])
        offset = int(batch["byte_offset"][i])
        byte_range = (offset, int(batch["byte_size"][i])) if offset >= 0 else None
        try:
            clip = decode(
                str(batch["read_uri"][i]), cfg, None if start < 0 else start, None if end < 0 else end,
                storage_options=storage_options, byte_range=byte_range,
            )
        except DecodeError as err:
            _append_error(columns, err.reason, f"{uri}: {err.reason}: {err.message}")
            columns["decode_s"].append(time.perf_counter() - started)
            continue
        except Exception as err:  # noqa: BLE001 - any decoder failure is a quarantine row, never a lost batch
            _append_error(columns, "decoder_crash", f"{uri}: {type(err).__name__}: {err}")
            columns["decode_s"].append(time.perf_counter() - started)
            continue
        out["clip_start_s"][i] = clip.clip_start_s
        out["clip_end_s"][i] = clip.clip_end_s
        columns["frames"].append(to_npy(clip.frames))
        columns["key_frame_thumb"].append(to_npy(key_frame_thumb(clip.frames[0])))
        # Here, not in the actors: resizing is CPU work, and the actors' time is the GPU's.
        columns["frames_lowres"].append(
            to_npy(lowres_frames(clip.frames, targets.lowres_side)) if targets.lowres_side else b"")
        columns["vae_frames"].append(
            to_npy(vae_input_frames(clip.frames, targets.vae_frames, targets.vae_size)) if targets.vae_uri else b"")
        columns["frame_indices"].append(to_npy(clip.frame_indices.astype(np.int64)))
        columns["source_fps"].append(float(clip.info.source_fps))
        columns["height"].append(int(clip.info.height))
        columns["width"].append(int(clip.info.width))
        columns["error_reason"].append("")
        columns["error_message"].append("")
        columns["decode_s"].append(time.perf_counter() - started)
    result = {k: np.array(v, dtype=object) for k, v in out.items()}
    result.update({k: np.array(v, dtype=object) for k, v in columns.items()})
    result["clip_start_s"] = np.array(out["clip_start_s"], dtype=np.float64)
    result["clip_end_s"] = np.array(out["clip_end_s"], dtype=np.float64)
    result["source_fps"] = np.array(columns["source_fps"], dtype=np.float64)
    result["height"] = np.array(columns["height"], dtype=np.int32)
    result["width"] = np.array(columns["width"], dtype=np.int32)
    result["shard"] = np.array(out["shard"], dtype=np.int64)
    result["decode_s"] = np.array(columns["decode_s"], dtype=np.float64)
    return result


def _text(value: Any) -> str:
    """A string cell as Ray hands it over: None, or NaN for a column it saw as all-null, mean empty."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value)


THUMB_SIDE = 64
"""Side of the key-frame thumbnail the run report shows (a few KiB per clip next to MiB of frames)."""


def key_frame_thumb(frame: np.ndarray) -> np.ndarray:
    """The key frame [H, W, 3] subsampled to about THUMB_SIDE pixels a side, for the report page."""
    step = max(1, max(frame.shape[:2]) // THUMB_SIDE)
    return np.ascontiguousarray(frame[::step, ::step])


def _append_error(columns: dict[str, list[Any]], reason: str, message: str) -> None:
    columns["frames"].append(b"")
    columns["key_frame_thumb"].append(b"")
    columns["frames_lowres"].append(b"")
    columns["vae_frames"].append(b"")
    columns["frame_indices"].append(b"")
    columns["source_fps"].append(0.0)
    columns["height"].append(0)
    columns["width"].append(0)
    columns["error_reason"].append(reason)
    columns["error_message"].append(message)
