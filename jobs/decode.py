"""`vtok decode` and `vtok generate`: load the config, connect to Ray (decode), run, say what was written."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jobs.config import default_config_path, load_config
from jobs.ray_setup import RayConfig, start_ray
from jobs.terminal import filtered_stderr
from pipelines.decode.decode import DecodeTokensConfig, run_decode
from pipelines.decode.generate import GenerateConfig, run_generate


@dataclass
class DecodeJobConfig(DecodeTokensConfig):
    """`vtok decode`: the decode config plus where to run it."""

    ray: RayConfig = field(default_factory=RayConfig)
    """Ray connection."""


def load_decode_config(overrides: list[str], config_file: str | None = None) -> DecodeJobConfig:
    return load_config(DecodeJobConfig, config_file or default_config_path("decode"), overrides)


VERBATIM_KEYS = ("prompt",)
"""Keys taken as written: OmegaConf would parse prompt=\"one object: a red circle\" as a mapping."""


def load_generate_config(overrides: list[str], config_file: str | None = None) -> GenerateConfig:
    verbatim = {k: v for k, _, v in (item.partition("=") for item in overrides) if k in VERBATIM_KEYS}
    rest = [item for item in overrides if item.partition("=")[0] not in VERBATIM_KEYS]
    cfg = load_config(GenerateConfig, config_file or default_config_path("generate"), rest)
    for key, value in verbatim.items():
        setattr(cfg, key, value)
    return cfg


def run_decode_job(cfg: DecodeJobConfig) -> dict[str, Any]:
    with filtered_stderr():
        start_ray(cfg.ray)
        return run_decode(cfg)


def run_generate_job(cfg: GenerateConfig) -> dict[str, Any]:
    # No Ray: generation is autoregressive per prompt, in this process.
    return run_generate(cfg)
