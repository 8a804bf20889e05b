"""`vtok eval scan`: load the config, check the run and the data, evaluate what needs it (Ray started once, and
only when there is something to evaluate), print one line per (checkpoint, suite)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from jobs.config import default_config_path, load_config
from jobs.ray_setup import RayConfig, start_ray
from jobs.terminal import filtered_stderr
from pipelines.evaluate.scan import ScanConfig, ScanSummary, run_scan


@dataclass
class ScanJobConfig(ScanConfig):
    """`vtok eval scan`: the scan config plus where to run it."""

    ray: RayConfig = field(default_factory=RayConfig)
    """Ray connection."""


RESERVED_KEYS = {"checkpoint": "the scan sets it to each checkpoint of run= it evaluates"}
"""Keys of `vtok eval` that a scan sets itself."""


def load_scan_config(overrides: list[str], config_file: str | None = None) -> ScanJobConfig:
    return load_config(ScanJobConfig, config_file or default_config_path("eval_scan"), overrides,
                       reserved=RESERVED_KEYS)


def run_scan_job(cfg: ScanJobConfig, progress: bool = True, echo: Callable[[str], None] = print) -> ScanSummary:
    with filtered_stderr():
        return run_scan(cfg, progress=progress, before_eval=lambda: start_ray(cfg.ray), echo=echo)
