"""The decoder's checks against its data and its model directories, before any work starts.

Each refuses with one line naming the key or URI to fix (an InputError, exit code 2):

- the shards carry the target the decoder trains on (frames_lowres for model.space=pixels, latents for
  model.space=latents), naming the tokenize key that writes it;
- model.transformer / model.vae are diffusers directories of the right class (config.json only);
- the token widths and counts of the data match the adapter (model.token_dim, model.num_key,
  model.residual_dim, model.residual_grid), whether given by the user or recorded in a decoder checkpoint;
- the frame-sampling baseline has frame_tokens.

`resolve_decoder` also fills in what the data decides (token width and count, the residual grid, the target's
frames and size).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from pipelines.train.data import check_frame_sampling, frame_counts
from schemas.tokens import residual_grid_of
from vtok.errors import InputError
from vtok.models.decoder_config import DecoderConfig
from vtok.storage import localize_dir

TARGET_KEYS = {"frames_lowres": "targets.lowres_side=N", "latents": "targets.vae=DIR"}
"""The tokenize setting that writes each decoder target."""


def target_column(cfg: DecoderConfig) -> str:
    """The shards' column the decoder learns to produce."""
    return "frames_lowres" if cfg.space == "pixels" else "latents"


def token_columns(cfg: DecoderConfig) -> list[str]:
    """The token columns the decoder's adapter reads."""
    return ["key_tokens", cfg.residual_column if cfg.tokens == "vtok" else "frame_tokens"]


def data_widths(manifest: dict[str, Any]) -> tuple[int, int]:
    """(D, S) of a token dataset: the encoder width and the key tokens per clip."""
    tokenizer = manifest.get("tokenizer", {})
    return int(tokenizer.get("hidden_size") or 0), int(tokenizer.get("grid") or 0) ** 2


def check_tokens(cfg: DecoderConfig, manifest: dict[str, Any], data: str, where: str = "model",
                 residual_width: int | None = None) -> None:
    """Refuse a decoder whose adapter cannot read the dataset's tokens (`where`: the key or URI that set it)."""
    d, s = data_widths(manifest)
    prefix = "model." if where == "model" else f"{where}: its "
    if cfg.token_dim is not None and cfg.token_dim != d:
        raise InputError(f"{prefix}token_dim={cfg.token_dim}, but the tokens of {data} are D={d} wide: the adapter "
                         f"cannot read them")
    if cfg.num_key is not None and cfg.num_key != s:
        raise InputError(f"{prefix}num_key={cfg.num_key}, but {data} has S={s} key tokens per clip")
    r = residual_grid_of(manifest.get("tokenizer"))
    # Unset in a job's config the data decides; a trained decoder (a checkpoint's config) without it reads r = 1.
    grid = cfg.residual_grid if cfg.residual_grid is not None or where == "model" else 1
    if cfg.tokens == "vtok" and grid is not None and grid != r:
        raise InputError(f"{prefix}residual_grid={grid}, but {data} was tokenized with "
                         f"tokenizer.residual_grid={r} ({r * r} residual tokens per step)")
    check_frame_sampling(manifest, data, cfg.tokens, cfg.frames)
    if cfg.tokens == "vtok" and cfg.residual == "tokens" and not manifest.get("tokenizer", {}).get("g_phi"):
        raise InputError(f"data={data}: model.residual=tokens needs residual_tokens in the shards; tokenize with "
                         f"tokenizer.g_phi=FILE, or use model.residual=features")
    width = cfg.residual_dim or cfg.token_dim
    if residual_width is not None and width is not None and residual_width != width:
        raise InputError(f"{prefix}residual_dim={width}, but the {cfg.residual_column} of {data} are "
                         f"{residual_width} wide")


def check_target(cfg: DecoderConfig, manifest: dict[str, Any], data: str) -> list[int]:
    """The per-clip shape of the decoder's target in `data`, refused when the shards do not carry it."""
    column = target_column(cfg)
    shape = (manifest.get("targets") or {}).get(column)
    if not shape:
        raise InputError(f"data={data}: model.space={cfg.space} trains on {column}, which the shards do not have; "
                         f"tokenize with {TARGET_KEYS[column]}")
    return [int(n) for n in shape]


def diffusers_config(uri: str, expected: str, key: str, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """config.json of the diffusers directory `uri` (local or remote), refused unless of class `expected`."""
    from vtok.models.decoder_video import check_class

    try:
        path = localize_dir(uri, storage_options)
    except FileNotFoundError:
        raise InputError(f"{key}={uri}: no such directory") from None
    try:
        return check_class(path, expected, key)
    except ValueError as err:
        raise InputError(str(err)) from None


def _check_grid(size: tuple[int, int, int], patch: list[int], rope: int, what: str) -> None:
    if any(n % p for n, p in zip(size, patch)):
        raise InputError(f"{what}: [F, H, W]={list(size)} is not divisible by the transformer's patch_size="
                         f"{list(patch)}; choose model.dit.patch_size (or targets) to fit")
    if max(n // p for n, p in zip(size, patch)) > rope:
        raise InputError(f"{what}: [F, H, W]={list(size)} patched exceeds the transformer's rope_max_seq_len={rope}")


def resolve_decoder(cfg: DecoderConfig, manifest: dict[str, Any], data: str,
                    storage_options: dict[str, Any] | None = None, residual_width: int | None = None) -> DecoderConfig:
    """The decoder config the job trains: checked against the data and directories, sizes set from the data."""
    from vtok.models.decoder_video import TRANSFORMER_CLASS, VAE_CLASS

    # The directories first: a wrong one is named whatever else is wrong with the data.
    vae = diffusers_config(cfg.vae, VAE_CLASS, "model.vae", storage_options) if cfg.vae else None
    tc = diffusers_config(cfg.transformer, TRANSFORMER_CLASS, "model.transformer", storage_options) \
        if cfg.transformer else None
    check_tokens(cfg, manifest, data, residual_width=residual_width)
    shape = check_target(cfg, manifest, data)
    counts = frame_counts(manifest)
    if cfg.space == "pixels":
        size = (max(counts) if counts else cfg.num_frames, shape[0], shape[1])
        channels = 3
    else:
        channels, size = shape[0], (shape[1], shape[2], shape[3])
    if vae is not None and int(vae.get("z_dim", 16)) != channels and cfg.space == "latents":
        raise InputError(f"model.vae={cfg.vae}: z_dim={vae.get('z_dim')}, the latents of {data} have C={channels}")
    if tc is not None:
        if int(tc.get("in_channels", 0)) != channels:
            raise InputError(f"model.transformer={cfg.transformer}: {tc.get('in_channels')} input channels, "
                             f"model.space={cfg.space} on {data} needs {channels}")
        patch, rope = [int(p) for p in tc.get("patch_size", (1, 2, 2))], int(tc.get("rope_max_seq_len", 1024))
    else:
        patch, rope = list(cfg.dit.patch_size), cfg.dit.rope_max_seq_len
    if cfg.space == "latents" and cfg.transformer is None and cfg.dit.channels is None and cfg.vae is None:
        cfg = dataclasses.replace(cfg, dit=dataclasses.replace(cfg.dit, channels=channels))
    for frames in counts if cfg.space == "pixels" else [size[0]]:
        _check_grid((frames, size[1], size[2]), patch, rope, f"{target_column(cfg)} of {data}")
    d, s = data_widths(manifest)
    r = residual_grid_of(manifest.get("tokenizer"))
    steps = (max(counts) - 1) if counts else 0
    if steps > cfg.max_time_steps:
        raise InputError(f"the clips of {data} have up to {steps + 1} frames, more than model.max_time_steps="
                         f"{cfg.max_time_steps} embeds; raise it")
    # residual_grid stays None at r = 1, so a run bound before it existed resumes with the same model config.
    return dataclasses.replace(cfg, token_dim=d, num_key=s, residual_dim=residual_width if residual_width != d else None,
                               residual_grid=r if r != 1 and cfg.tokens == "vtok" else None,
                               num_frames=size[0], height=size[1], width=size[2])


def saved_decoder_config(folder: Path, key: str) -> DecoderConfig:
    """The DecoderConfig a decoder checkpoint (or save_pretrained folder) records, without loading any weights."""
    config = folder / "config.json"
    try:
        record = json.loads(config.read_text())
        return DecoderConfig(**record["decoder"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"{key}={folder}: not a decoder checkpoint ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''})") from None
