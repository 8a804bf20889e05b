"""`vtok train decoder`: the token -> video decoder (a diffusers WanTransformer3DModel) on token shards, with Ray Train.

The same plumbing as `vtok train mllm` (pipelines.train.data, .run, .loop): the driver checks the data and
the model directories (pipelines.train.decoder_checks), sets what the data decides (token width and count,
the target's frames and size), binds the run to its settings, and hands the shared loop a `DecoderTask`.

    RUN/run.json                what the run is made of (a resume must match it)
    RUN/checkpoints/step_*/     trainable.safetensors (adapter, + LoRA), decoder/ (the transformer, a diffusers
                                directory), config.json, data.json, optimizer and state (complete marker last):
                                VTokDecoder.from_pretrained(the folder) loads it in one call
    RUN/metrics.jsonl, RUN/report.json, RUN/report.html (loss curve, held-out frames beside reconstructions)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.train.data import (
    TrainJobConfig,
    bind_job,
    check_heldout,
    check_manifest,
    check_tracking,
    config_record,
    data_record,
    dense_tensors,
    fit_job,
    materialize_if_small,
    split_rows,
)
from pipelines.train.decoder_checks import resolve_decoder, target_column, token_columns
from schemas.checkpoint import CONFIG, DATA, DECODER_DIR, TRAINABLE
from vtok.models.decoder_config import DecoderConfig
from vtok.storage import localize_dir

logger = logging.getLogger(__name__)


@dataclass
class SampleSettings:
    """Held-out reconstructions after training: the report's frame strip and its colour check."""

    clips: int = 4
    """Held-out clips the report shows, ground truth beside reconstruction (sampled from their tokens); 0: none."""
    check_clips: int = 32
    """Held-out clips whose reconstruction's foreground colour is checked against their `attributes`
    (single-object shapes-world clips; others are skipped); 0: no check."""
    frames: int = 8
    """Frames of each clip the strip shows (evenly spaced)."""
    steps: int | None = None
    """Euler sampling steps; None: model.sample_steps."""
    guidance: float | None = None
    """Classifier-free guidance scale; None: model.guidance."""
    seed: int = 0
    """Seed of the sampling noise (each clip's noise is fixed by this and its sample key)."""

    def __post_init__(self) -> None:
        for name in ("clips", "check_clips"):
            if getattr(self, name) < 0:
                raise ValueError(f"samples.{name} must be >= 0, got {getattr(self, name)}")
        if self.frames < 1:
            raise ValueError(f"samples.frames must be >= 1, got {self.frames}")


@dataclass
class TrainDecoderConfig(TrainJobConfig):
    """The decoder training job, minus where Ray runs (jobs/ adds that); the keys every training job has:
    pipelines.train.data.TrainJobConfig."""

    model: DecoderConfig = field(default_factory=DecoderConfig)
    """The decoder (model.space, model.transformer, model.transformer_mode, model.tokens, ...). The job sets
    model.token_dim, num_key, num_frames, height and width from the data (a token_dim or num_key given that
    disagrees with the data is refused)."""
    samples: SampleSettings = field(default_factory=SampleSettings)
    """Held-out reconstructions for the report."""


@dataclass
class DecoderTask:
    """The decoder as the shared loop sees it (built on each worker; model directories localized there)."""

    model: DecoderConfig
    data_record: dict[str, Any]
    config_record: dict[str, Any]
    storage_options: dict[str, Any] | None = None
    input_stats: dict[str, list[list[float]]] | None = None
    """{"key": [mean, std], "residual": [mean, std]} per dimension: the adapter's initial input standardization."""
    _scratch: Path | None = None

    @property
    def columns(self) -> list[str]:
        return [*token_columns(self.model), target_column(self.model)]

    def build(self, device: Any) -> Any:
        import torch

        from vtok.models.decoder import VTokDecoder

        # A remote transformer directory is downloaded once per node into the cache; a local one is used in place.
        local = localize_dir(self.model.transformer, self.storage_options) if self.model.transformer else None
        model = VTokDecoder(self.model, transformer_dir=local)
        if self.input_stats:
            pairs = {k: (torch.tensor(v[0]), torch.tensor(v[1])) for k, v in self.input_stats.items()}
            model.adapter.set_input_stats(pairs["key"], pairs.get("residual"))
        return model.to(device)

    def collate(self, batch: dict[str, Any], epoch: int) -> Any:
        from vtok.training.batching import collate_tokens

        return collate_tokens(batch, columns=self.columns)

    def loss(self, model: Any, inputs: Any) -> dict[str, Any]:
        # model(inputs), not model.loss(...): DDP's forward hooks must run. Noise, sigmas and condition dropout
        # come from the global RNG, which the loop seeds and checkpoints.
        out = model(inputs)
        return {"loss": out["loss"], "sigma_mean": out["sigma_mean"], "dropped": out["dropped"],
                "tokens": int(out["tokens"])}

    def checkpoint_payload(self, model: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
        """What VTokDecoder.save_pretrained writes, so VTokDecoder.from_pretrained(checkpoint folder) loads it."""
        # One scratch folder per worker, emptied before each save: a large transformer is never held twice.
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
        self._scratch = Path(tempfile.mkdtemp(prefix="vtok-decoder-ckpt-"))
        model.save_pretrained(self._scratch)
        config = json.loads((self._scratch / CONFIG).read_text())
        return ({}, {CONFIG: {**config, "job": self.config_record}, DATA: self.data_record},
                {DECODER_DIR: self._scratch / DECODER_DIR}, {TRAINABLE: self._scratch / TRAINABLE})

    def restore(self, model: Any, loaded: Any) -> None:
        full = self.model.transformer_mode == "full"
        model.load_trainable_state_dict(loaded.tensors[TRAINABLE], skip_transformer=full)
        if full:
            # A full-mode checkpoint keeps the trained transformer in decoder/ (diffusers, possibly sharded).
            from safetensors.torch import load_file

            state: dict[str, Any] = {}
            for path in sorted(Path(loaded.dirs[DECODER_DIR]).glob("*.safetensors")):
                state |= load_file(str(path))
            model.transformer.load_state_dict(state, strict=True)


def _residual_width(cfg: DecoderConfig, train_ds: Any) -> int | None:
    """The width of residual_tokens (a trained g_phi's output), read from one row; None for other modes."""
    if cfg.tokens != "vtok" or cfg.residual != "tokens":
        return None
    for row in train_ds.limit(8).iter_rows():
        if len(row[cfg.residual_column]):
            return len(row[cfg.residual_column][0])
    return None


def input_stats(cfg: DecoderConfig, train_ds: Any, clips: int) -> dict[str, list[list[float]]]:
    """Per-dimension mean and std of what the adapter reads, over the first `clips` training clips."""
    from vtok.models.feature_stats import FeatureStats
    from vtok.training.batching import collate_tokens

    key = "key_tokens" if cfg.tokens == "vtok" else "frame_tokens"
    columns = [key, *(["residual_features"] if cfg.tokens == "vtok" and cfg.residual == "features" else [])]
    columns = list(dict.fromkeys(["key_tokens", *columns]))  # FeatureStats needs key_tokens in every mode
    stats = FeatureStats()
    for batch in train_ds.limit(clips).select_columns(["sample_key", *columns]).iter_batches(
            batch_size=64, batch_format="numpy"):
        stats.update(collate_tokens(batch, columns=columns))
    stats.finish()
    out = {"key": [stats.mean[key].tolist(), stats.std[key].tolist()]}
    if "residual_features" in columns and stats.count.get("residual_features"):
        out["residual"] = [stats.mean["residual_features"].tolist(), stats.std["residual_features"].tolist()]
    return out


def prepare_run(cfg: TrainDecoderConfig) -> tuple[DecoderConfig, dict[str, Any], Any, Any]:
    """(resolved decoder config, manifest, train split, held-out split), after every check of the data."""
    opts = cfg.storage_options or None
    manifest = check_manifest(cfg.data, opts)
    # The target and the directories are checked before the dataset is opened: their errors come first.
    resolve_decoder(cfg.model, manifest, cfg.data, opts)
    check_tracking(cfg)
    columns = ["sample_key", "caption", "attributes", "frame_indices", *token_columns(cfg.model),
               target_column(cfg.model)]

    # Tensor columns, not nested lists, so batches reach the collate as ndarrays (see dense_tensors).
    train_ds, held_ds = split_rows(cfg.data, columns, cfg.split, opts, dense_tensors, cfg.materialize_bytes)
    model = resolve_decoder(cfg.model, manifest, cfg.data, opts, _residual_width(cfg.model, train_ds))
    check_heldout(held_ds, cfg)
    return model, manifest, train_ds, held_ds


def run_train_decoder(cfg: TrainDecoderConfig, progress: bool = True) -> dict[str, Any]:
    """Check, bind, train; returns what the run did (for the console and the report)."""
    opts = cfg.storage_options or None
    model, manifest, train_ds, held_ds = prepare_run(cfg)
    resumed = bind_job(cfg, "decoder", model, manifest)
    record = config_record(dataclasses.replace(cfg, model=model))
    train_ds = materialize_if_small(train_ds.select_columns(["sample_key", *token_columns(model),
                                                             target_column(model)]), manifest, cfg.materialize_bytes)
    task = DecoderTask(model, data_record(cfg, manifest), record, opts,
                       input_stats(model, train_ds, cfg.stats_clips) if cfg.stats_clips else None)
    logger.info("%s run %s: %s tokens -> %s (%s, transformer %s)", "resuming" if resumed else "starting", cfg.output,
                model.tokens, model.space, model.transformer or "new", model.transformer_mode)
    fit_job("decoder", task, cfg, train_ds, progress=progress)
    return {"resumed": resumed, "heldout": held_ds, "model": model}
