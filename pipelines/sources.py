"""List what to tokenize: a folder of videos or a manifest, as clip rows with stable sample keys.

Listing runs on the driver and only touches metadata (names, sizes), never video bytes. Nothing is
dropped silently: every file a listing passes over is counted in `Listing.skipped`, and a manifest row
that cannot be used becomes an item with `error_reason` set, so the sink quarantines it by name.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import posixpath
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from vtok.storage import get_fs, is_local, parent, resolve, strip_file_scheme

VIDEO_EXTENSIONS = (
    ".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v",
    ".ts", ".m2ts", ".mts", ".mpg", ".mpeg", ".m2v", ".3gp", ".3g2", ".flv", ".wmv", ".asf", ".ogv", ".vob",
)
MANIFEST_EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet")
BAD_ROW = "bad_row"
"""error_reason of a manifest row that cannot be tokenized (a vtok.video.REASONS code)."""
MAX_SKIPPED_EXAMPLES = 10
_UTF8_BOM = b"\xef\xbb\xbf"


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


class _Skips:
    """Counts what a listing passes over, keeping the first few examples for the report."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: list[str] = []

    def add(self, label: str, example: str) -> None:
        self.counts[label] += 1
        if len(self.examples) < MAX_SKIPPED_EXAMPLES:
            self.examples.append(example)

    def merge(self, other: _Skips) -> None:
        self.counts.update(other.counts)
        self.examples.extend(other.examples[: MAX_SKIPPED_EXAMPLES - len(self.examples)])


def _extension_label(name: str) -> str:
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


def list_clips(uri: str, cfg: SourceConfig, storage_options: dict[str, Any] | None = None) -> list[ClipItem]:
    """All clips under `uri`, sorted by sample key (list_inputs without the skipped counts)."""
    return list_inputs(uri, cfg, storage_options).items


def list_inputs(uri: str, cfg: SourceConfig, storage_options: dict[str, Any] | None = None) -> Listing:
    """Clips under `uri` (a folder of videos, a WebDataset tar, a manifest or a video) and what was skipped.

    Raises EmptyInputError when there is nothing to tokenize, and ValueError (one line, naming the file)
    for a manifest or tar that cannot be read at all.
    """
    if is_local(uri):
        # Workers may run elsewhere in the tree: local sources are keyed and read by absolute path.
        uri = os.path.abspath(strip_file_scheme(uri))
    fs, path = get_fs(uri, storage_options)
    if not fs.exists(path):
        raise FileNotFoundError(f"input {uri}: does not exist")
    skips = _Skips()
    lower = uri.lower()
    extensions = tuple(e.lower() for e in cfg.extensions)
    is_folder = fs.isdir(path)
    if is_folder:
        items = _list_folder(uri, fs, path, cfg, storage_options, skips)
    elif lower.endswith(MANIFEST_EXTENSIONS):
        items = _read_manifest(uri, cfg, storage_options, skips)
    elif lower.endswith(".tar"):
        items = list_tar(uri, cfg, storage_options, skips)
    elif lower.endswith(extensions):
        items = [ClipItem(make_sample_key(uri), uri)]
    else:
        raise ValueError(
            f"input {uri}: not a folder, a manifest ({', '.join(MANIFEST_EXTENSIONS)}), a .tar or a video"
        )
    listing = Listing(items, dict(sorted(skips.counts.items())), skips.examples)
    if not items:
        what = f"({listing.skipped_line()})" if skips.counts else "(it is empty)"
        # Manifest rows are taken whatever their extension: the extensions only matter for folders and tars.
        manifest = lower.endswith(MANIFEST_EXTENSIONS) and not is_folder
        hint = "" if manifest else f"; source.extensions = {list(cfg.extensions)}"
        raise EmptyInputError(f"input {uri}: no videos found {what}{hint}")
    items.sort(key=lambda item: item.sample_key)
    keys = [item.sample_key for item in items]
    if len(set(keys)) != len(keys):
        # Manifests resolve their own duplicates with row numbers; this is the net under every other source.
        dupes = sorted({k for k in keys if keys.count(k) > 1})[:5]
        raise ValueError(f"input {uri}: the same clip is listed more than once (sample keys {dupes})")
    listing.items = items[: cfg.limit] if cfg.limit else items
    return listing


def _list_folder(
    uri: str, fs: Any, path: str, cfg: SourceConfig, storage_options: dict[str, Any] | None, skips: _Skips
) -> list[ClipItem]:
    """Videos under the folder, plus the videos inside any WebDataset .tar files there.

    Every other file is counted by extension, caption .txt/.json files next to the videos included:
    they are not read from a folder, so a user who expected them to be should see them in the count.
    """
    from concurrent.futures import ThreadPoolExecutor

    extensions = tuple(e.lower() for e in cfg.extensions)
    if is_local(uri):
        files = _walk_local(path, cfg.recursive, skips)
    else:
        files = _walk_remote(fs, path, cfg.recursive, skips)
    items = []
    tars = []
    for p in files:
        full = p if is_local(uri) else fs.unstrip_protocol(p)
        if p.lower().endswith(extensions):
            items.append(ClipItem(make_sample_key(full), full))
        elif p.lower().endswith(".tar"):
            tars.append(full)
        else:
            skips.add(_extension_label(p), full)
    # Tar listing reads headers over the network: overlap the round trips. Each tar counts into its own
    # _Skips (no shared state across threads), merged in listing order so the examples stay deterministic.
    def scan(tar: str) -> tuple[list[ClipItem], _Skips]:
        own = _Skips()
        return list_tar(tar, cfg, storage_options, own), own

    with ThreadPoolExecutor(max_workers=8) as pool:
        for members, own in pool.map(scan, tars):
            items.extend(members)
            skips.merge(own)
    return items


def _walk_local(top: str, recursive: bool, skips: _Skips) -> list[str]:
    """Files under `top`, sorted. Directory symlinks are counted, not followed (they can loop)."""

    def unreadable(err: OSError) -> None:
        skips.add("unreadable folder", str(err.filename))

    files = []
    for root, dirs, names in os.walk(top, onerror=unreadable, followlinks=False):
        dirs.sort()
        kept = []
        for d in dirs:
            full = os.path.join(root, d)
            if os.path.islink(full):
                skips.add("directory symlink", full)
            elif not recursive:
                skips.add("folder (source.recursive=false)", full)
            else:
                kept.append(d)
        dirs[:] = kept
        files += [os.path.join(root, n) for n in sorted(names)]
    return sorted(files)


def _walk_remote(fs: Any, path: str, recursive: bool, skips: _Skips) -> list[str]:
    """Files under `path` of an object store (no symlinks there); one recursive listing when recursive."""
    if recursive:
        return sorted(fs.find(path))
    files = []
    for entry in sorted(fs.ls(path, detail=True), key=lambda e: e["name"]):
        if entry.get("type") == "directory":
            skips.add("folder (source.recursive=false)", fs.unstrip_protocol(entry["name"]))
        else:
            files.append(entry["name"])
    return files


def list_tar(
    uri: str, cfg: SourceConfig, storage_options: dict[str, Any] | None = None, skips: _Skips | None = None
) -> list[ClipItem]:
    """The videos of a WebDataset tar (as video2dataset writes them: KEY.mp4 + KEY.json / KEY.txt).

    Reads member headers and the small caption files only; each video becomes a byte range of the tar
    that the decode stage reads in place. Caption sidecars are part of the format and never counted as
    skipped; any other member that is not a video is, by extension, as is a caption file that cannot be read.
    """
    import tarfile

    skips = skips if skips is not None else _Skips()
    extensions = tuple(e.lower() for e in cfg.extensions)
    fs, path = get_fs(uri, storage_options)
    # By member name, not stem: KEY.mp4 and KEY.webm are two videos, and a name appended twice keeps
    # the later copy, as tar extraction does.
    videos: dict[str, tarfile.TarInfo] = {}
    captions: dict[str, str] = {}
    with fs.open(path, "rb", block_size=1 << 16) as f:
        try:
            with tarfile.open(fileobj=f, mode="r:") as tar:
                for member in tar:
                    member_uri = f"{uri}#{member.name}"
                    if member.isdir():
                        continue
                    if not member.isfile():
                        skips.add("link in tar", member_uri)
                        continue
                    stem, dot, _ = member.name.rpartition(".")
                    name = member.name.lower()
                    if name.endswith(extensions):
                        if member.name in videos:
                            skips.add("duplicate", member_uri)
                        videos[member.name] = member
                    elif name.endswith((".json", ".txt")) and dot:
                        caption = _tar_caption(tar, member)
                        if caption is _UNREADABLE:
                            skips.add("unreadable caption", member_uri)
                        elif caption and (name.endswith(".txt") or stem not in captions):
                            captions[stem] = str(caption)
                    else:
                        skips.add(_extension_label(member.name), member_uri)
        except tarfile.TarError as err:
            raise ValueError(f"input {uri}: not a readable tar ({err})") from err
    items = []
    for member in videos.values():
        source = f"{uri}#{member.name}"
        items.append(
            ClipItem(
                sample_key=make_sample_key(source),
                source_uri=source,
                caption=captions.get(member.name.rpartition(".")[0]),
                read_uri=uri,
                byte_offset=member.offset_data,
                byte_size=member.size,
            )
        )
    return items


_UNREADABLE = object()


def _tar_caption(tar: Any, member: Any) -> object:
    """The caption a .txt / .json sidecar holds (None if it has none), or _UNREADABLE."""
    try:
        data = tar.extractfile(member).read()
        if member.name.lower().endswith(".txt"):
            return data.decode("utf-8-sig").strip()
        meta = json.loads(data or b"{}")
    except (UnicodeDecodeError, ValueError):
        # One broken sidecar must not abort the listing of a corpus: the video is still tokenized.
        return _UNREADABLE
    return meta.get("caption") if isinstance(meta, dict) else None


def _read_manifest(
    uri: str, cfg: SourceConfig, storage_options: dict[str, Any] | None, skips: _Skips
) -> list[ClipItem]:
    """One item per distinct manifest row, in manifest order; a row that cannot be used is a bad_row item.

    The same clip listed twice (under any spelling of its URI) is kept once and counted as a duplicate;
    two rows for one clip that disagree (another caption, say) are an error, since only one can win.
    """
    columns, rows = _manifest_rows(uri, storage_options)
    if rows and cfg.uri_column not in columns:
        raise ValueError(f"manifest {uri}: no {cfg.uri_column!r} column (columns: {columns})")
    base = parent(uri)
    items: list[ClipItem] = []
    first: dict[str, tuple[int, ClipItem]] = {}
    for n, row in enumerate(rows, start=1):
        item, spelled = _manifest_item(uri, base, n, row, cfg)
        seen = first.get(item.sample_key)
        if seen is None:
            first[item.sample_key] = (n, item)
            items.append(item)
        elif seen[1] == item:
            skips.add("duplicate", f"{spelled} (row {n}, same as row {seen[0]})")
        else:
            differ = [f for f in ("caption", "clip_start_s", "clip_end_s", "attributes")
                      if getattr(seen[1], f) != getattr(item, f)]
            raise ValueError(
                f"manifest {uri}: rows {seen[0]} and {n} list the same clip of {item.source_uri} with a "
                f"different {', '.join(differ) or 'value'}; a clip is tokenized once, so keep one row per clip"
            )
    return items


def _manifest_rows(uri: str, storage_options: dict[str, Any] | None) -> tuple[list[str], list[Any]]:
    """The column names and the rows (dicts; anything else for a JSON line that is not an object)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, path = get_fs(uri, storage_options)
    lower = uri.lower()
    with fs.open(path, "rb") as f:
        data = f.read()
    if lower.endswith(".parquet"):
        try:
            table = pq.read_table(pa.BufferReader(data))
        except pa.ArrowException as err:
            raise ValueError(f"manifest {uri}: not a readable Parquet file ({_one_line(err)})") from err
        return table.column_names, table.to_pylist()
    # A BOM is what Excel and PowerShell put in front of UTF-8: drop it, or the first column is misnamed.
    bom = len(_UTF8_BOM) if data.startswith(_UTF8_BOM) else 0
    try:
        text = data[bom:].decode("utf-8")
    except UnicodeDecodeError as err:
        at = bom + err.start
        raise ValueError(f"manifest {uri}: not UTF-8 text (byte 0x{data[at]:02x} at offset {at})") from err
    if lower.endswith(".csv"):
        return _csv_rows(uri, data[bom:], text)
    rows = _json_rows(uri, text, whole=lower.endswith(".json"))
    # Every key of every row, not the first row's: rows may differ in which optional columns they have.
    columns = list(dict.fromkeys(k for r in rows if isinstance(r, dict) for k in r))
    return columns, rows


def _csv_rows(uri: str, data: bytes, text: str) -> tuple[list[str], list[dict[str, Any]]]:
    """Every cell as text ("" when empty): type inference per block fails on a column that is text in
    one row and a number in another, so numbers are parsed per row by _manifest_item instead."""
    import csv

    import pyarrow as pa
    import pyarrow.csv

    try:
        header = next(csv.reader(io.StringIO(text)), None)
    except csv.Error as err:
        raise ValueError(f"manifest {uri}: not a readable CSV ({_one_line(err)})") from err
    if not header:
        return [], []
    try:
        table = pyarrow.csv.read_csv(
            pa.py_buffer(data),
            # Quoted captions may hold newlines.
            parse_options=pyarrow.csv.ParseOptions(newlines_in_values=True),
            # No null strings: "NA" is a caption and "nan" a bad clip time, not missing values ("" is).
            convert_options=pyarrow.csv.ConvertOptions(
                column_types={name: pa.string() for name in header}, strings_can_be_null=False
            ),
        )
    except pa.ArrowException as err:
        raise ValueError(f"manifest {uri}: not a readable CSV ({_one_line(err)})") from err
    return table.column_names, table.to_pylist()


def _json_rows(uri: str, text: str, whole: bool) -> list[Any]:
    """JSON Lines, or for a .json file one document: an array of rows, or a single row."""
    if whole and text.lstrip().startswith("["):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(_json_error(uri, err.lineno, err)) from err
        return list(doc)
    rows = []
    # split("\n"), not splitlines(): that also splits at U+2028 and the like, which JSON strings may hold.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(_json_error(uri, lineno, err)) from err
    return rows


def _json_error(uri: str, lineno: int, err: json.JSONDecodeError) -> str:
    return f"manifest {uri}: line {lineno} is not valid JSON ({err.msg}, column {err.colno})"


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _manifest_item(uri: str, base: str, n: int, row: Any, cfg: SourceConfig) -> tuple[ClipItem, str]:
    """The item of manifest row `n` (1-based) and the URI as the row spells it.

    Every problem of the row goes into one error_message; the item of a bad row is keyed by its URI and
    row number (by the manifest and row number when the URI itself is bad), so it can collide neither
    with a good row of the same video nor with another bad row.
    """
    here = f"{uri}#row{n}"
    if not isinstance(row, dict):
        return _bad_row(here, None, n, uri, [f"not a JSON object but {type(row).__name__} {row!r:.40}"]), here
    problems: list[str] = []
    raw = row.get(cfg.uri_column)
    source: str | None = None
    spelled = here
    if raw is None:
        problems.append(f"{cfg.uri_column} is missing")
    elif isinstance(raw, bool) or not isinstance(raw, (str, int)):
        problems.append(f"{cfg.uri_column} {raw!r:.60} is not text")
    elif not str(raw).strip():
        problems.append(f"{cfg.uri_column} is empty")
    else:
        spelled = resolve(base, str(raw))
        source = normalize_uri(spelled)
    start = _clip_time(row, "clip_start_s", problems)
    if start is not None and start < 0:
        problems.append(f"clip_start_s {start} is negative")
        start = None
    end = _clip_time(row, "clip_end_s", problems)
    # Compared only with a usable start: a bad start is reported once, not again through the end.
    if end is not None and not any(p.startswith("clip_start_s") for p in problems) and end <= (start or 0.0):
        problems.append(f"clip_end_s {end} is not after clip_start_s {start or 0.0}")
    caption = _caption(row.get(cfg.caption_column), cfg.caption_column, problems)
    attributes = row.get("attributes") or None
    if attributes is not None and not isinstance(attributes, str):
        try:
            attributes = json.dumps(attributes, sort_keys=True)
        except (TypeError, ValueError):
            problems.append(f"attributes of type {type(attributes).__name__} is not JSON")
            attributes = None
    if problems or source is None:
        return _bad_row(here, source, n, uri, problems), spelled
    item = ClipItem(
        sample_key=make_sample_key(source, start, end),
        source_uri=source,
        caption=caption,
        clip_start_s=start,
        clip_end_s=end,
        attributes=attributes,
    )
    return item, spelled


def _bad_row(here: str, source: str | None, n: int, uri: str, problems: list[str]) -> ClipItem:
    return ClipItem(
        sample_key=make_sample_key(f"{source}#row{n}" if source else here),
        source_uri=source or here,
        error_reason=BAD_ROW,
        error_message=f"manifest {uri}: row {n}: {'; '.join(problems)}",
    )


def _clip_time(row: dict[str, Any], column: str, problems: list[str]) -> float | None:
    """A clip bound in seconds, None when absent; a value that is not a finite number is a problem."""
    value = row.get(column)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        problems.append(f"{column} {value!r} is not a number")
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        problems.append(f"{column} {value!r:.40} is not a number")
        return None
    if not math.isfinite(seconds):
        problems.append(f"{column} {value!r:.40} is not a finite number")
        return None
    return seconds


def _caption(value: Any, column: str, problems: list[str]) -> str | None:
    """Captions are text; a number (a CSV of ids, a JSON 42) is written as text rather than lost."""
    if value is None or isinstance(value, str):
        return value or None  # an empty CSV cell is no caption, as a missing key is
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (bool, int, float)):
        return str(value)
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            problems.append(f"{column} is bytes that are not UTF-8 text")
            return None
    try:
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)


def split_into_clips(item: ClipItem, duration_s: float, cfg: SourceConfig) -> list[ClipItem]:
    """Fixed-length clips [start, start + length) every stride seconds; a short tail is dropped.

    A video shorter than one clip stays whole. Each clip's key hashes the URI plus its range, so keys
    stay stable however the rest of the corpus changes.
    """
    assert cfg.clip_length_s is not None
    if item.error_reason:
        # A bad manifest row has no video to cut: it goes to the quarantine whole.
        return [item]
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
