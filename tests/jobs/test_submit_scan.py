"""`vtok submit eval-scan` without a cluster: the window's submission id, the options, the checked submission.

The real submissions (a second submit in the window starts nothing) are in tests/jobs/test_submit.py, on
that module's local Ray head.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from jobs.config import ConfigError
from jobs.submit_scan import (
    prepare_scan_submission,
    scan_key,
    scan_submission_id,
    split_submit_options,
    window_start,
)

UTC = timezone.utc
RUN, DATA = "s3://runs/mllm1", "s3://tokens/heldout"


def test_one_id_per_scan_and_window() -> None:
    first = datetime(2026, 12, 1, 18, 0, 0, tzinfo=UTC)
    sid = scan_submission_id(RUN, DATA, ["tv_align", "vbench"], first)
    assert re.fullmatch(r"vtok-eval-scan-[0-9a-f]{12}-20261201T1800", sid)
    # A retry anywhere in the same hour: the same id.
    for later in (timedelta(seconds=1), timedelta(minutes=37), timedelta(minutes=59, seconds=59)):
        assert scan_submission_id(RUN, DATA, ["tv_align", "vbench"], first + later) == sid
    # The next hour: a new id.
    nxt = scan_submission_id(RUN, DATA, ["tv_align", "vbench"], first + timedelta(hours=1))
    assert nxt != sid and nxt.endswith("-20261201T1900") and nxt[:-13] == sid[:-13]
    # Another run, held-out set or suite list: another scan, another id in the same window.
    assert scan_submission_id("s3://runs/mllm2", DATA, ["tv_align", "vbench"], first) != sid
    assert scan_submission_id(RUN, "s3://tokens/heldout2", ["tv_align", "vbench"], first) != sid
    assert scan_submission_id(RUN, DATA, ["tv_align"], first) != sid
    # Spellings of the same scan: the same id.
    assert scan_submission_id(RUN + "/", DATA, ["vbench", "tv_align"], first) == sid
    assert scan_key(RUN, DATA, ["tv_align", "vbench"]) == sid.split("-")[3]


def test_windows_are_utc_and_counted_from_the_epoch() -> None:
    paris = timezone(timedelta(hours=1))
    at = datetime(2026, 12, 1, 19, 42, tzinfo=paris)  # 18:42 UTC
    assert window_start(at) == datetime(2026, 12, 1, 18, 0, tzinfo=UTC)
    assert window_start(datetime(2026, 12, 1, 18, 42)) == datetime(2026, 12, 1, 18, 0, tzinfo=UTC)  # naive = UTC
    assert window_start(at, 15) == datetime(2026, 12, 1, 18, 30, tzinfo=UTC)
    # 90 minutes does not divide a day: the windows still tile time without a gap or an overlap.
    starts = {window_start(datetime(2026, 12, 1, tzinfo=UTC) + timedelta(minutes=m), 90) for m in range(0, 24 * 60)}
    ordered = sorted(starts)
    assert all(b - a == timedelta(minutes=90) for a, b in zip(ordered, ordered[1:]))
    assert scan_submission_id(RUN, DATA, ["tv_align"], at, 1440).endswith("-20261201T0000")


def test_options_of_the_submit_are_taken_out_of_the_scan_arguments() -> None:
    args = ["run=/r", "window=30", "data=/d", "--submission-id", "mine-1", "--no-progress"]
    assert split_submit_options(args) == (["run=/r", "data=/d", "--no-progress"], 30, "mine-1")
    assert split_submit_options(["submission_id=x.y_z", "run=/r"]) == (["run=/r"], 60, "x.y_z")
    assert split_submit_options(["--submission-id=abc"]) == ([], 60, "abc")
    for bad, message in [(["window=0"], "window: 0 minutes is out of range"),
                         (["window=1h"], "window: '1h' is not a whole number of minutes"),
                         (["window=20000"], "window: 20000 minutes is out of range"),
                         (["submission_id=a b"], "submission_id: 'a b' must be"),
                         (["--submission-id"], "--submission-id: expected an id")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            split_submit_options(bad)


def test_the_scan_is_checked_here_and_pointed_at_the_cluster(tmp_path: Path) -> None:
    now = datetime(2026, 12, 1, 18, 5, tzinfo=UTC)
    args = [f"run={tmp_path}/run", f"data={tmp_path}/heldout", "suites=[tv_align]", "max_checkpoints=2",
            "lease_seconds=600", "window=120"]
    sub, sid = prepare_scan_submission(args, now=now)
    assert sub.entrypoint == (f"python -m jobs.cli eval scan ray.address=auto run={tmp_path}/run "
                              f"data={tmp_path}/heldout 'suites=[tv_align]' max_checkpoints=2 lease_seconds=600")
    assert sid == scan_submission_id(f"{tmp_path}/run", f"{tmp_path}/heldout", ["tv_align"], now, 120)
    assert sid.endswith("-20261201T1800")
    assert sub.metadata["vtok_job"] == "eval-scan" and sub.metadata["vtok_scan_window"] == "2026-12-01T18:00Z/120min"
    assert prepare_scan_submission([*args, "submission_id=rerun-2"], now=now)[1] == "rerun-2"
    assert prepare_scan_submission(args, now=now, submission_id="mine")[1] == "mine"
    # The default suites count in the id as the config resolves them.
    _, default_id = prepare_scan_submission(args[:2], now=now)
    assert default_id == scan_submission_id(f"{tmp_path}/run", f"{tmp_path}/heldout", ["tv_align"], now)
    for bad, message in [
        (["run=runs/vtok", f"data={tmp_path}/heldout"], "config key 'run': 'runs/vtok' is a relative path"),
        ([f"run={tmp_path}/run", f"data={tmp_path}/heldout", "max_chekpoints=2"], "unknown config key 'max_chekpoints'"),
        ([f"data={tmp_path}/heldout"], "config key(s) run must be set"),
        ([f"run={tmp_path}/run", f"data={tmp_path}/heldout", "suites=[tv_align,vbnech]"], "unknown suite 'vbnech'"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            prepare_scan_submission(bad, now=now)
