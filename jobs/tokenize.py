"""`vtok tokenize`: load the config, connect to Ray, run the pipeline, print the summary."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from jobs.config import default_config_path, load_config
from jobs.ray_setup import RayConfig, start_ray
from jobs.terminal import filtered_stderr
from pipelines.tokenize.pipeline import TokenizeConfig, TokenizeSummary, preflight, run_tokenize

logger = logging.getLogger(__name__)


@dataclass
class TokenizeJobConfig(TokenizeConfig):
    """The tokenize job: the pipeline config plus where to run it."""

    ray: RayConfig = field(default_factory=RayConfig)
    """Ray connection."""


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
