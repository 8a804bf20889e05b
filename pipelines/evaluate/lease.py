"""A lease per (checkpoint, suite) on the run's storage, so two scans never evaluate the same pair at once.

    RUN/eval/leases/<checkpoint>__<suite>.json   {"owner", "host", "pid", "taken_at", "expires_at", "attempt"}

Taken atomically, so of two scans racing for a pair exactly one gets it:

- locally, the lease is written whole to a temp file and hard-linked to its name; link() fails when the name
  exists, so a reader never sees a half-written lease either (an O_EXCL create would show an empty file to
  a reader, and leave one behind, if the writer died between create and write);
- on S3, one PUT with If-None-Match: * (a conditional create: 412 when the key exists).

A lease past `expires_at` belongs to a scan that died (SIGKILL, a lost node): it is taken over atomically too,
on S3 by a PUT with If-Match: <the expired object's ETag> (compare-and-swap: of two scans taking over, the
second's ETag is stale), locally by renaming a new lease over it while holding the lease's guard (an exclusive
create of a dot file beside it, which renewal and release take too; the lease is never removed to be replaced,
so a fresh exclusive create cannot slip in). A holder renews its lease (renew_lease) before it
expires, the same way; release deletes it only while it is still the holder's.

Expiry compares wall clocks of different hosts: lease_seconds must exceed the clock skew by far (NTP keeps it
well under a second).
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Any

from schemas.eval_result import EVAL_DIR, NAME_SEPARATOR
from vtok.storage import get_fs, is_local, join, strip_file_scheme

LEASES_DIR = f"{EVAL_DIR}/leases"
"""RUN/eval/leases/: one JSON object per (checkpoint, suite) being evaluated."""


@dataclass(frozen=True)
class Lease:
    """One lease as stored, plus where it is and (on S3) the version it was read or written as."""

    uri: str
    """The lease object: RUN/eval/leases/<checkpoint>__<suite>.json."""
    owner: str
    """The holder's id, unique per scan process (new_owner_id)."""
    host: str
    """The holder's host name."""
    pid: int
    """The holder's process id."""
    taken_at: float
    """When it was taken or last renewed (Unix seconds)."""
    expires_at: float
    """After this (Unix seconds) any scan may take it over."""
    attempt: int
    """Which attempt at evaluating the pair the holder is making (1 = the first)."""
    etag: str | None = None
    """The S3 object's ETag when read or written (the compare-and-swap token); None locally."""

    def expired(self, now: float | None = None) -> bool:
        """Whether the lease may be taken over at `now` (default: the current time)."""
        return (time.time() if now is None else now) >= self.expires_at

    def record(self) -> dict[str, Any]:
        """The stored JSON object."""
        return {k: v for k, v in asdict(self).items() if k not in ("uri", "etag")}


def new_owner_id() -> str:
    """An id no other scan has: host, pid and a random part (a pid is reused, a uuid4 is not)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def lease_uri(run_uri: str, checkpoint: str, suite: str) -> str:
    """RUN/eval/leases/<checkpoint>__<suite>.json."""
    return join(run_uri, LEASES_DIR, f"{checkpoint}{NAME_SEPARATOR}{suite}.json")


def _parse(uri: str, data: bytes, etag: str | None) -> Lease:
    """The lease stored as `data`; an unreadable one (not JSON, missing keys) reads as long expired, so a scan
    takes it over instead of being blocked by garbage forever."""
    try:
        raw = json.loads(data)
        return Lease(uri=uri, owner=str(raw["owner"]), host=str(raw["host"]), pid=int(raw["pid"]),
                     taken_at=float(raw["taken_at"]), expires_at=float(raw["expires_at"]),
                     attempt=int(raw["attempt"]), etag=etag)
    except (ValueError, TypeError, KeyError, AttributeError):
        return Lease(uri=uri, owner="unreadable", host="?", pid=0, taken_at=0.0, expires_at=0.0, attempt=0,
                     etag=etag)


def _encode(lease: Lease) -> bytes:
    return json.dumps(lease.record(), sort_keys=True).encode()


# ---------------------------------------------------------------------------------------------- local


def _local_read(uri: str, path: str) -> Lease | None:
    try:
        with open(path, "rb") as f:
            return _parse(uri, f.read(), None)
    except FileNotFoundError:
        return None


def _local_create(path: str, data: bytes) -> bool:
    """Publish `data` at `path` unless something is there: True when this call created it."""
    from vtok.training.checkpoint_io import fsync_dir  # vtok.training imports torch

    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-lease-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        fsync_dir(folder)
        return True
    finally:
        os.unlink(tmp)


_GUARD_STALE_S = 30.0
"""A mutation guard older than this was left by a process that died holding it (a guarded step takes ms)."""


@contextmanager
def _local_guard(path: str) -> Iterator[None]:
    """Serialise the changes to an existing local lease (takeover, renewal, release) by an exclusive create of
    a dot file beside it. A lease is never removed to be replaced, so the exclusive create of a fresh lease
    (os.link) cannot slip in while a takeover is half done."""
    folder, name = os.path.split(path)
    guard = os.path.join(folder, f".{name}.guard")
    deadline = time.monotonic() + 4 * _GUARD_STALE_S
    while True:
        try:
            os.close(os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            break
        except FileExistsError:
            try:
                if time.time() - os.stat(guard).st_mtime > _GUARD_STALE_S:
                    os.unlink(guard)
                    continue
            except FileNotFoundError:
                continue
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path}: its guard {guard} stays taken") from None
            time.sleep(0.005)
    try:
        yield
    finally:
        os.unlink(guard)


def _local_replace(path: str, data: bytes) -> None:
    """`data` at `path` in one rename over it: readers see the old lease or the new one, whole."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-lease-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------- S3


def _s3_parts(uri: str, storage_options: dict[str, Any] | None) -> tuple[Any, str, str]:
    fs, path = get_fs(uri, storage_options)
    bucket, _, key = path.partition("/")
    return fs, bucket, key


def _precondition_failed(err: BaseException) -> bool:
    """Whether a conditional request was refused because the object is not as required (412), or because a
    concurrent conditional write to the key won (409 ConditionalRequestConflict)."""
    for e in (err, err.__cause__):
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            code = str(response.get("Error", {}).get("Code", ""))
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                return True
    return isinstance(err, FileExistsError)


def _s3_read(uri: str, storage_options: dict[str, Any] | None) -> Lease | None:
    """The lease and its ETag from one GET (the body and the ETag of one version, never of two)."""
    from fsspec.asyn import sync

    fs, bucket, key = _s3_parts(uri, storage_options)

    async def get() -> tuple[bytes, str] | None:
        try:
            response = await fs._call_s3("get_object", Bucket=bucket, Key=key)
        except FileNotFoundError:
            return None
        async with response["Body"] as stream:
            return await stream.read(), str(response["ETag"])

    got = sync(fs.loop, get)
    return None if got is None else _parse(uri, got[0], got[1])


def _s3_put(lease: Lease, storage_options: dict[str, Any] | None, if_match: str | None) -> Lease | None:
    """PUT `lease`: a create (If-None-Match: *) or, with `if_match`, a swap of that version. The lease as
    written (with its ETag), or None when the condition failed."""
    fs, bucket, key = _s3_parts(lease.uri, storage_options)
    condition = {"IfMatch": if_match} if if_match else {"IfNoneMatch": "*"}
    try:
        response = fs.call_s3("put_object", Bucket=bucket, Key=key, Body=_encode(lease),
                              ContentType="application/json", **condition)
    except (OSError, FileExistsError) as err:
        if _precondition_failed(err):
            return None
        raise
    return replace(lease, etag=str(response["ETag"]))


def _s3_delete(lease: Lease, storage_options: dict[str, Any] | None) -> bool:
    """Delete the version `lease.etag` of the lease (If-Match): False when it changed meanwhile."""
    fs, bucket, key = _s3_parts(lease.uri, storage_options)
    try:
        fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=lease.etag)
    except FileNotFoundError:
        return True
    except OSError as err:
        if _precondition_failed(err):
            return False
        # A store without conditional deletes (newer on S3 than conditional PUTs): the owner was checked just
        # before, so only a holder that overran its lease can race a takeover here.
        fs.call_s3("delete_object", Bucket=bucket, Key=key)
    return True


# ---------------------------------------------------------------------------------------------- the API


def read_lease(uri: str, storage_options: dict[str, Any] | None = None) -> Lease | None:
    """The lease at `uri`, or None when there is none."""
    if is_local(uri):
        return _local_read(uri, strip_file_scheme(uri))
    return _s3_read(uri, storage_options)


def acquire_lease(uri: str, owner: str, seconds: float, attempt: int = 1,
                  storage_options: dict[str, Any] | None = None, now: float | None = None) -> tuple[bool, Lease]:
    """Take the lease at `uri` for `seconds`: (True, ours) when this call holds it now, (False, the holder's)
    when another holder's unexpired lease is there. An expired lease is taken over."""
    if seconds <= 0:
        raise ValueError(f"lease_seconds must be > 0, got {seconds}")
    started = time.time() if now is None else now
    ours = Lease(uri=uri, owner=owner, host=socket.gethostname(), pid=os.getpid(), taken_at=started,
                 expires_at=started + seconds, attempt=attempt)
    # Bounded: each turn either succeeds, finds a live holder, or lost a race that changed the lease.
    for _ in range(8):
        if is_local(uri):
            path = strip_file_scheme(uri)
            if _local_create(path, _encode(ours)):
                return True, ours
            with _local_guard(path):
                holder = _local_read(uri, path)
                if holder is None:
                    continue  # released between our create and our read
                if not holder.expired(started):
                    return False, holder
                _local_replace(path, _encode(ours))
                return True, ours
        written = _s3_put(ours, storage_options, None)
        if written is not None:
            return True, written
        holder = _s3_read(uri, storage_options)
        if holder is None:
            continue
        if holder.owner == owner:
            # Our own PUT landed but its reply was lost and the retry saw it: it is ours.
            return True, holder
        if not holder.expired(started):
            return False, holder
        written = _s3_put(ours, storage_options, holder.etag)
        if written is not None:
            return True, written
    holder = read_lease(uri, storage_options)
    if holder is None:
        raise RuntimeError(f"{uri}: could not take the lease (it kept changing)")
    return False, holder


def renew_lease(lease: Lease, seconds: float, storage_options: dict[str, Any] | None = None,
                now: float | None = None) -> Lease | None:
    """Extend our `lease` to `seconds` from now: the renewed lease, or None when it is no longer ours (it
    expired and another scan took it over)."""
    started = time.time() if now is None else now
    fresh = replace(lease, taken_at=started, expires_at=started + seconds)
    if is_local(lease.uri):
        path = strip_file_scheme(lease.uri)
        with _local_guard(path):
            current = _local_read(lease.uri, path)
            if current is None or current.owner != lease.owner:
                return None
            _local_replace(path, _encode(fresh))
        return fresh
    if lease.etag is None:
        raise ValueError(f"{lease.uri}: an S3 lease without its ETag cannot be renewed")
    return _s3_put(fresh, storage_options, lease.etag)


def release_lease(lease: Lease, storage_options: dict[str, Any] | None = None) -> bool:
    """Delete our `lease` if it is still ours; True when it was (and is now gone)."""
    if is_local(lease.uri):
        path = strip_file_scheme(lease.uri)
        with _local_guard(path):
            current = _local_read(lease.uri, path)
            if current is None or current.owner != lease.owner:
                return False
            os.unlink(path)
        return True
    current = _s3_read(lease.uri, storage_options)
    if current is None or current.owner != lease.owner:
        return False
    return _s3_delete(current, storage_options)
