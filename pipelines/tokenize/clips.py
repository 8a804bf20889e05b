"""What a listing produces: clip items with stable sample keys, and the count of what it skipped."""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from vtok.storage import is_local, strip_file_scheme

VIDEO_EXTENSIONS = (
    ".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v",
    ".ts", ".m2ts", ".mts", ".mpg", ".mpeg", ".m2v", ".3gp", ".3g2", ".flv", ".wmv", ".asf", ".ogv", ".vob",
)
MANIFEST_EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet")
BAD_ROW = "bad_row"
"""error_reason of a manifest row that cannot be tokenized (a vtok.video.REASONS code)."""
MAX_SKIPPED_EXAMPLES = 10


class EmptyInputError(ValueError):
    """An input that lists no videos at all: almost always a wrong path or a wrong source.extensions."""


@dataclass
class SourceConfig:
    """Where the videos are and which of them to take."""

    extensions: list[str] = field(default_factory=lambda: list(VIDEO_EXTENSIONS))
    """File name endings that count as videos when listing a folder."""
    recursive: bool = True
    """List sub-folders too."""
    limit: int | None = None
    """Take only the first N clips (after sorting by sample key), for trial runs."""
    uri_column: str = "uri"
    """Manifest column holding each video's URI (relative URIs resolve against the manifest's folder)."""
    caption_column: str = "caption"
    """Manifest column holding the caption, if any."""
    clip_length_s: float | None = None
    """Split every video into clips of this many seconds (None: one clip per video)."""
    clip_stride_s: float | None = None
    """Seconds between clip starts when splitting (None: equal to clip_length_s, no overlap)."""
    min_clip_s: float = 0.5
    """A trailing piece shorter than this is not made into a clip."""

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"source.limit must be >= 1, got {self.limit}")
        if self.clip_length_s is not None and self.clip_length_s <= 0:
            raise ValueError(f"source.clip_length_s must be > 0, got {self.clip_length_s}")
        if self.clip_stride_s is not None and (self.clip_stride_s <= 0 or self.clip_length_s is None):
            raise ValueError("source.clip_stride_s must be > 0 and needs source.clip_length_s")
        if not self.extensions:
            raise ValueError("source.extensions must not be empty")


@dataclass(frozen=True)
class ClipItem:
    """One unit of work: a video, or a time range of one."""

    sample_key: str
    source_uri: str
    caption: str | None = None
    clip_start_s: float | None = None
    clip_end_s: float | None = None
    attributes: str | None = None  # JSON text
    read_uri: str | None = None  # where the bytes are, when not source_uri (a WebDataset tar)
    byte_offset: int = -1  # the member's byte range inside read_uri
    byte_size: int = -1
    error_reason: str | None = None  # set when the item is known bad before decoding (a bad manifest row)
    error_message: str | None = None

    def to_row(self) -> dict[str, Any]:
        return {
            "sample_key": self.sample_key,
            "source_uri": self.source_uri,
            "read_uri": self.read_uri or self.source_uri,
            "byte_offset": self.byte_offset,
            "byte_size": self.byte_size,
            # "" not None: an all-null column would reach the sink as NaN floats after Ray's conversions.
            "caption": self.caption or "",
            "clip_start_s": -1.0 if self.clip_start_s is None else float(self.clip_start_s),
            "clip_end_s": -1.0 if self.clip_end_s is None else float(self.clip_end_s),
            "attributes": self.attributes or "",
            "error_reason": self.error_reason or "",
            "error_message": self.error_message or "",
        }


@dataclass
class Listing:
    """What a listing found: the clips to tokenize, and what it skipped, counted."""

    items: list[ClipItem]
    """Sorted by sample key; bad manifest rows are included, with error_reason set."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Label -> count: a lowercase extension ('.gif', 'no extension'), 'directory symlink', 'duplicate'..."""
    skipped_examples: list[str] = field(default_factory=list)
    """Up to MAX_SKIPPED_EXAMPLES skipped URIs/paths, for the report."""

    def skipped_line(self) -> str:
        """'skipped 2: .gif 1, .ts 1' (most frequent first), or '' when nothing was skipped."""
        if not self.skipped:
            return ""
        total = sum(self.skipped.values())
        ranked = sorted(self.skipped.items(), key=lambda kv: (-kv[1], kv[0]))
        parts = ", ".join(f"{label} {n}" for label, n in ranked)
        return f"skipped {total}: {parts}"


class Skips:
    """Counts what a listing passes over, keeping the first few examples for the report."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: list[str] = []

    def add(self, label: str, example: str) -> None:
        self.counts[label] += 1
        if len(self.examples) < MAX_SKIPPED_EXAMPLES:
            self.examples.append(example)

    def merge(self, other: Skips) -> None:
        self.counts.update(other.counts)
        self.examples.extend(other.examples[: MAX_SKIPPED_EXAMPLES - len(self.examples)])


def extension_label(name: str) -> str:
    ext = posixpath.splitext(posixpath.basename(name.rstrip("/")))[1].lower()
    return ext or "no extension"


def make_sample_key(source_uri: str, clip_start_s: float | None = None, clip_end_s: float | None = None) -> str:
    """Stable, unique, WebDataset-safe key: a hash of the URI plus the clip range in milliseconds."""
    digest = hashlib.sha256(source_uri.encode()).hexdigest()[:20]
    if clip_start_s is None and clip_end_s is None:
        return digest
    start_ms = round((clip_start_s or 0.0) * 1000)
    end = "end" if clip_end_s is None else f"{round(clip_end_s * 1000):09d}"
    return f"{digest}_{start_ms:09d}_{end}"


def normalize_uri(uri: str) -> str:
    """One spelling per file, so a manifest listing `./x.mp4` and `a//x.mp4` keys the same video once.

    Local paths become absolute and normalised ('..', '.', '//' resolved; file:// dropped, as the folder
    listing spells them). URIs with a scheme only lose repeated slashes in their path: '..' may be a
    real part of an object key, and the query or fragment is not a path.
    """
    if is_local(uri):
        return os.path.normpath(os.path.abspath(strip_file_scheme(uri)))
    scheme, rest = uri.split("://", 1)
    host, slash, path = rest.partition("/")
    if not slash:
        return uri
    cut = min((i for i in (path.find("?"), path.find("#")) if i >= 0), default=len(path))
    return f"{scheme}://{host}/{re.sub('/+', '/', path[:cut]).lstrip('/')}{path[cut:]}"
