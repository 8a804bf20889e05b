"""List what to tokenize: a folder of videos or a manifest, as clip rows with stable sample keys.

Listing runs on the driver and only touches metadata (names, sizes), never video bytes. Nothing is
dropped silently: every file a listing passes over is counted in `Listing.skipped`, and a manifest row
that cannot be used becomes an item with `error_reason` set, so the sink quarantines it by name.
"""

from __future__ import annotations

import os
from typing import Any

from pipelines.tokenize.clips import (
    MANIFEST_EXTENSIONS,
    ClipItem,
    EmptyInputError,
    Listing,
    Skips,
    SourceConfig,
    extension_label,
    make_sample_key,
)
from pipelines.tokenize.input_manifest import read_manifest
from pipelines.tokenize.input_tar import list_tar
from vtok.storage import get_fs, is_local, strip_file_scheme


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
    skips = Skips()
    lower = uri.lower()
    extensions = tuple(e.lower() for e in cfg.extensions)
    is_folder = fs.isdir(path)
    if is_folder:
        items = _list_folder(uri, fs, path, cfg, storage_options, skips)
    elif lower.endswith(MANIFEST_EXTENSIONS):
        items = read_manifest(uri, cfg, storage_options, skips)
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
    uri: str, fs: Any, path: str, cfg: SourceConfig, storage_options: dict[str, Any] | None, skips: Skips
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
            skips.add(extension_label(p), full)
    # Tar listing reads headers over the network: overlap the round trips. Each tar counts into its own
    # Skips (no shared state across threads), merged in listing order so the examples stay deterministic.
    def scan(tar: str) -> tuple[list[ClipItem], Skips]:
        own = Skips()
        return list_tar(tar, cfg, storage_options, own), own

    with ThreadPoolExecutor(max_workers=8) as pool:
        for members, own in pool.map(scan, tars):
            items.extend(members)
            skips.merge(own)
    return items


def _walk_local(top: str, recursive: bool, skips: Skips) -> list[str]:
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


def _walk_remote(fs: Any, path: str, recursive: bool, skips: Skips) -> list[str]:
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
