"""Opening: local paths directly, anything else through fsspec, with the failure reasons of REASONS.

Also byte-range windows of a bigger file (a video inside a tar), reads of an input's first bytes, and
local copies of remote inputs for decord.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from vtok.video.config import DecodeError


@dataclass
class _Source:
    """An opened input: what av.open takes, plus what the error paths and decord need."""

    uri: str
    target: Any
    """A local path (str) or a seekable binary file object."""
    local_path: str | None
    """Set for local files, which decord can read directly."""
    file_bytes: int | None


def _stat(uri: str, storage_options: dict | None) -> tuple[Any, str, int | None]:
    """(filesystem, path, size) for `uri`; raises DecodeError for missing, empty or non-file inputs."""
    from vtok.storage import get_fs

    try:
        fs, path = get_fs(uri, storage_options)
    except (ImportError, ValueError) as e:
        # An unknown protocol or a missing fsspec implementation: the object cannot be reached.
        raise DecodeError(uri, "missing", f"cannot resolve the URI: {type(e).__name__}: {e}") from e
    try:
        entry = fs.info(path)
    except FileNotFoundError as e:
        raise DecodeError(uri, "missing", "no such file") from e
    except PermissionError as e:
        raise DecodeError(uri, "unreadable", f"permission denied: {e}") from e
    except OSError as e:
        # It exists but stat fails: a symlink loop (ELOOP), an I/O error, a name too long.
        raise DecodeError(uri, "unreadable", f"cannot stat: {type(e).__name__}: {e}") from e
    if entry.get("type") == "directory":
        raise DecodeError(uri, "not_a_video", "is a directory")
    size = entry.get("size")
    if size == 0:
        raise DecodeError(uri, "zero_bytes", "the file is empty")
    return fs, path, size


class _RangeFile(io.RawIOBase):
    """A read-only, seekable window [offset, offset + size) of another file: a video inside a tar."""

    def __init__(self, f: Any, offset: int, size: int) -> None:
        super().__init__()
        self._f, self._offset, self._size, self._pos = f, offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = max(0, min(self._size, base + pos))
        return self._pos

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self._size - self._pos)
        if n <= 0:
            return 0
        self._f.seek(self._offset + self._pos)
        data = self._f.read(n)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


@contextmanager
def _open_source(
    uri: str, storage_options: dict | None, max_file_bytes: int | None, byte_range: tuple[int, int] | None = None
) -> Iterator[_Source]:
    from fsspec.implementations.local import LocalFileSystem

    fs, path, size = _stat(uri, storage_options)
    if byte_range is not None:
        offset, length = byte_range
        if size is not None and offset + length > size:
            raise DecodeError(uri, "truncated", f"bytes [{offset}, {offset + length}) run past the {size}-byte file")
        if length == 0:
            raise DecodeError(uri, "zero_bytes", f"the member at byte {offset} is empty")
        size = length
    if max_file_bytes is not None and size is not None and size > max_file_bytes:
        raise DecodeError(
            uri, "over_limit", f"file size (bytes) {size} exceeds decode.max_file_bytes={max_file_bytes}"
        )
    if byte_range is not None:
        with fs.open(path, "rb") as f:
            yield _Source(uri, io.BufferedReader(_RangeFile(f, byte_range[0], byte_range[1]), 1 << 16), None, size)
        return
    if isinstance(fs, LocalFileSystem):
        # FFmpeg's own file protocol is faster than reading through Python callbacks.
        yield _Source(uri, path, path, size)
        return
    with fs.open(path, "rb") as f:
        yield _Source(uri, f, None, size)


def _read_head(source: _Source, num_bytes: int) -> bytes:
    """The first bytes of the input, leaving a file object where it was."""
    if source.local_path is not None:
        try:
            with open(source.local_path, "rb") as f:
                return f.read(num_bytes)
        except FileNotFoundError as e:
            raise DecodeError(source.uri, "missing", "no such file") from e
        except OSError as e:
            # stat succeeded, so it exists: permission denied, an I/O error.
            raise DecodeError(source.uri, "unreadable", f"cannot read the file: {e}") from e
    f = source.target
    position = f.tell()
    try:
        f.seek(0)
        return f.read(num_bytes)
    finally:
        f.seek(position)


@contextmanager
def _local_copy(source: _Source) -> Iterator[str]:
    """A local path for decord: the file itself, or a streamed copy of a remote one.

    decord accepts file objects but reads them whole into memory; a temporary file bounds memory to a
    copy buffer (its size is already bounded by max_file_bytes).
    """
    if source.local_path is not None:
        yield source.local_path
        return
    suffix = os.path.splitext(source.uri.split("?", 1)[0])[1][:16]
    with tempfile.NamedTemporaryFile(prefix="vtok-", suffix=suffix) as tmp:
        source.target.seek(0)
        shutil.copyfileobj(source.target, tmp, 1 << 20)
        tmp.flush()
        yield tmp.name
