"""`vtok train mllm` and `vtok train decoder`: load the config, connect to Ray, train, write the report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jobs.config import default_config_path, load_config
from jobs.ray_setup import RayConfig, start_ray
from jobs.terminal import filtered_stderr
from pipelines.train.decoder import TrainDecoderConfig, run_train_decoder
from pipelines.train.mllm import TrainMLLMConfig, run_train_mllm


@dataclass
class TrainMLLMJobConfig(TrainMLLMConfig):
    """The MLLM training job: the training config plus where to run it."""

    ray: RayConfig = field(default_factory=RayConfig)
    """Ray connection."""


@dataclass
class TrainDecoderJobConfig(TrainDecoderConfig):
    """The decoder training job: the training config plus where to run it."""

    ray: RayConfig = field(default_factory=RayConfig)
    """Ray connection."""


def load_train_mllm_config(overrides: list[str], config_file: str | None = None) -> TrainMLLMJobConfig:
    return load_config(TrainMLLMJobConfig, config_file or default_config_path("train_mllm"), overrides)


def load_train_decoder_config(overrides: list[str], config_file: str | None = None) -> TrainDecoderJobConfig:
    return load_config(TrainDecoderJobConfig, config_file or default_config_path("train_decoder"), overrides)


def run_mllm(cfg: TrainMLLMJobConfig, progress: bool = True) -> dict[str, Any]:
    """Train (or resume), then measure held-out accuracy per category and write RUN/report.*."""
    from pipelines.train.evaluate_quick import heldout_accuracy
    from pipelines.train.report import write_train_report

    with filtered_stderr():
        start_ray(cfg.ray)
        result = run_train_mllm(cfg, progress=progress)
    accuracy = heldout_accuracy(cfg.output, result["heldout"], cfg.storage_options or None)
    html = write_train_report(cfg.output, cfg, cfg.storage_options or None, extra={"heldout": accuracy})
    return {**result, "heldout_accuracy": accuracy, "report": html}


def run_decoder(cfg: TrainDecoderJobConfig, progress: bool = True) -> dict[str, Any]:
    """Train (or resume), then reconstruct held-out clips (the report's frame strip and colour check) and
    write RUN/report.*."""
    from pipelines.train.decoder_samples import heldout_samples
    from pipelines.train.report import write_train_report

    with filtered_stderr():
        start_ray(cfg.ray)
        result = run_train_decoder(cfg, progress=progress)
        heldout, strips = heldout_samples(cfg.output, result["heldout"], cfg.samples, cfg.storage_options or None)
    html = write_train_report(cfg.output, cfg, cfg.storage_options or None,
                              extra={"heldout": heldout, "samples": strips})
    return {**result, "heldout_reconstruction": heldout, "report": html}
