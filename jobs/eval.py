"""`vtok eval`: load the config, check everything, connect to Ray, evaluate, say where the results are."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jobs.config import default_config_path, load_config
from jobs.ray_setup import RayConfig, start_ray
from jobs.terminal import filtered_stderr
from pipelines.evaluate.eval import EvalConfig, prepare_eval, run_eval


@dataclass
class EvalJobConfig(EvalConfig):
    """`vtok eval`: the evaluation config plus where to run it."""

    ray: RayConfig = field(default_factory=RayConfig)
    """Ray connection."""


def load_eval_config(overrides: list[str], config_file: str | None = None) -> EvalJobConfig:
    return load_config(EvalJobConfig, config_file or default_config_path("eval"), overrides)


def run_eval_job(cfg: EvalJobConfig, progress: bool = True) -> dict[str, Any]:
    # Every check first: a bad checkpoint, data or suite fails in a second, before Ray starts.
    plan = prepare_eval(cfg)
    with filtered_stderr():
        start_ray(cfg.ray)
        return run_eval(cfg, progress=progress, plan=plan)
