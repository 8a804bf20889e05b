"""List what to tokenize: a folder of videos or a manifest, as clip rows with stable sample keys.

Listing runs on the driver and only touches metadata (names, sizes), never video bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

from vtok.storage import get_fs, is_local, parent, resolve, strip_file_scheme

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v")
MANIFEST_EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet")


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
        }


def make_sample_key(source_uri: str, clip_start_s: float | None = None, clip_end_s: float | None = None) -> str:
    """Stable, unique, WebDataset-safe key: a hash of the URI plus the clip range in milliseconds."""
    digest = hashlib.sha256(source_uri.encode()).hexdigest()[:20]
    if clip_start_s is None and clip_end_s is None:
        return digest
    start_ms = round((clip_start_s or 0.0) * 1000)
    end = "end" if clip_end_s is None else f"{round(clip_end_s * 1000):09d}"
    return f"{digest}_{start_ms:09d}_{end}"


def list_clips(uri: str, cfg: SourceConfig, storage_options: dict[str, Any] | None = None) -> list[ClipItem]:
    """All clips under `uri` (a folder of videos or a manifest file), sorted by sample key."""
    if is_local(uri):
        # Workers may run elsewhere in the tree: local sources are keyed and read by absolute path.
        uri = os.path.abspath(strip_file_scheme(uri))
    fs, path = get_fs(uri, storage_options)
    if not fs.exists(path):
        raise FileNotFoundError(f"input {uri}: does not exist")
    if fs.isdir(path):
        items = _list_folder(uri, fs, path, cfg, storage_options)
    elif uri.lower().endswith(MANIFEST_EXTENSIONS):
        items = _read_manifest(uri, cfg, storage_options)
    elif uri.lower().endswith(".tar"):
        items = list_tar(uri, cfg, storage_options)
    elif uri.lower().endswith(tuple(cfg.extensions)):
        items = [ClipItem(make_sample_key(uri), uri)]
    else:
        raise ValueError(
            f"input {uri}: not a folder, a manifest ({', '.join(MANIFEST_EXTENSIONS)}), a .tar or a video"
        )
    items.sort(key=lambda item: item.sample_key)
    keys = [item.sample_key for item in items]
    if len(set(keys)) != len(keys):
        dupes = sorted({k for k in keys if keys.count(k) > 1})[:5]
        raise ValueError(f"input {uri}: the same clip is listed more than once (sample keys {dupes})")
    return items[: cfg.limit] if cfg.limit else items


def _list_folder(
    uri: str, fs: Any, path: str, cfg: SourceConfig, storage_options: dict[str, Any] | None
) -> list[ClipItem]:
    """Videos under the folder, plus the videos inside any WebDataset .tar files there."""
    from concurrent.futures import ThreadPoolExecutor

    extensions = tuple(e.lower() for e in cfg.extensions)
    found = fs.find(path) if cfg.recursive else fs.ls(path, detail=False)
    items = []
    tars = []
    for p in sorted(found):
        full = p if is_local(uri) else fs.unstrip_protocol(p)
        if p.lower().endswith(extensions):
            items.append(ClipItem(make_sample_key(full), full))
        elif p.lower().endswith(".tar"):
            tars.append(full)
    # Tar listing reads headers over the network: overlap the round trips.
    with ThreadPoolExecutor(max_workers=8) as pool:
        for members in pool.map(lambda t: list_tar(t, cfg, storage_options), tars):
            items.extend(members)
    return items


def list_tar(uri: str, cfg: SourceConfig, storage_options: dict[str, Any] | None = None) -> list[ClipItem]:
    """The videos of a WebDataset tar (as video2dataset writes them: KEY.mp4 + KEY.json / KEY.txt).

    Reads member headers and the small caption files only; each video becomes a byte range of the tar
    that the decode stage reads in place.
    """
    import tarfile

    extensions = tuple(e.lower() for e in cfg.extensions)
    fs, path = get_fs(uri, storage_options)
    videos: dict[str, tarfile.TarInfo] = {}
    captions: dict[str, str] = {}
    with fs.open(path, "rb", block_size=1 << 16) as f:
        try:
            with tarfile.open(fileobj=f, mode="r:") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    stem, dot, _ = member.name.rpartition(".")
                    name = member.name.lower()
                    if name.endswith(extensions):
                        videos[stem] = member
                    elif name.endswith(".json") and dot:
                        meta = json.loads(tar.extractfile(member).read() or b"{}")  # type: ignore[union-attr]
                        if isinstance(meta, dict) and meta.get("caption") and stem not in captions:
                            captions[stem] = str(meta["caption"])
                    elif name.endswith(".txt") and dot:
                        captions[stem] = tar.extractfile(member).read().decode().strip()  # type: ignore[union-attr]
        except tarfile.TarError as err:
            raise ValueError(f"input {uri}: not a readable tar ({err})") from err
    items = []
    for stem, member in videos.items():
        source = f"{uri}#{member.name}"
        items.append(
            ClipItem(
                sample_key=make_sample_key(source),
                source_uri=source,
                caption=captions.get(stem),
                read_uri=uri,
                byte_offset=member.offset_data,
                byte_size=member.size,
            )
        )
    return items


def _read_manifest(uri: str, cfg: SourceConfig, storage_options: dict[str, Any] | None) -> list[ClipItem]:
    import pyarrow as pa
    import pyarrow.csv
    import pyarrow.parquet as pq

    fs, path = get_fs(uri, storage_options)
    lower = uri.lower()
    with fs.open(path, "rb") as f:
        if lower.endswith(".parquet"):
            table = pq.read_table(f)
        elif lower.endswith(".csv"):
            table = pyarrow.csv.read_csv(f)
        else:
            text = f.read().decode()
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
            if lower.endswith(".json") and len(rows) == 1 and isinstance(rows[0], list):
                rows = rows[0]
            # Not from_pylist: it takes the columns of the first row only.
            columns = list(dict.fromkeys(k for r in rows for k in r))
            table = pa.table({c: [r.get(c) for r in rows] for c in columns})
    if cfg.uri_column not in table.column_names:
        raise ValueError(f"manifest {uri}: no {cfg.uri_column!r} column (columns: {table.column_names})")
    base = parent(uri)
    items = []
    for line, row in enumerate(table.to_pylist(), start=1):
        raw = row.get(cfg.uri_column)
        if not raw:
            raise ValueError(f"manifest {uri}: row {line} has an empty {cfg.uri_column!r}")
        source = resolve(base, str(raw))
        start, end = row.get("clip_start_s"), row.get("clip_end_s")
        attributes = row.get("attributes")
        if attributes is not None and not isinstance(attributes, str):
            attributes = json.dumps(attributes, sort_keys=True)
        items.append(
            ClipItem(
                sample_key=make_sample_key(source, start, end),
                source_uri=source,
                caption=row.get(cfg.caption_column),
                clip_start_s=None if start is None else float(start),
                clip_end_s=None if end is None else float(end),
                attributes=attributes,
            )
        )
    return items


def split_into_clips(item: ClipItem, duration_s: float, cfg: SourceConfig) -> list[ClipItem]:
    """Fixed-length clips [start, start + length) every stride seconds; a short tail is dropped.

    A video shorter than one clip stays whole. Each clip's key hashes the URI plus its range, so keys
    stay stable however the rest of the corpus changes.
    """
    assert cfg.clip_length_s is not None
    length = cfg.clip_length_s
    stride = cfg.clip_stride_s or length
    lo = item.clip_start_s or 0.0
    hi = min(duration_s, item.clip_end_s) if item.clip_end_s is not None else duration_s
    if hi - lo < length:
        return [item]
    clips = []
    start = lo
    # Round to milliseconds: keys carry millisecond ranges, and float drift must not change a key.
    while round(hi - start, 3) >= length or (not clips and hi > start):
        end = min(start + length, hi)
        if clips and end - start < cfg.min_clip_s:
            break
        clips.append(
            ClipItem(
                sample_key=make_sample_key(item.source_uri, round(start, 3), round(end, 3)),
                source_uri=item.source_uri,
                caption=item.caption,
                clip_start_s=round(start, 3),
                clip_end_s=round(end, 3),
                attributes=item.attributes,
                read_uri=item.read_uri,
                byte_offset=item.byte_offset,
                byte_size=item.byte_size,
            )
        )
        start += stride
    return clips
