"""Where things live in a token dataset (the contract readers, writers and validators share)."""

from __future__ import annotations

VTOK_DIR = "_vtok"
RUN_FILE = "_vtok/run.json"
COMMITS_DIR = "_vtok/commits"
MANIFEST_FILE = "manifest.json"
REPORT_FILE = "report.json"
REPORT_HTML = "report.html"
SHARDS_DIR = "shards"
QUARANTINE_DIR = "quarantine"

RESERVED_NAMES: tuple[str, ...] = (MANIFEST_FILE, SHARDS_DIR, QUARANTINE_DIR, VTOK_DIR, REPORT_FILE, REPORT_HTML)
"""Every name vtok writes directly under an output: nothing else there is ever written or deleted."""


def shard_name(index: int) -> str:
    """Deterministic shard stem: part-00000, part-00001, ..."""
    return f"part-{index:05d}"


def is_shard_file(name: str) -> bool:
    """Whether a file name under shards/ or quarantine/ is one vtok writes (part-NNNNN[-KKK].parquet|.tar)."""
    import re

    return re.fullmatch(r"part-\d{5}(-\d{3})?\.(parquet|tar)", name) is not None
