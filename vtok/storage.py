"""URIs: local paths and any fsspec URI (s3://, gs://, memory://) behind one set of helpers."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import fsspec
from fsspec.core import url_to_fs


def is_local(uri: str) -> bool:
    """True for a plain path or a file:// URI."""
    return "://" not in uri or uri.startswith("file://")


def strip_file_scheme(uri: str) -> str:
    return uri[len("file://") :] if uri.startswith("file://") else uri


def get_fs(uri: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem that serves `uri` and the path within it."""
    return url_to_fs(uri, **(storage_options or {}))


def join(base: str, *parts: str) -> str:
    """Join URI segments with '/', keeping the scheme of `base`."""
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def resolve(base_dir: str, uri: str) -> str:
    """`uri` as given when absolute (a scheme or a leading '/'), else relative to `base_dir`."""
    if "://" in uri or uri.startswith("/"):
        return uri
    return join(base_dir, uri)


def parent(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[0] if "/" in uri.rstrip("/") else "."


def cache_root() -> Path:
    """Where vtok keeps things a command can rebuild: saved tiny models, downloaded model dirs."""
    return Path(os.environ.get("VTOK_CACHE", Path.home() / ".cache" / "vtok"))


def localize_dir(uri: str, storage_options: dict[str, Any] | None = None) -> Path:
    """A local copy of a remote directory (e.g. a model on s3://), downloaded once into the cache.

    A local path is returned as is. The copy is made in a temporary folder and renamed into place,
    so concurrent workers never see a half-downloaded model.
    """
    if is_local(uri):
        path = Path(strip_file_scheme(uri))
        if not path.is_dir():
            raise FileNotFoundError(f"{uri}: not a directory")
        return path
    fs, root = get_fs(uri, storage_options)
    if not fs.isdir(root):
        raise FileNotFoundError(f"{uri}: no such directory")
    files = sorted(fs.find(root))
    listing = "\n".join(f"{f}:{fs.size(f)}" for f in files)
    digest = hashlib.sha256(f"{uri}\n{listing}".encode()).hexdigest()[:16]
    target = cache_root() / "remote" / digest
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".staging-"))
    try:
        for remote in files:
            rel = remote[len(root.rstrip("/")) + 1 :]
            local = staging / rel
            local.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(remote, str(local))
        try:
            staging.rename(target)
        except OSError:
            # Another worker finished first; its copy is identical.
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
