"""A first look after decoder training: held-out clips reconstructed from their tokens by the latest checkpoint.

Two things for the report, in the driver, on up to `samples.check_clips` held-out clips: the frame strip
(ground truth beside reconstruction, for the first `samples.clips`), and a simple colour check (the mean
colour of the reconstruction's foreground names the object's true colour; single-object shapes-world clips).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from pipelines.decode.reconstruct import Reconstructor
from pipelines.report_html import png_data_uri
from pipelines.train.decoder import SampleSettings
from vtok.eval.foreground import CHANCE, background_of, foreground_colour, true_colour

logger = logging.getLogger(__name__)


def even_pick(n: int, k: int) -> list[int]:
    """k evenly spaced indices of n (all of them when k >= n)."""
    if k >= n:
        return list(range(n))
    return [round(i * (n - 1) / (k - 1)) for i in range(k)] if k > 1 else [0]


def truth_frames(batch: dict[str, Any], i: int, recon: Reconstructor) -> np.ndarray | None:
    """Clip i's ground truth in the decoder's space as uint8 frames: frames_lowres, or latents through the VAE."""
    from vtok.training.batching import collate_tokens

    column = "frames_lowres" if "frames_lowres" in batch else "latents" if "latents" in batch else None
    if column is None or (column == "latents" and recon.cfg.vae is None):
        return None
    # collate_tokens turns Ray's nested object arrays into one tensor exactly, as training reads them.
    one = collate_tokens({"sample_key": batch["sample_key"][i:i + 1], column: batch[column][i:i + 1]},
                         columns=[column])[column]
    if column == "frames_lowres":
        return one[0].numpy()
    from vtok.models.decoder_video import decode_latents

    return decode_latents(recon.model.vae, one)[0].numpy()


def heldout_samples(run_uri: str, heldout: Any, settings: SampleSettings,
                    storage_options: dict[str, Any] | None = None) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """({"color": accuracy, "color_chance", "clips"}, frame strips) of the run's latest complete checkpoint."""
    from vtok.training.checkpoint import latest_complete

    n = max(settings.clips, settings.check_clips)
    latest = latest_complete(run_uri, storage_options)
    if n == 0 or latest is None:
        return {}, []
    recon = Reconstructor(latest.uri, storage_options, steps=settings.steps, guidance=settings.guidance,
                          seed=settings.seed)
    hits: list[bool] = []
    strips: list[dict[str, Any]] = []
    for batch in heldout.limit(n).iter_batches(batch_size=16, batch_format="numpy"):
        made = recon.frames_of(batch)
        for i, frames in enumerate(made):
            row = {k: v[i] for k, v in batch.items()}
            attributes = row.get("attributes")
            truth = true_colour(attributes)
            found = foreground_colour(frames, background_of(attributes)) if truth else None
            if truth and len(hits) < settings.check_clips:
                hits.append(found == truth)
            if len(strips) < settings.clips:
                gt = truth_frames(batch, i, recon)
                pick = even_pick(len(frames), settings.frames)
                strips.append({
                    "sample_key": str(row["sample_key"]), "caption": row.get("caption"),
                    "truth": [png_data_uri(gt[j]) for j in pick if gt is not None and j < len(gt)],
                    "reconstruction": [png_data_uri(np.ascontiguousarray(frames[j])) for j in pick],
                    "note": f"colour: true {truth}, reconstructed {found}" if truth else "",
                })
    out: dict[str, float] = {}
    if hits:
        out = {"color": float(np.mean(hits)), "chance": CHANCE, "clips": float(len(hits))}
        logger.info("held-out reconstructions of %s: foreground colour right in %d of %d clips (chance %.2f)",
                    latest.uri, sum(hits), len(hits), CHANCE)
    return out, strips
