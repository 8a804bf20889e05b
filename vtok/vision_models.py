"""Vision towers: the model families' pixel normalisation, and the tiny seeded towers the tests and demo use.

The tiny towers are real CLIPVisionModel / SiglipVisionModel classes with small configs, saved with
save_pretrained and loaded back the way any HF directory is, so no hub is needed. torch and transformers
load only inside the functions that build a model.
"""

from __future__ import annotations

import json
from pathlib import Path

from vtok.storage import build_once, cache_root

# The normalisation each family was trained with; used when a model directory has no preprocessor_config.json.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

TINY_CLIP_NAME = "tiny-clip-v1"
"""Cache folder of the default encoder; a new name when its config or seed changes."""


def save_tiny_vision_model(path: Path, kind: str = "clip", seed: int = 0, image_size: int = 64) -> Path:
    """Build a tiny CLIP or SigLIP vision tower with seeded weights and save it the HF way."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

    dims = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    torch.manual_seed(seed)
    if kind == "clip":
        model = CLIPVisionModel(CLIPVisionConfig(image_size=image_size, patch_size=8, **dims))
        mean, std = CLIP_MEAN, CLIP_STD
    elif kind == "siglip":
        model = SiglipVisionModel(SiglipVisionConfig(image_size=image_size, patch_size=8, **dims))
        mean, std = SIGLIP_MEAN, SIGLIP_STD
    else:
        raise ValueError(f"unknown tiny model kind {kind!r}: use clip or siglip")
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    (path / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": list(mean), "image_std": list(std), "size": image_size}, indent=2)
    )
    return path


def ensure_tiny_clip() -> Path:
    """The default encoder: a tiny seeded CLIP saved once into the cache and loaded from there."""
    target = cache_root() / "models" / TINY_CLIP_NAME
    if (target / "config.json").is_file():
        return target
    return build_once(target, lambda staging: save_tiny_vision_model(staging, "clip", seed=0))
