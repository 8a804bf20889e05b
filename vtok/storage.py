"""URIs: local paths and any fsspec URI (s3://, gs://, memory://) behind one set of helpers."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from vtok.errors import EXIT_BAD_INPUT, EXIT_STORAGE, VtokError


def is_local(uri: str) -> bool:
    """True for a plain path or a file:// URI."""
    return "://" not in uri or uri.startswith("file://")


def strip_file_scheme(uri: str) -> str:
    return uri[len("file://") :] if uri.startswith("file://") else uri


class StorageError(VtokError, RuntimeError):
    """A URI that cannot be used: missing bucket, unreachable endpoint, refused credentials, read-only."""

    exit_code = EXIT_STORAGE


class NotFoundError(StorageError):
    """A URI that names nothing (no such path, no such bucket): bad input, not a storage fault."""

    exit_code = EXIT_BAD_INPUT


# Retries for object stores: 503 SlowDown, throttling and dropped connections back off and retry.
S3_RETRIES = {"max_attempts": 10, "mode": "adaptive"}


def protocol_of(uri: str) -> str:
    return "file" if is_local(uri) else uri.split("://", 1)[0]


def options_for(uri: str, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """fsspec options for `uri`: none for local paths; for S3, vtok's retry policy under the user's options.

    The endpoint comes from `storage_options["endpoint_url"]` or, as for every AWS tool, from
    AWS_ENDPOINT_URL (botocore reads it); credentials from the standard chain (env, profile, role).
    """
    if is_local(uri):
        return {}
    opts = dict(storage_options or {})
    if protocol_of(uri) in ("s3", "s3a"):
        config_kwargs = dict(opts.get("config_kwargs") or {})
        config_kwargs.setdefault("retries", S3_RETRIES)
        opts["config_kwargs"] = config_kwargs
    return opts


def get_fs(uri: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem that serves `uri` and the path within it."""
    if is_local(uri):
        return url_to_fs(strip_file_scheme(uri))
    return url_to_fs(uri, **options_for(uri, storage_options))


def _explain(uri: str, err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}"
    lowered = text.lower()
    if "nosuchbucket" in lowered or "bucket does not exist" in lowered:
        return f"{uri}: the bucket does not exist ({text})"
    if "could not connect" in lowered or "endpointconnectionerror" in lowered or "connect" in lowered:
        return f"{uri}: cannot reach the storage endpoint ({text}); check endpoint_url / AWS_ENDPOINT_URL"
    if any(w in lowered for w in ("accessdenied", "forbidden", "invalidaccesskeyid", "signaturedoesnotmatch",
                                  "nocredentials", "permission")):
        return f"{uri}: access refused ({text}); check the credentials (env, profile or instance role)"
    return f"{uri}: {text}"


def _fast_fail_fs(uri: str, storage_options: dict[str, Any] | None) -> tuple[fsspec.AbstractFileSystem, str]:
    """A filesystem that gives up quickly: pre-flight checks must not sit in retry loops."""
    if is_local(uri):
        return get_fs(uri)
    opts = options_for(uri, storage_options)
    if protocol_of(uri) in ("s3", "s3a"):
        opts["config_kwargs"] = {**opts["config_kwargs"], "retries": {"max_attempts": 2, "mode": "standard"},
                                 "connect_timeout": 5}
        opts["skip_instance_cache"] = True
    return url_to_fs(uri, **opts)


def check_readable(uri: str, storage_options: dict[str, Any] | None = None) -> None:
    """Fail now, naming `uri`, if it does not exist or cannot be reached."""
    bucket_missing = False
    try:
        fs, path = _fast_fail_fs(uri, storage_options)
        exists = fs.exists(path)
        if not exists and not is_local(uri):
            # exists() swallows errors; ls() of the bucket surfaces the real one (no bucket, refused keys).
            try:
                fs.ls(path.split("/", 1)[0], detail=False)
            except FileNotFoundError:
                bucket_missing = True
    except Exception as err:  # noqa: BLE001 - every backend raises its own types
        raise StorageError(_explain(uri, err)) from err
    if bucket_missing:
        raise NotFoundError(f"{uri}: the bucket does not exist")
    if not exists:
        raise NotFoundError(f"{uri}: does not exist")


def check_writable(uri: str, storage_options: dict[str, Any] | None = None) -> None:
    """Fail now, naming `uri`, if a small object cannot be written (and deleted) under it."""
    try:
        fs, path = _fast_fail_fs(uri, storage_options)
        # Beside vtok's names, not inside _vtok/: a probe left by a run killed here must not make a
        # foreign folder look like a vtok dataset, nor a fresh one look foreign.
        probe = f"{path.rstrip('/')}/.vtok-write-probe-{os.getpid()}"
        if is_local(uri):
            os.makedirs(path, exist_ok=True)
        fs.pipe_file(probe, b"ok")
        fs.rm_file(probe)
    except Exception as err:  # noqa: BLE001 - every backend raises its own types
        raise StorageError(_explain(uri, err)) from err


def current_umask() -> int:
    """This process's umask, read without changing it (os.umask can only be read by setting it, which races
    with threads creating files at that moment)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def honour_umask(path: str | Path) -> None:
    """Give a temporary file or folder (mkstemp/mkdtemp make them 0600/0700) the mode that open() or mkdir
    would have, so a dataset renamed into place is readable by whoever the umask lets read it."""
    base = 0o777 if os.path.isdir(path) else 0o666
    os.chmod(path, base & ~current_umask())


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

    def fill(staging: Path) -> None:
        for remote in files:
            local = staging / remote[len(root.rstrip("/")) + 1 :]
            local.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(remote, str(local))

    return build_once(target, fill)


def build_once(target: Path, fill: Callable[[Path], None]) -> Path:
    """`target` made by `fill(staging_folder)` and renamed into place, unless it exists already.

    Readers never see a half-made folder; when two processes build it at once, the first rename wins and
    the other's identical copy is dropped.
    """
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".staging-"))
    honour_umask(staging)
    try:
        fill(staging)
        try:
            staging.rename(target)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)  # another process finished first
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def write_bytes_atomic(uri: str, data: bytes, storage_options: dict[str, Any] | None = None) -> None:
    """Whole-object write that readers never see half done.

    Locally: a temporary file in the same folder, then rename. On object stores a single PUT only
    becomes visible once complete, so the bytes go straight to the final key.
    """
    if is_local(uri):
        path = strip_file_scheme(uri)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-")
        try:
            honour_umask(tmp)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return
    fs, path = get_fs(uri, storage_options)
    fs.pipe_file(path, data)


def read_json(uri: str, storage_options: dict[str, Any] | None = None) -> Any | None:
    fs, path = get_fs(uri, storage_options)
    if not fs.exists(path):
        return None
    with fs.open(path, "rb") as f:
        return json.loads(f.read())


def write_json(uri: str, value: Any, storage_options: dict[str, Any] | None = None) -> None:
    write_bytes_atomic(uri, json.dumps(value, indent=2, sort_keys=True).encode(), storage_options)
