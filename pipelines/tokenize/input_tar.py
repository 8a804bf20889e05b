"""WebDataset tars of raw videos as a source: each video is a byte range of its tar, captions from sidecars."""

from __future__ import annotations

import json
from typing import Any

from pipelines.tokenize.clips import ClipItem, Skips, SourceConfig, extension_label, make_sample_key
from vtok.storage import get_fs


def list_tar(
    uri: str, cfg: SourceConfig, storage_options: dict[str, Any] | None = None, skips: Skips | None = None
) -> list[ClipItem]:
    """The videos of a WebDataset tar (as video2dataset writes them: KEY.mp4 + KEY.json / KEY.txt).

    Reads member headers and the small caption files only; each video becomes a byte range of the tar
    that the decode stage reads in place. Caption sidecars are part of the format and never counted as
    skipped; any other member that is not a video is, by extension, as is a caption file that cannot be read.
    """
    import tarfile

    skips = skips if skips is not None else Skips()
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
                        skips.add(extension_label(member.name), member_uri)
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
