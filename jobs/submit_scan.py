"""`vtok submit eval-scan`: the scheduled `vtok eval scan` job, submitted at most once per scan window.

A schedule (cron, a Kubernetes CronJob, Airflow) retries: cron runs the line again after a reboot, an
operator reruns a failed task, two schedulers overlap for a while. Every such submit within one window
gets the same Ray submission id, `vtok-eval-scan-<hash of run, data, suites>-<window start, UTC>`, and
Ray's job table refuses a second job with an id it already holds, atomically (a put without overwrite in
the GCS key-value store); the refusal is answered with `already submitted: ID (STATUS)` and exit 0 (with
--follow, while that job still runs, its logs are followed instead). The scan's own leases make two scans safe
anyway: the id only spares the cluster a redundant job.

Keys of this command, beside the scan's own (`vtok eval scan run=... data=... suites=[...] ...`):
  window=MINUTES        the scan window, counted from the Unix epoch in UTC (default 60)
  submission_id=ID      (or --submission-id ID) an id of your own instead of the window's
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shlex
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs.config import ConfigError
from jobs.submit import (
    DEFAULT_PYTHON,
    Submission,
    SubmitError,
    _relocate_config_file,
    build_runtime_env,
    connect,
    describe,
    follow,
    for_the_cluster,
    project_dir,
)
from vtok.secrets import mask_text

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

logger = logging.getLogger(__name__)

EVAL_SCAN_JOB = "eval-scan"
"""What `vtok submit` calls the job; it runs `vtok eval scan ...` on the cluster."""
SCAN_COMMAND = ("eval", "scan")
DEFAULT_WINDOW_MINUTES = 60
MAX_WINDOW_MINUTES = 7 * 24 * 60
ID_PREFIX = "vtok-eval-scan"
PATH_KEYS = ("run", "data", "decoder", "compare")
"""Scan keys naming storage, which a cluster job can only reach as a URI or an absolute path."""
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def window_start(now: datetime, window_minutes: int = DEFAULT_WINDOW_MINUTES) -> datetime:
    """The UTC start of the window holding `now`: windows of `window_minutes` counted from the Unix epoch.

    A naive `now` is taken as UTC. From the epoch, not the day, so a window that does not divide a day
    (90 minutes) still never straddles two ids.
    """
    if not 1 <= window_minutes <= MAX_WINDOW_MINUTES:
        raise ConfigError(f"window: {window_minutes} minutes is out of range; give 1 to {MAX_WINDOW_MINUTES}")
    moment = now if now.tzinfo is not None else now.replace(tzinfo=timezone.utc)
    seconds = int((moment - _EPOCH).total_seconds())
    size = window_minutes * 60
    return _EPOCH + timedelta(seconds=seconds - seconds % size)


def scan_key(run: str, data: str, suites: Sequence[str]) -> str:
    """12 hex digits naming what a scan evaluates: trailing slashes and the order of the suites do not count."""
    what = {"run": run.rstrip("/"), "data": data.rstrip("/"), "suites": sorted(set(suites))}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]


def scan_submission_id(
    run: str, data: str, suites: Sequence[str], now: datetime, window_minutes: int = DEFAULT_WINDOW_MINUTES
) -> str:
    """`vtok-eval-scan-<scan_key>-<window start as YYYYmmddTHHMM, UTC>`: one id per scan and window."""
    start = window_start(now, window_minutes)
    return f"{ID_PREFIX}-{scan_key(run, data, suites)}-{start:%Y%m%dT%H%M}"


def split_submit_options(args: Sequence[str]) -> tuple[list[str], int, str | None]:
    """(the scan's own arguments, window minutes, submission id or None) from `vtok submit eval-scan ARGS`."""
    rest: list[str] = []
    window, submission_id = DEFAULT_WINDOW_MINUTES, None
    items = list(args)
    i = 0
    while i < len(items):
        item = items[i]
        if item == "--submission-id":
            if i + 1 >= len(items):
                raise ConfigError("--submission-id: expected an id after it")
            submission_id, i = items[i + 1], i + 2
            continue
        if item.startswith(("--submission-id=", "submission_id=")):
            submission_id = item.split("=", 1)[1]
        elif item.startswith("window="):
            text = item.split("=", 1)[1]
            try:
                window = int(text)
            except ValueError:
                raise ConfigError(f"window: {text!r} is not a whole number of minutes") from None
            window_start(_EPOCH, window)  # the range check, naming the key
        else:
            rest.append(item)
        i += 1
    if submission_id is not None and not _valid_id(submission_id):
        raise ConfigError(f"submission_id: {submission_id!r} must be 1-128 letters, digits, '-', '_' or '.'")
    return rest, window, submission_id


def _valid_id(text: str) -> bool:
    return 0 < len(text) <= 128 and all(c.isascii() and (c.isalnum() or c in "-_.") for c in text)


def load_scan_config(overrides: list[str], config_file: str | None) -> Any:
    """The scan's typed config, as `vtok eval scan` on the cluster will load it (ConfigError naming a key)."""
    from jobs.registry import commands

    command = commands().get(EVAL_SCAN_JOB)
    if command is None or command.load_config is None:
        raise ConfigError(f"this vtok has no {EVAL_SCAN_JOB} job to submit (jobs/commands.py registers none)")
    return command.load_config(overrides, config_file)


def validate_scan_args(args: list[str], working_dir: Path) -> tuple[list[str], Any]:
    """Check `vtok eval scan ARGS` here, as the cluster would; return the arguments to run there and the config.

    A scan left at `ray.address: null` gets `ray.address=auto`, so it runs on the cluster it was submitted to.
    """
    from jobs.cli import build_parser

    args, config_file = _relocate_config_file(args, working_dir)
    # argparse reports its own errors (and exits 2) exactly as `vtok eval scan ...` would on the cluster.
    build_parser().parse_args([*SCAN_COMMAND, *args])
    overrides = [a for a in args if "=" in a and not a.startswith("-")]
    cfg = load_scan_config(overrides, config_file)
    return for_the_cluster(args, cfg, PATH_KEYS), cfg


def prepare_scan_submission(
    args: Sequence[str],
    working_dir: Path | None = None,
    forward_credentials: bool = False,
    extra_env: list[str] | None = None,
    python: str = DEFAULT_PYTHON,
    now: datetime | None = None,
    submission_id: str | None = None,
) -> tuple[Submission, str]:
    """The scan's submission and its id (`submission_id`, `submission_id=` in args, or the window's)."""
    from vtok import __version__

    root = (working_dir or project_dir()).resolve()
    if not (root / "jobs" / "cli.py").is_file():
        raise ConfigError(f"--working-dir {root}: not a vtok project (no jobs/cli.py)")
    scan_args, window, arg_id = split_submit_options(args)
    final_args, cfg = validate_scan_args(scan_args, root)
    moment = now or datetime.now(timezone.utc)
    chosen = submission_id or arg_id or scan_submission_id(cfg.run, cfg.data, list(cfg.suites), moment, window)
    if not _valid_id(chosen):
        raise ConfigError(f"--submission-id: {chosen!r} must be 1-128 letters, digits, '-', '_' or '.'")
    submission = Submission(
        job=EVAL_SCAN_JOB,
        args=final_args,
        entrypoint=scan_entrypoint(final_args, python),
        runtime_env=build_runtime_env(root, forward_credentials=forward_credentials, extra_env=extra_env),
        metadata={"vtok_job": EVAL_SCAN_JOB, "vtok_version": __version__,
                  "vtok_scan_window": f"{window_start(moment, window):%Y-%m-%dT%H:%MZ}/{window}min"},
    )
    return submission, chosen


def scan_entrypoint(args: list[str], python: str = DEFAULT_PYTHON) -> str:
    """The shell command the cluster runs: `python -m jobs.cli eval scan ARGS`, quoted for its shell."""
    return shlex.join([python, "-m", "jobs.cli", *SCAN_COMMAND, *args])


def submit_once(client: JobSubmissionClient, submission: Submission, submission_id: str) -> tuple[str, str | None]:
    """Submit under `submission_id`; (id, None) when it started, (id, its status) when the id was already taken."""
    try:
        client.submit_job(entrypoint=submission.entrypoint, runtime_env=submission.runtime_env,
                          metadata=submission.metadata, submission_id=submission_id)
        return submission_id, None
    except Exception as err:  # noqa: BLE001 - the Job API reports refusals as RuntimeError with HTTP text
        if "already exists" not in str(err):
            raise SubmitError(f"the cluster refused the job: {mask_text(str(err))}") from None
    try:
        status = str(client.get_job_status(submission_id))
    except Exception:  # noqa: BLE001 - taken a moment ago; a status we cannot read is still a taken id
        status = "status unknown"
    return submission_id, status


def cmd_submit_eval_scan(args: argparse.Namespace) -> int:
    """`vtok submit [--follow] [--submission-id ID] eval-scan run=... data=... [window=M] ...`."""
    submission, submission_id = prepare_scan_submission(
        list(args.args), working_dir=Path(args.working_dir) if args.working_dir else None,
        forward_credentials=args.forward_credentials, extra_env=args.env, python=args.python,
        submission_id=getattr(args, "submission_id", None),
    )
    try:
        client = connect(args.address)
        for line in describe(submission):
            logger.info(line)
        if args.forward_credentials:
            logger.warning("credentials are forwarded by value: they are stored in the cluster's job table")
        job_id, existing = submit_once(client, submission, submission_id)
        if existing is not None:
            print(f"already submitted: {job_id} ({existing})", flush=True)
            logger.info("this scan window's job exists; another id starts another: --submission-id ID")
            # A retried --follow (an Airflow task whose worker died) reattaches to the window's running job.
            if not (args.follow and existing in ("PENDING", "RUNNING")):
                return 0
        else:
            print(job_id, flush=True)
            logger.info("submitted eval-scan as %s; follow with: vtok jobs logs --follow %s", job_id, job_id)
        if not args.follow:
            return 0
        status = follow(client, job_id)
    except KeyboardInterrupt:
        print("\nstopped following; the job goes on", file=sys.stderr)
        return 130
    except (SubmitError, RuntimeError, ConnectionError) as err:
        print(f"vtok submit: error: {err}", file=sys.stderr)
        return 1
    logger.info("job %s finished: %s", job_id, status)
    return 0 if str(status) == "SUCCEEDED" else 1
