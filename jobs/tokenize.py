"""`vtok tokenize`: load the config, connect to Ray, run the pipeline, print the summary."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass, field

from jobs.config import default_config_path, load_config
from jobs.terminal import filtered_stderr, quiet_ray_logging
from pipelines.tokenize.pipeline import TokenizeConfig, TokenizeSummary, preflight, run_tokenize

logger = logging.getLogger(__name__)


@dataclass
class RayConfig:
    """Which Ray to run on."""

    address: str | None = None
    """None starts a local Ray in this process; otherwise a cluster address ("auto", "ray://host:10001")."""
    num_cpus: int | None = None
    """CPUs of the local Ray (None: all of this machine's)."""
    temp_dir: str | None = None
    """Temp/session dir of the local Ray (None: a fresh /tmp/vtok-ray-* of its own)."""


@dataclass
class TokenizeJobConfig(TokenizeConfig):
    """The tokenize job: the pipeline config plus where to run it."""

    ray: RayConfig = field(default_factory=RayConfig)
    """Ray connection."""


def init_ray(cfg: RayConfig) -> None:
    """Connect to a cluster, or start a private local Ray with auth off and a temp dir of our own."""
    import ray

    if ray.is_initialized():
        return
    if cfg.address:
        ray.init(address=cfg.address, log_to_driver=True)
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    temp_dir = cfg.temp_dir or tempfile.mkdtemp(prefix="vtok-ray-", dir="/tmp")
    ray.init(num_cpus=cfg.num_cpus, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=False,
             logging_level=logging.WARNING)


RESERVED_KEYS = {
    "decode.size": "the frame size is the encoder's input size (tokenizer.encoder decides it)",
    "tokenizer.storage_options": "the encoder is read with the job's storage_options / endpoint_url",
}
"""Keys the pipeline sets itself; `vtok config tokenize` does not list them."""


def load_tokenize_config(overrides: list[str], config_file: str | None = None) -> TokenizeJobConfig:
    return load_config(TokenizeJobConfig, config_file or default_config_path("tokenize"), overrides, RESERVED_KEYS)


def run(cfg: TokenizeJobConfig, progress: bool = True) -> TokenizeSummary:
    preflight(cfg)  # a missing input fails now, not after Ray has started
    with filtered_stderr():
        start_ray(cfg.ray)
        summary = run_tokenize(cfg, progress=progress)
    _write_report(summary, cfg)
    return summary


def start_ray(cfg: RayConfig) -> None:
    """init_ray, saying so: starting a local Ray takes seconds that would otherwise pass in silence."""
    import ray

    if ray.is_initialized():
        return
    where = f"joining the Ray cluster at {cfg.address}" if cfg.address else "starting a local Ray"
    logger.info("%s...", where)
    started = time.perf_counter()
    init_ray(cfg)
    quiet_ray_logging()
    logger.info("Ray ready in %.1f s (%s CPUs)", time.perf_counter() - started,
                f"{ray.cluster_resources().get('CPU', 0):g}")


def _write_report(summary: TokenizeSummary, cfg: TokenizeJobConfig) -> None:
    """report.json + report.html next to the shards; a failure here never fails a run whose shards are committed."""
    import logging

    from pipelines.tokenize.report import write_report

    try:
        paths = write_report(summary, cfg)
    except Exception as err:  # noqa: BLE001 - any storage error: the dataset itself is already complete
        logging.getLogger(__name__).error("could not write the run report under %s: %s", summary.output, err)
        return
    print(f"report             {paths.html} (summary: vtok report {summary.output})", flush=True)
