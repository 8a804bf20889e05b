"""`vtok probe`: small classifiers per attribute on a token dataset, the cheap first look before an MLLM.

Runs in this process (no Ray): reads every shard (Parquet or WebDataset, local or any fsspec URI), trains the
probe of vtok.eval.probe per (mode, attribute), prints the held-out accuracy table, and with output=DIR commits
the scores as results-table rows (suite "probe") to DIR/eval/results/probe.<mode>__probe.parquet, with the
table and every score as JSON beside them (DIR/eval/probe.json).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from jobs.config import load_config
from vtok.eval.probe import ProbeConfig


@dataclass
class ProbeJobConfig(ProbeConfig):
    """`vtok probe`: what to probe, where the results go, and the probe's own settings."""

    data: str = "???"
    """Token dataset to probe (a folder of shards, local or any fsspec URI)."""
    output: str | None = None
    """Folder for the results (OUTPUT/eval/results/*.parquet and OUTPUT/eval/probe.json); null: print only."""
    limit: int = 0
    """Probe at most this many clips (in shard order; 0 = every clip)."""
    threads: int = 1
    """torch intra-op threads (one is fastest for these tiny models on a busy machine)."""
    storage_options: dict[str, Any] = field(default_factory=dict)
    """fsspec options for remote URIs."""


def load_probe_config(overrides: list[str], config_file: str | None = None) -> ProbeJobConfig:
    return load_config(ProbeJobConfig, config_file, overrides)


def probe_settings(cfg: ProbeJobConfig) -> ProbeConfig:
    """The ProbeConfig part of the job's config."""
    names = ProbeConfig.__dataclass_fields__
    return ProbeConfig(**{k: v for k, v in asdict(cfg).items() if k in names})


def run_probe_job(cfg: ProbeJobConfig) -> dict[str, Any]:
    """Probe cfg.data; {"scores", "table", "seconds", "clips", "results" (URIs, or {} without output)}."""
    import torch

    from pipelines.evaluate.results import commit_results
    from vtok.dataset import read_manifest, read_shard_samples, shard_uris
    from vtok.errors import InputError
    from vtok.eval.probe import probe_table, run_probe
    from vtok.eval.probe_rows import SUITE, probe_result_rows
    from vtok.storage import join, write_bytes_atomic

    settings = probe_settings(cfg)
    so = cfg.storage_options or None
    uris = shard_uris(cfg.data, so)
    if not uris:
        raise InputError(f"data {cfg.data!r}: no token shards")
    rows: list[dict[str, Any]] = []
    for uri in uris:
        rows += read_shard_samples(uri, so)
        if cfg.limit and len(rows) >= cfg.limit:
            rows = rows[: cfg.limit]
            break
    torch.set_num_threads(max(1, cfg.threads))
    started = time.perf_counter()
    scores = run_probe(rows, settings)
    seconds = time.perf_counter() - started
    text = probe_table(scores)
    results: dict[str, str] = {}
    if cfg.output:
        manifest = read_manifest(cfg.data, so)
        run = cfg.data.rstrip("/").rsplit("/", 1)[-1] or "data"
        result_rows = probe_result_rows(scores, run, str(manifest.get("fingerprint") or "unknown"),
                                        str(rows[0].get("tokenizer_fingerprint") or "unknown"))
        for mode in dict.fromkeys(s.mode for s in scores):
            mine = [r for r in result_rows if r.checkpoint == f"probe.{mode}"]
            results[mode] = commit_results(cfg.output, f"probe.{mode}", SUITE, mine, so)
        doc = {"data": cfg.data, "clips": len(rows), "seconds": seconds, "config": asdict(settings),
               "table": text, "scores": [asdict(s) for s in scores]}
        uri = join(cfg.output, "eval", "probe.json")
        write_bytes_atomic(uri, (json.dumps(doc, indent=1) + "\n").encode(), so)
        results["json"] = uri
    return {"scores": scores, "table": text, "seconds": seconds, "clips": len(rows), "results": results}
