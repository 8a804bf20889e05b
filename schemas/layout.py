"""Where things live in a token dataset (the contract readers, writers and validators share)."""

from __future__ import annotations

RUN_FILE = "_vtok/run.json"
COMMITS_DIR = "_vtok/commits"
MANIFEST_FILE = "manifest.json"
REPORT_FILE = "report.json"
SHARDS_DIR = "shards"
QUARANTINE_DIR = "quarantine"


def shard_name(index: int) -> str:
    """Deterministic shard stem: part-00000, part-00001, ..."""
    return f"part-{index:05d}"
