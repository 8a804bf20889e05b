"""Leases per (checkpoint, suite) on local disk and on S3 (the moto server): one holder at a time, expiry
takeover, renewal and release only by the holder, and races between threads that only one wins. No Ray."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from pipelines.evaluate.lease import (
    Lease,
    acquire_lease,
    lease_uri,
    new_owner_id,
    read_lease,
    release_lease,
    renew_lease,
)


@pytest.fixture(params=["local", "s3"])
def run_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A run folder: local, or a fresh bucket on the moto server."""
    if request.param == "local":
        return str(tmp_path / "run")
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/runs/vtok"


def _race(n: int, fn: Callable[[int], tuple[bool, Lease]]) -> list[tuple[bool, Lease]]:
    """`fn(i)` in n threads released at once; their results in thread order."""
    barrier = threading.Barrier(n)
    out: list[tuple[bool, Lease] | None] = [None] * n
    errors: list[BaseException] = []

    def work(i: int) -> None:
        barrier.wait()
        try:
            out[i] = fn(i)
        except BaseException as err:  # noqa: BLE001 - re-raised by the test below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return [r for r in out if r is not None]


def test_one_holder_until_it_releases(run_uri: str) -> None:
    uri = lease_uri(run_uri, "step_00000010", "tv_align")
    assert uri == f"{run_uri}/eval/leases/step_00000010__tv_align.json"
    a, b = new_owner_id(), new_owner_id()
    assert a != b
    taken, mine = acquire_lease(uri, a, 60.0, attempt=2, now=1000.0)
    assert taken and mine.owner == a and (mine.taken_at, mine.expires_at, mine.attempt) == (1000.0, 1060.0, 2)
    stored = read_lease(uri)
    assert stored is not None and stored.record() == mine.record()
    assert set(stored.record()) == {"owner", "host", "pid", "taken_at", "expires_at", "attempt"}
    taken, holder = acquire_lease(uri, b, 60.0, now=1059.0)  # a second before it expires
    assert not taken and holder.owner == a and holder.expires_at == 1060.0
    # Only the holder releases it: b's lease object names b, so the stored one is left alone.
    fake = Lease(uri=uri, owner=b, host="h", pid=1, taken_at=1000.0, expires_at=1060.0, attempt=1)
    assert not release_lease(fake)
    assert read_lease(uri).owner == a
    assert release_lease(mine)
    assert read_lease(uri) is None
    assert not release_lease(mine)  # nothing left to release
    taken, theirs = acquire_lease(uri, b, 60.0, now=1059.0)
    assert taken and theirs.owner == b


def test_an_expired_lease_is_taken_over_and_its_old_holder_can_neither_renew_nor_release(run_uri: str) -> None:
    uri = lease_uri(run_uri, "step_00000020", "tv_align")
    dead, alive = new_owner_id(), new_owner_id()
    _, old = acquire_lease(uri, dead, 30.0, now=1000.0)
    renewed = renew_lease(old, 30.0, now=1020.0)
    assert renewed is not None and renewed.expires_at == 1050.0 and read_lease(uri).expires_at == 1050.0
    taken, holder = acquire_lease(uri, alive, 30.0, now=1049.0)
    assert not taken and holder.owner == dead  # renewed: not expired yet
    taken, new = acquire_lease(uri, alive, 30.0, attempt=2, now=1050.0)
    assert taken and new.owner == alive and new.attempt == 2 and read_lease(uri).owner == alive
    assert renew_lease(renewed, 30.0, now=1051.0) is None
    assert not release_lease(renewed)
    assert read_lease(uri).owner == alive
    assert release_lease(new) and read_lease(uri) is None


@pytest.mark.parametrize("expired", [False, True], ids=["fresh", "takeover"])
def test_threads_racing_for_a_lease_one_wins(run_uri: str, expired: bool) -> None:
    # Many rounds locally: a takeover that once removed the expired file before creating its own gave two
    # winners in about one race of four.
    for round_ in range(2 if run_uri.startswith("s3://") else 25):
        uri = lease_uri(run_uri, f"step_{30 + round_:08d}", "vbench")
        if expired:
            acquire_lease(uri, "dead-scan", 10.0, now=0.0)
        owners = [new_owner_id() for _ in range(6)]
        results = _race(len(owners), lambda i, uri=uri, owners=owners: acquire_lease(uri, owners[i], 600.0))
        winners = [lease.owner for taken, lease in results if taken]
        assert len(winners) == 1, results
        # Every loser names the winner as the holder, and the stored lease is the winner's.
        assert {lease.owner for taken, lease in results if not taken} == set(winners)
        assert read_lease(uri).owner == winners[0]


def test_a_corrupt_lease_is_taken_over_and_bad_seconds_refused(tmp_path: Path) -> None:
    uri = lease_uri(str(tmp_path / "run"), "step_00000040", "tv_align")
    Path(uri).parent.mkdir(parents=True)
    Path(uri).write_text("{not json")
    taken, lease = acquire_lease(uri, "me", 5.0)
    assert taken and json.loads(Path(uri).read_text())["owner"] == "me"
    assert sorted(p.name for p in Path(uri).parent.iterdir()) == [Path(uri).name]  # no temp file left
    with pytest.raises(ValueError, match="lease_seconds must be > 0, got 0"):
        acquire_lease(uri, "me", 0)
