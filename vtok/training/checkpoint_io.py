"""Storage IO of training checkpoints, local or any fsspec store: publishing whole files, fsync, sha256,
listings, one-time downloads of remote folders, marker-first deletion.

Locally a file is spooled beside its target and renamed into place with the umask's mode, and every folder
that gained an entry is fsynced before the marker may be; on object stores a file is spooled in a scratch
folder and sent in one PUT (or one multipart upload), which readers never see half done. What a checkpoint
is (its layout, the marker, save / load / retain): vtok.training.checkpoint.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import Any

from schemas.checkpoint import COMPLETE_MARKER, FileRecord
from vtok.storage import build_once, cache_root, get_fs, honour_umask, is_local

_CHUNK = 8 << 20


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a local file, read in 8 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_dir(path: str) -> None:
    """Make the entries of a local folder (renames, deletions) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Publisher:
    """Publishes whole files under one folder (local or remote) and records what the marker will list."""

    def __init__(self, uri: str, storage_options: dict[str, Any] | None) -> None:
        self.local = is_local(uri)
        self.fs, self.root = get_fs(uri, storage_options)
        self.root = self.root.rstrip("/")
        self.records: list[FileRecord] = []
        # The run's checkpoints/ folder too: it gains this step's entry.
        self.folders: set[str] = {self.root, os.path.dirname(self.root)} if self.local else set()
        self._scratch = None if self.local else tempfile.mkdtemp(prefix="vtok-ckpt-")

    def target(self, rel: str) -> str:
        """Where `rel` is published (a path of this Publisher's filesystem)."""
        return f"{self.root}/{rel}"

    def spool(self, rel: str) -> str:
        """A fresh temporary file for `rel`'s bytes: beside the target locally (publishing is a rename), else scratch."""
        folder = os.path.dirname(self.target(rel)) if self.local else self._scratch
        assert folder is not None
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
        os.close(fd)
        honour_umask(tmp)
        return tmp

    def publish(self, tmp: str, rel: str) -> None:
        """Move a finished spool file into place (consumes `tmp`)."""
        try:
            record = FileRecord(rel, os.path.getsize(tmp), sha256_file(tmp))
            if self.local:
                # Again at the end: safetensors' save_file replaces the spool file with a 0600 one of its own.
                honour_umask(tmp)
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
                os.replace(tmp, self.target(rel))
                self.folders.add(os.path.dirname(self.target(rel)))
            else:
                self.fs.put_file(tmp, self.target(rel))
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self.records.append(record)

    def publish_copy(self, src: Path, rel: str) -> None:
        """Publish a copy of the local file `src` as `rel`."""
        if self.local:
            tmp = self.spool(rel)
            shutil.copyfile(src, tmp)
            self.publish(tmp, rel)
            return
        # Straight from the source: no second local copy of a multi-GB model file.
        record = FileRecord(rel, src.stat().st_size, sha256_file(src))
        self.fs.put_file(str(src), self.target(rel))
        self.records.append(record)

    def publish_bytes(self, data: bytes, rel: str) -> None:
        """Publish `data` as `rel`."""
        tmp = self.spool(rel)
        with open(tmp, "wb") as f:
            f.write(data)
        self.publish(tmp, rel)

    def durable(self) -> None:
        """Make every rename so far durable before the marker can be (a crash must not keep the marker only)."""
        if self.local:
            for folder in sorted(self.folders, key=len, reverse=True):
                fsync_dir(folder)

    def close(self) -> None:
        """Remove the scratch folder of a remote target."""
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)


def local_files(folder: Path) -> list[tuple[Path, str]]:
    """Every file under a local folder (symlinks followed: HF cache snapshots are links) and its relative path."""
    found: list[tuple[Path, str]] = []
    for here, subdirs, names in os.walk(folder, followlinks=True):
        subdirs.sort()
        for name in sorted(names):
            path = Path(here) / name
            found.append((path, path.relative_to(folder).as_posix()))
    return found


def fresh_fs(uri: str, storage_options: dict[str, Any] | None) -> tuple[Any, str]:
    """(filesystem, path without a trailing slash) of `uri`, with no stale listing cached for a remote one."""
    fs, path = get_fs(uri, storage_options)
    if not is_local(uri):
        # Another process (a previous attempt, the trainer's rank 0) may have written since fsspec listed.
        fs.invalidate_cache()
    return fs, path.rstrip("/")


def listing(fs: Any, root: str) -> dict[str, int]:
    """Relative path -> size of every file under `root` ({} when there is nothing)."""
    if not fs.exists(root):
        return {}
    found = fs.find(root, detail=True)
    return {p[len(root) + 1 :]: int(info["size"]) for p, info in found.items() if p.startswith(root + "/")}


def download_once(fs: Any, root: str, dirs: Collection[str], files: Iterable[str], key: str,
                  check: Callable[[Path, str], object]) -> dict[str, Path]:
    """Local copies of the folders `dirs` of the remote folder `root`, downloaded once into vtok's cache under
    `key`: `files` are their files' paths relative to `root`, and `check(local path, rel)` vets each as it lands
    (raising refuses the download, so nothing half-checked is kept)."""
    target = cache_root() / "checkpoints" / key

    def fill(staging: Path) -> None:
        for name in dirs:
            (staging / name).mkdir(exist_ok=True)
        for rel in files:
            local = staging / rel
            local.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(f"{root}/{rel}", str(local))
            check(local, rel)

    build_once(target, fill)
    return {name: target / name for name in dirs}


def delete_checkpoint_folder(uri: str, storage_options: dict[str, Any] | None) -> None:
    """Remove one checkpoint folder, the marker first: a half-deleted checkpoint is never taken for complete."""
    fs, root = fresh_fs(uri, storage_options)
    marker = f"{root}/{COMPLETE_MARKER}"
    if is_local(uri):
        if os.path.lexists(marker):
            os.unlink(marker)
            fsync_dir(root)
        if os.path.isdir(root):
            shutil.rmtree(root)
        return
    if fs.exists(marker):
        fs.rm_file(marker)
    if fs.exists(root):
        fs.rm(root, recursive=True)
