"""`vtok train mllm`: load the config, connect to Ray, train, write the report, print the summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jobs.config import default_config_path, load_config
from jobs.ray_setup import RayConfig, start_ray
from jobs.terminal import filtered_stderr
from pipelines.train.mllm import TrainMLLMConfig, run_train_mllm


@dataclass
class TrainMLLMJobConfig(TrainMLLMConfig):
    """The MLLM training job: the training config plus where to run it."""

    ray: RayConfig = field(default_factory=RayConfig)
    """Ray connection."""


def load_train_mllm_config(overrides: list[str], config_file: str | None = None) -> TrainMLLMJobConfig:
    return load_config(TrainMLLMJobConfig, config_file or default_config_path("train_mllm"), overrides)


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
