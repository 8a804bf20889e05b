"""Which Ray a job runs on: join a cluster, or start a private local Ray, saying so (jobs/ only: nothing else
calls ray.init)."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass

from jobs.terminal import quiet_ray_logging

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


TRAIN_POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
LOCAL_TRAIN_POLL_S = "0.2"
"""Ray Train's controller polls its workers every 2 s by default, and each start, finish and report waits for a
poll (a 10-report fit: 35 s at 2 s, 17 s at 0.2 s, measured). A local Ray, which this process's environment
reaches, polls every 0.2 s: one process's cheap check on one machine."""


def init_ray(cfg: RayConfig) -> None:
    """Connect to a cluster, or start a private local Ray with auth off and a temp dir of our own."""
    import ray

    if ray.is_initialized():
        return
    if cfg.address:
        ray.init(address=cfg.address, log_to_driver=True)
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault(TRAIN_POLL_ENV, LOCAL_TRAIN_POLL_S)
    temp_dir = cfg.temp_dir or tempfile.mkdtemp(prefix="vtok-ray-", dir="/tmp")
    # Every worker of a vtok job runs Ray Data (map tasks, pool actors, its stats actors), so each imports it
    # (~1.2 CPU-s) as it starts instead of when its first task arrives: the workers ray.init prestarts do it
    # while ray.init is still waiting on Ray's daemons, and the encoder actor, which lands on one of them,
    # starts loading its model ~1 s sooner on the demo (BENCHMARKS.md, "First clip").
    ray.init(num_cpus=cfg.num_cpus, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=False,
             logging_level=logging.WARNING, _system_config={"preload_python_modules": ["ray.data"]})


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
