"""Encode stage (GPU actors): decoded clips in, VTok tokens out; the model loads once per actor."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.tokenize.targets import TargetPlan
from schemas.npy import from_npy, to_npy
from vtok.tokenizer_spec import TokenizerConfig

if TYPE_CHECKING:
    from vtok.video_vae import VideoVAE

TOKEN_COLUMNS = ("key_tokens", "residual_features", "residual_tokens", "frame_tokens")


@dataclass
class EncodeConfig:
    """Resources and batching of the encoder actor pool."""

    num_actors: int = 1
    """Encoder actors (one model copy each)."""
    num_gpus: float = 0.0
    """GPUs per actor; 0 runs on CPU."""
    num_cpus: float = 1.0
    """CPUs per actor (also its torch thread count when on CPU)."""
    batch_size: int = 8
    """Clips per encoder call; their frames are batched together through the vision tower."""

    def __post_init__(self) -> None:
        if self.num_actors < 1:
            raise ValueError(f"encode.num_actors must be >= 1, got {self.num_actors}")
        if self.num_gpus < 0 or self.num_cpus < 0:
            raise ValueError("encode.num_gpus and encode.num_cpus must be >= 0")
        if self.batch_size < 1:
            raise ValueError(f"encode.batch_size must be >= 1, got {self.batch_size}")


class EncodeStage:
    """Ray Data callable class: tokenizes every decodable clip of a batch, passes errors through.

    With a VAE in `targets`, it also encodes each clip's vae_frames (made by the decode stage) into latents.
    """

    def __init__(self, tokenizer_cfg: TokenizerConfig, num_threads: int = 1, targets: TargetPlan | None = None) -> None:
        import torch

        from vtok.tokenizer import VTokTokenizer  # torch and transformers load in the actor, not the driver

        torch.set_num_threads(max(1, num_threads))
        self.tokenizer = VTokTokenizer(tokenizer_cfg)
        self.vae: VideoVAE | None = None
        if targets is not None and targets.vae_uri is not None:
            from vtok.video_vae import VideoVAE, read_vae_spec

            spec = read_vae_spec(targets.vae_uri, targets.storage_options)
            # On the tokenizer's device: both models share the actor's GPU.
            self.vae = VideoVAE(spec, str(self.tokenizer.device), targets.vae_dtype)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["sample_key"])
        ok = [i for i in range(n) if not batch["error_reason"][i]]
        clips = [from_npy(batch["frames"][i]) for i in ok]
        started = time.perf_counter()
        tokens = dict(zip(ok, self.tokenizer.encode(clips)))
        latents = {i: to_npy(self.vae.encode(from_npy(batch["vae_frames"][i]))) for i in ok} if self.vae else {}
        # The batch's encoder time, shared out over its clips, so per-stage busy time adds up.
        share = (time.perf_counter() - started) / max(1, len(ok))
        # The frames are spent here: only tokens and targets travel on to the sink.
        out: dict[str, Any] = {k: v for k, v in batch.items() if k not in ("frames", "vae_frames")}
        out["latents"] = np.array([latents.get(i, b"") for i in range(n)], dtype=object)
        for column in TOKEN_COLUMNS:
            cells = []
            for i in range(n):
                value = getattr(tokens[i], column) if i in tokens else None
                cells.append(b"" if value is None else to_npy(value))
            out[column] = np.array(cells, dtype=object)
        out["encode_s"] = np.array([share if i in tokens else 0.0 for i in range(n)], dtype=np.float64)
        return out
