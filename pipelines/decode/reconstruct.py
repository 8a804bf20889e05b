"""Reconstruct stage (GPU actors): token rows in, each clip's frames out, sampled by a trained decoder.

The decoder loads once per actor (VTokDecoder.from_pretrained on a complete checkpoint) and samples under
torch.inference_mode. Each clip gets its own noise, seeded by (seed, sample key): a clip's video is the
same whatever batch, actor or number of actors it lands in. `decoder_checkpoint` and `load_decoder` are the
set-up `vtok decode` (these actors) and `vtok generate` (in process) share.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.train.decoder_checks import saved_decoder_config
from vtok.models.decoder_config import DecoderConfig
from vtok.storage import localize_dir

TOKEN_INPUTS = ("key_tokens", "residual_features", "residual_tokens", "frame_tokens")
"""Columns the stage consumes; it passes every other column through."""


def clip_seed(seed: int, sample_key: str) -> int:
    """The noise seed of one clip: fixed by the run's seed and the clip's key, never by its batch."""
    return int.from_bytes(hashlib.sha256(f"{seed}\0{sample_key}".encode()).digest()[:8], "big") >> 1


def pick_device(device: str) -> str:
    """"auto": cuda when this process sees a GPU, else cpu."""
    import torch

    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def decoder_checkpoint(uri: str, storage_options: dict[str, Any] | None = None,
                       key: str = "decoder") -> tuple[str, Path, DecoderConfig]:
    """(checkpoint URI, local folder, saved config) of the complete decoder checkpoint `uri` names (a step
    folder, or a run's latest); refused with an InputError naming `key` (a remote one is downloaded once)."""
    from vtok.training.checkpoint_ref import resolve_checkpoint

    checkpoint = resolve_checkpoint(uri, key, storage_options)
    folder = localize_dir(checkpoint, storage_options)
    return checkpoint, folder, saved_decoder_config(folder, key)


def load_decoder(folder: Path, device: str, storage_options: dict[str, Any] | None = None) -> Any:
    """The VTokDecoder of a local checkpoint folder on `device`, in eval mode, with its VAE in latent space
    (a remote VAE directory is downloaded once)."""
    from vtok.models.decoder import VTokDecoder
    from vtok.models.decoder_video import load_vae

    cfg = saved_decoder_config(folder, "decoder")
    vae = load_vae(localize_dir(cfg.vae, storage_options)) if cfg.space == "latents" and cfg.vae else None
    return VTokDecoder.from_pretrained(folder, vae=vae).to(device).eval()


class Reconstructor:
    """Ray Data callable class: a batch of token rows -> the same rows with "frames" (uint8 [T, H, W, 3] each)."""

    def __init__(self, checkpoint: str, storage_options: dict[str, Any] | None = None, steps: int | None = None,
                 guidance: float | None = None, seed: int = 0, device: str = "auto", num_threads: int = 1) -> None:
        import torch

        torch.set_num_threads(max(1, num_threads))
        self.device = pick_device(device)
        self.model = load_decoder(localize_dir(checkpoint, storage_options), self.device, storage_options)
        self.cfg = self.model.cfg
        self.steps, self.guidance, self.seed = steps, guidance, seed

    def frames_of(self, batch: dict[str, Any]) -> list[np.ndarray]:
        """uint8 frames [T, H, W, 3] per clip of a numpy batch of token rows."""
        import torch

        from vtok.training.batching import collate_tokens

        keys = [str(k) for k in batch["sample_key"]]
        columns = [c for c in TOKEN_INPUTS if c in batch]
        out = []
        with torch.inference_mode():
            for i, key in enumerate(keys):
                one = collate_tokens({"sample_key": [key], **{c: batch[c][i:i + 1] for c in columns}}, columns=columns)
                size = self._size(batch, i)
                gen = torch.Generator(self.device).manual_seed(clip_seed(self.seed, key))
                frames = self.model.sample(one, steps=self.steps, guidance=self.guidance, generator=gen,
                                           size=size)[0]
                t = self._frame_count(batch, i)
                out.append(frames[:t].numpy() if t else frames.numpy())
        return out

    def _frame_count(self, batch: dict[str, Any], i: int) -> int | None:
        """The clip's own frame count (pixel space: the clip's T); None: the decoder's output as is."""
        if self.cfg.space != "pixels" or "frame_indices" not in batch:
            return None
        return len(batch["frame_indices"][i])

    def _size(self, batch: dict[str, Any], i: int) -> tuple[int, int, int] | None:
        """(F, H, W) to sample: in pixel space the clip's T rounded up to the transformer's temporal patch."""
        t = self._frame_count(batch, i)
        if t is None:
            return None
        step = self.model.patch_size[0]
        return (-(-t // step) * step, self.cfg.height, self.cfg.width)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        frames = self.frames_of(batch)
        out = {k: v for k, v in batch.items() if k not in TOKEN_INPUTS}
        holder = np.empty(len(frames), dtype=object)
        holder[:] = frames
        out["frames"] = holder
        return out
