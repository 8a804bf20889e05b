"""What a tokenizer is, without loading it: its config, sizes, description and fingerprint.

The pipeline's driver needs the encoder's input size, the description stored in every shard and the
fingerprint a dataset is bound to, but never runs the model. Reading them here from the saved files
(config.json, the weight files' bytes, a g_phi header) keeps torch and transformers out of the driver:
importing them and loading the model cost ~3.8 s of every job's start-up on a 2-core machine, all
before the first clip could be decoded. `VTokTokenizer` uses the same functions, so a loaded tokenizer
and a driver agree on the fingerprint by construction.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.tokens import RESIDUAL_GRID_KEY
from vtok.storage import is_local, localize_dir, strip_file_scheme
from vtok.vision_models import CLIP_MEAN, CLIP_STD, SIGLIP_MEAN, SIGLIP_STD, ensure_tiny_clip

# Multimodal checkpoints whose vision tower's config sits under "vision_config".
_TOWER_TYPES = {"clip": "clip_vision_model", "siglip": "siglip_vision_model"}
# Keys of a saved config that record how it was saved, not what it computes.
_VOLATILE_CONFIG_KEYS = {"transformers_version", "_name_or_path", "torch_dtype", "dtype", "architectures"}
_WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5"}


@dataclass
class TokenizerConfig:
    """How clips become VTok tokens."""

    encoder: str | None = None
    """HF vision model directory (local or s3://); None uses the built-in tiny CLIP."""
    grid: int = 4
    """Side g of the pooled key-frame grid: S = g * g key tokens."""
    residual_stride: int = 1
    """One residual step per this many sampled frames after the key frame."""
    residual_grid: int = 1
    """Side r of each residual step's pooled grid: r*r residual tokens per step (1 = one pooled residual)."""
    feature_layer: int = -1
    """Hidden layer whose patch tokens are used (-1 = last; CLIP MLLMs often use -2)."""
    g_phi: str | None = None
    """safetensors file of a trained g_phi (fc1/fc2); when given, residual_tokens are emitted."""
    frame_tokens: bool = True
    """Also emit the frame-sampling baseline tokens [T, S, D]."""
    device: str = "auto"
    """"auto" (cuda when present), "cpu" or "cuda[:N]"."""
    dtype: str = "auto"
    """"auto" (bf16 on GPU, fp32 on CPU), "float32" or "bfloat16"."""
    micro_batch: int = 32
    """Frames per forward pass; every pass is padded to this size so tokens never depend on batching."""
    storage_options: dict[str, Any] = field(default_factory=dict)
    """fsspec options for remote encoder / g_phi URIs."""

    def __post_init__(self) -> None:
        if self.grid < 1:
            raise ValueError(f"tokenizer.grid must be >= 1, got {self.grid}")
        if self.residual_stride < 1:
            raise ValueError(f"tokenizer.residual_stride must be >= 1, got {self.residual_stride}")
        if self.residual_grid < 1:
            raise ValueError(f"tokenizer.residual_grid must be >= 1, got {self.residual_grid}")
        if self.micro_batch < 1:
            raise ValueError(f"tokenizer.micro_batch must be >= 1, got {self.micro_batch}")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"tokenizer.dtype must be auto, float32 or bfloat16, got {self.dtype!r}")
        if not (self.device in ("auto", "cpu") or self.device.startswith("cuda")):
            raise ValueError(f"tokenizer.device must be auto, cpu or cuda[:N], got {self.device!r}")


@dataclass(frozen=True)
class EncoderSpec:
    """A saved vision tower as its files describe it."""

    path: Path
    model_type: str
    """The tower's model type (a multimodal checkpoint's vision_config type)."""
    model_config: dict[str, Any]
    """The tower's config as saved, minus the keys that only record how it was saved."""
    image_size: int
    patch_size: int
    hidden_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    weight_files: tuple[Path, ...]


def read_encoder_spec(path: Path) -> EncoderSpec:
    """Sizes, normalisation and weight files of the model directory `path` (local)."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path}: no config.json, not a Hugging Face model directory")
    saved = json.loads(config_file.read_text())
    model_type = saved.get("model_type", "")
    tower = saved
    if model_type in _TOWER_TYPES:
        tower = saved.get("vision_config", {})
        model_type = tower.get("model_type", _TOWER_TYPES[model_type])
    sizes = ("image_size", "patch_size", "hidden_size")
    if any(k not in tower for k in sizes):
        # save_pretrained leaves out values equal to the class defaults: ask transformers for them.
        tower = _config_with_defaults(path)
        model_type = tower["model_type"]
    weights = tuple(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES))
    if not weights:
        raise FileNotFoundError(f"{path}: no weight files ({', '.join(sorted(_WEIGHT_SUFFIXES))})")
    mean, std = _normalisation(path, model_type)
    return EncoderSpec(
        path=path,
        model_type=model_type,
        model_config={k: v for k, v in tower.items() if k not in _VOLATILE_CONFIG_KEYS},
        image_size=int(tower["image_size"]),
        patch_size=int(tower["patch_size"]),
        hidden_size=int(tower["hidden_size"]),
        mean=mean,
        std=std,
        weight_files=weights,
    )


def _config_with_defaults(path: Path) -> dict[str, Any]:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    return getattr(config, "vision_config", config).to_dict()


def _normalisation(path: Path, model_type: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    pre = path / "preprocessor_config.json"
    if pre.is_file():
        cfg = json.loads(pre.read_text())
        if "image_mean" in cfg and "image_std" in cfg:
            return tuple(float(v) for v in cfg["image_mean"]), tuple(float(v) for v in cfg["image_std"])
    if model_type.startswith("siglip"):
        return SIGLIP_MEAN, SIGLIP_STD
    return CLIP_MEAN, CLIP_STD


def localize_file(uri: str, storage_options: dict[str, Any]) -> Path:
    """A local path for a file URI (remote files are downloaded with their folder, once)."""
    if is_local(uri):
        return Path(strip_file_scheme(uri))
    return localize_dir(uri.rsplit("/", 1)[0], storage_options) / uri.rsplit("/", 1)[1]


def g_phi_shape(path: Path) -> list[int]:
    """[D', hidden] of a g_phi file's output layer, from the safetensors header (no tensors loaded)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        names = list(f.keys())
        if "fc2.weight" not in names:
            raise ValueError(f"{path}: g_phi needs tensors fc1/fc2 .weight/.bias, found {sorted(names)}")
        return list(f.get_slice("fc2.weight").get_shape())


@dataclass(frozen=True)
class TokenizerSpec:
    """Everything about a tokenizer except its running model: what the driver and the shards need."""

    cfg: TokenizerConfig
    encoder: EncoderSpec
    compute_dtype: str
    g_phi_file: Path | None

    @classmethod
    def load(cls, cfg: TokenizerConfig, compute_dtype: str) -> TokenizerSpec:
        """Localize the encoder (and g_phi) named by `cfg` and read their specs; `compute_dtype` as run."""
        assert compute_dtype in ("float32", "bfloat16"), f"compute dtype must be resolved, got {compute_dtype!r}"
        encoder = read_encoder_spec(localize_dir(cfg.encoder or str(ensure_tiny_clip()), cfg.storage_options))
        grid_side = encoder.image_size // encoder.patch_size
        if cfg.grid > grid_side:
            raise ValueError(f"tokenizer.grid {cfg.grid} exceeds the encoder's {grid_side}x{grid_side} patches")
        if cfg.residual_grid > grid_side:
            raise ValueError(f"tokenizer.residual_grid {cfg.residual_grid} exceeds the encoder's "
                             f"{grid_side}x{grid_side} patches: each of the r x r cells needs a patch")
        g_phi_file = localize_file(cfg.g_phi, cfg.storage_options) if cfg.g_phi else None
        return cls(cfg=cfg, encoder=encoder, compute_dtype=compute_dtype, g_phi_file=g_phi_file)

    @property
    def image_size(self) -> int:
        return self.encoder.image_size

    @property
    def num_key_tokens(self) -> int:
        return self.cfg.grid * self.cfg.grid

    def describe(self) -> dict[str, Any]:
        """The config that determines the tokens, as stored in every shard's metadata.

        residual_grid appears only when it is not 1, so datasets made before it existed keep their fingerprint.
        """
        e = self.encoder
        described = {
            "model_type": e.model_type,
            "model_config": e.model_config,
            "image_size": e.image_size,
            "patch_size": e.patch_size,
            "hidden_size": e.hidden_size,
            "grid": self.cfg.grid,
            "residual_stride": self.cfg.residual_stride,
            "feature_layer": self.cfg.feature_layer,
            "frame_tokens": self.cfg.frame_tokens,
            "compute_dtype": self.compute_dtype,
            "mean": list(e.mean),
            "std": list(e.std),
            "g_phi": None if self.g_phi_file is None else g_phi_shape(self.g_phi_file),
        }
        if self.cfg.residual_grid != 1:
            described[RESIDUAL_GRID_KEY] = self.cfg.residual_grid
        return described

    def fingerprint(self) -> str:
        """sha256 of describe() and of the bytes of every weight file (encoder, then g_phi).

        File bytes, not loaded tensors: the same digest without loading the model, and a re-saved
        model counts as another tokenizer (it refuses to resume a dataset rather than risk mixing).
        """
        h = hashlib.sha256(json.dumps(self.describe(), sort_keys=True, default=str).encode())
        files = [("encoder", f.relative_to(self.encoder.path).as_posix(), f) for f in self.encoder.weight_files]
        if self.g_phi_file is not None:
            files.append(("g_phi", self.g_phi_file.name, self.g_phi_file))
        for role, name, path in files:
            h.update(f"\n{role}/{name}:{_file_sha256(path)}".encode())
        return h.hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()
