"""`vtok generate`: text -> the MLLM's visual tokens -> the decoder -> mp4.

    prompt="..." out=FILE.mp4        one video
    prompts=FILE out=DIR             one video per non-empty line: DIR/prompt_00000.mp4 ..., DIR/index.jsonl
    tokens_out=FILE.parquet          the generated tokens too, in the token shard format (its columns that
                                     generation has: sample_key, caption, key_tokens, residual_features or
                                     frame_tokens), readable by pyarrow and vtok's collate like real shards

Both checkpoints are checked before any model loads: complete markers, and that the MLLM's tokens are what
the decoder's adapter reads (the same token mode, width D and key count S). Generation is autoregressive
per prompt, so it runs in this process (a GPU when there is one), each model loaded once.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.decode.decode import write_index
from pipelines.decode.mp4 import put_mp4
from pipelines.decode.reconstruct import clip_seed, decoder_checkpoint, load_decoder, pick_device
from vtok.errors import InputError
from vtok.models.decoder_config import DecoderConfig
from vtok.storage import get_fs, join, write_bytes_atomic

logger = logging.getLogger(__name__)


@dataclass
class GenerateConfig:
    """`vtok generate`: the two checkpoints, the prompt(s), the outputs and the sampling."""

    mllm: str = "???"
    """A complete MLLM checkpoint (RUN/checkpoints/step_*), or an MLLM run (its latest complete one)."""
    decoder: str = "???"
    """A complete decoder checkpoint, or a decoder run (its latest complete one)."""
    out: str = "???"
    """FILE.mp4 for `prompt`; a folder (local or s3://) for `prompts`."""
    prompt: str | None = None
    """One caption to turn into a video."""
    prompts: str | None = None
    """A text file (local or s3://) with one prompt per line; empty lines are skipped."""
    tokens_out: str | None = None
    """Also write the generated tokens here, as a Parquet file in the token shard format."""
    steps: int | None = None
    """Euler sampling steps; None: the decoder's sample_steps."""
    guidance: float | None = None
    """Classifier-free guidance scale; None: the decoder's guidance."""
    seed: int = 0
    """Seed of the sampling noise; each prompt's noise is fixed by it and the prompt's key."""
    fps: float = 8.0
    """Frame rate of the mp4s."""
    upscale: int = 1
    """Enlarge the frames this many times (nearest neighbour), for toy-scale decoders' tiny frames."""
    device: str = "auto"
    """"auto" (cuda when there is one), "cpu" or "cuda"."""
    storage_options: dict[str, Any] = field(default_factory=dict)
    """fsspec options for s3:// checkpoints, prompt files and outputs."""

    def __post_init__(self) -> None:
        if self.upscale < 1:
            raise ValueError(f"upscale must be >= 1, got {self.upscale}")
        if self.fps <= 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")


def read_prompts(cfg: GenerateConfig) -> list[str]:
    """The prompts to generate, refused unless exactly one of prompt / prompts is given and it holds one."""
    if (cfg.prompt is None) == (cfg.prompts is None):
        raise InputError("give either prompt=\"...\" (out=FILE.mp4) or prompts=FILE (out=DIR), not both or neither")
    if cfg.prompt is not None:
        if not cfg.prompt.strip():
            raise InputError("prompt is empty")
        if not cfg.out.endswith(".mp4"):
            raise InputError(f"out={cfg.out}: with prompt, out is the video file (FILE.mp4)")
        return [cfg.prompt.strip()]
    fs, path = get_fs(cfg.prompts, cfg.storage_options or None)
    if not fs.isfile(path):
        raise InputError(f"prompts={cfg.prompts}: no such file")
    with fs.open(path, "rb") as f:
        lines = [line.strip() for line in f.read().decode("utf-8", errors="replace").splitlines()]
    prompts = [line for line in lines if line]
    if not prompts:
        raise InputError(f"prompts={cfg.prompts}: the file holds no prompts (one per line)")
    return prompts


def prompt_key(index: int, prompt: str) -> str:
    """The sample key of a generated clip: a hash of its prompt and position, like a shard's keys."""
    return hashlib.sha256(f"generate\0{index}\0{prompt}".encode()).hexdigest()[:32]


def check_pair(mllm: dict[str, Any], decoder: DecoderConfig, mllm_uri: str, decoder_uri: str) -> None:
    """Refuse an MLLM whose generated tokens the decoder's adapter cannot read, naming both."""
    tokens = mllm.get("mllm", {}).get("tokens", "vtok")
    if tokens != decoder.tokens:
        raise InputError(f"mllm={mllm_uri} generates {tokens} tokens, decoder={decoder_uri} reads {decoder.tokens} "
                         f"tokens (model.tokens)")
    if decoder.tokens == "vtok" and decoder.residual != "features":
        raise InputError(f"decoder={decoder_uri} reads residual_tokens (model.residual=tokens); the MLLM generates "
                         f"residual features")
    if decoder.token_dim is not None and int(mllm.get("feature_dim", -1)) != decoder.token_dim:
        raise InputError(f"mllm={mllm_uri} generates tokens D={mllm.get('feature_dim')} wide, decoder={decoder_uri}'s "
                         f"adapter reads D={decoder.token_dim}")
    if decoder.num_key is not None and int(mllm.get("num_key", -1)) != decoder.num_key:
        raise InputError(f"mllm={mllm_uri} generates S={mllm.get('num_key')} key tokens, decoder={decoder_uri}'s "
                         f"adapter reads S={decoder.num_key}")
    mllm_grid = int(mllm.get("residual_grid", 1))  # config.json records a residual grid only when r > 1
    if decoder.tokens == "vtok" and mllm_grid != (decoder.residual_grid or 1):
        raise InputError(f"mllm={mllm_uri} generates residuals on a {mllm_grid}x{mllm_grid} grid "
                         f"(tokenizer.residual_grid={mllm_grid}), decoder={decoder_uri} reads "
                         f"model.residual_grid={decoder.residual_grid or 1}")


class TextToVideo:
    """The MLLM and the decoder of two checkpoints, each loaded once; prompt -> (tokens, frames)."""

    def __init__(self, mllm_dir: Path, decoder_dir: Path, device: str = "auto",
                 storage_options: dict[str, Any] | None = None) -> None:
        from vtok.models.mllm import VTokLM

        self.device = pick_device(device)
        self.mllm = VTokLM.from_pretrained(mllm_dir).to(self.device).eval()
        self.decoder = load_decoder(decoder_dir, self.device, storage_options)

    def __call__(self, prompt: str, key: str, steps: int | None, guidance: float | None,
                 seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """({column: tokens in the shard format}, uint8 frames [T, H, W, 3]) for one prompt."""
        import torch

        from vtok.training.batching import collate_tokens

        with torch.inference_mode():
            made = self.mllm.generate_tokens(prompt)
            if isinstance(made, tuple):
                tokens = {"key_tokens": made[0], "residual_features": made[1]}
            else:
                tokens = {"key_tokens": made[0], "frame_tokens": made}
            batch = collate_tokens([{"sample_key": key, **tokens}], columns=list(tokens))
            gen = torch.Generator(self.device).manual_seed(clip_seed(seed, key))
            frames = self.decoder.sample(batch, steps=steps, guidance=guidance, generator=gen)[0].numpy()
        return tokens, frames


def write_tokens(uri: str, rows: list[dict[str, Any]], storage_options: dict[str, Any] | None) -> None:
    """The generated tokens as one Parquet file with the token shard schema's types for the columns it has."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from schemas.token_shard import TENSOR_NDIM, tensors_to_arrow, token_schema

    fields = {f.name: f for f in token_schema(["frame_tokens"])}
    names = [n for n in ("sample_key", "caption", "key_tokens", "residual_features", "frame_tokens") if n in rows[0]]
    arrays = [tensors_to_arrow([r[n] for r in rows], TENSOR_NDIM[n]) if n in TENSOR_NDIM
              else pa.array([r[n] for r in rows], fields[n].type) for n in names]
    table = pa.Table.from_arrays(arrays, schema=pa.schema([fields[n] for n in names]))
    buf = io.BytesIO()
    pq.write_table(table, buf)
    write_bytes_atomic(uri, buf.getvalue(), storage_options)


def run_generate(cfg: GenerateConfig) -> dict[str, Any]:
    """Generate every prompt's video (and tokens); returns {"videos": [paths], "tokens_out", "index"}."""
    from vtok.training.checkpoint_ref import local_checkpoint

    opts = cfg.storage_options or None
    prompts = read_prompts(cfg)
    mllm_dir = local_checkpoint(cfg.mllm, "mllm", opts)
    _, decoder_dir, decoder = decoder_checkpoint(cfg.decoder, opts)
    try:
        mllm_record = json.loads((mllm_dir / "config.json").read_text())
    except (OSError, ValueError):
        raise InputError(f"mllm={cfg.mllm}: not an MLLM checkpoint (no readable config.json)") from None
    if "mllm" not in mllm_record:
        raise InputError(f"mllm={cfg.mllm}: not an MLLM checkpoint (its config.json has no 'mllm' section)")
    check_pair(mllm_record, decoder, cfg.mllm, cfg.decoder)
    model = TextToVideo(mllm_dir, decoder_dir, cfg.device, opts)
    single = cfg.prompt is not None
    rows, index = [], []
    for i, prompt in enumerate(prompts):
        key = prompt_key(i, prompt)
        tokens, frames = model(prompt, key, cfg.steps, cfg.guidance, cfg.seed)
        path = cfg.out if single else join(cfg.out, f"prompt_{i:05d}.mp4")
        t, h, w = put_mp4(frames, path, cfg.fps, opts, cfg.upscale)
        rows.append({"sample_key": key, "caption": prompt, **tokens})
        index.append({"sample_key": key, "caption": prompt, "path": path, "frames": t, "height": h, "width": w})
        logger.info("generated %s (%d frames, %dx%d) for %r", path, t, w, h, prompt[:60])
    if cfg.tokens_out:
        write_tokens(cfg.tokens_out, rows, opts)
    return {"videos": [r["path"] for r in index], "tokens_out": cfg.tokens_out,
            "index": None if single else write_index(cfg.out, index, opts), "rows": index}
