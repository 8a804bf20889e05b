"""`vtok eval scan`: evaluate every complete checkpoint of a run that has no results for a suite, exactly once.

What a schedule (cron, a Kubernetes CronJob, Airflow) runs again and again; each run is a scan:

    list     the run's complete checkpoints, oldest first (incomplete ones are being written, or torn)
    skip     each (checkpoint, suite) with committed results (pipelines/evaluate/results.py)
    lease    take the pair's lease (pipelines/evaluate/lease.py) or skip it while another scan holds it;
             after taking it, look for results again: another scan may have committed them meanwhile
    evaluate the leased suites of one checkpoint in one `vtok eval` pass (pipelines/evaluate/eval.py), renewing
             the leases while it runs; commit, release
    attempts RUN/eval/attempts/<checkpoint>__<suite>.json counts the attempts at a pair across scans, with the
             last error; a pair that failed max_attempts times is given up (reported, not retried). An attempt
             is counted when it starts, so one that kills its scan (out of memory, SIGKILL) counts too.

Results are committed whole (a killed scan leaves none half-written); the next scan redoes a pair once its
dead holder's lease has expired.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from pipelines.evaluate.eval import EvalConfig
from pipelines.evaluate.lease import Lease, acquire_lease, lease_uri, new_owner_id, release_lease, renew_lease
from schemas.eval_result import EVAL_DIR, NAME_SEPARATOR
from vtok.errors import InputError, VtokError
from vtok.storage import join, read_json, write_json

logger = logging.getLogger(__name__)

ATTEMPTS_DIR = f"{EVAL_DIR}/attempts"
"""RUN/eval/attempts/<checkpoint>__<suite>.json: the attempts at evaluating a pair, and the last error."""
INTERRUPTED = "interrupted: the scan evaluating it ended without committing results (killed, or lost its lease)"
"""The error of an attempt whose scan never said how it ended."""


@dataclass
class ScanConfig(EvalConfig):
    """`vtok eval scan`: which run to scan and how much to do, plus every `vtok eval` key (applied to each
    checkpoint evaluated)."""

    checkpoint: str = ""
    """Set by the scan for each checkpoint it evaluates (not a key to give)."""
    run: str = "???"
    """The training run whose checkpoints to evaluate (RUN, with RUN/checkpoints/step_*), local or s3://."""
    max_checkpoints: int | None = None
    """Evaluate at most this many checkpoints in one scan (the oldest first); None: all that need it."""
    max_attempts: int = 3
    """Attempts at one (checkpoint, suite) across scans before it is given up."""
    lease_seconds: float = 3600.0
    """A lease's lifetime: how long a killed scan's pairs wait before another scan redoes them (renewed every
    third of it while the evaluation runs)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_checkpoints is not None and self.max_checkpoints < 1:
            raise ValueError(f"max_checkpoints must be >= 1 or null, got {self.max_checkpoints}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be > 0, got {self.lease_seconds}")


Pair = tuple[str, str]
"""(checkpoint name, suite)."""


@dataclass
class ScanSummary:
    """What one scan did with each (checkpoint, suite), in the order it went through them."""

    run: str
    """The run scanned."""
    evaluated: list[Pair] = field(default_factory=list)
    """Pairs this scan evaluated and committed."""
    done: list[Pair] = field(default_factory=list)
    """Skipped: committed results were there (before, or after taking the lease)."""
    leased: list[tuple[str, str, float]] = field(default_factory=list)
    """Skipped: another scan holds the lease, until (Unix seconds)."""
    failed: list[tuple[str, str, int, str]] = field(default_factory=list)
    """Failed in this scan: (checkpoint, suite, attempt, error); retried by a later scan."""
    gave_up: list[tuple[str, str, int, str]] = field(default_factory=list)
    """Not tried: (checkpoint, suite, attempts, last error) after max_attempts failures."""
    deferred: list[Pair] = field(default_factory=list)
    """Left for the next scan by max_checkpoints."""
    incomplete: list[str] = field(default_factory=list)
    """Checkpoint folders without a sound `complete` marker (being written, or torn), not evaluated."""
    lines: list[str] = field(default_factory=list)
    """One line per pair, as printed."""
    seconds: float = 0.0
    """The scan's wall time."""

    def totals(self) -> list[str]:
        """The closing lines: how many pairs went which way, and how long the scan took."""
        counts = [(len(self.evaluated), "evaluated"), (len(self.done), "skipped (has results)"),
                  (len(self.leased), "skipped (leased by another scan)"), (len(self.failed), "failed"),
                  (len(self.gave_up), "gave up"), (len(self.deferred), "left for the next scan")]
        said = ", ".join(f"{n} {what}" for n, what in counts if n) or "nothing to evaluate"
        lines = [f"scan of {self.run}: {said} ({self.seconds:.1f} s)"]
        if self.incomplete:
            lines.append(f"not complete (being written, or torn; not evaluated): {', '.join(self.incomplete)}")
        return lines


def attempts_uri(run_uri: str, checkpoint: str, suite: str) -> str:
    """RUN/eval/attempts/<checkpoint>__<suite>.json."""
    return join(run_uri, ATTEMPTS_DIR, f"{checkpoint}{NAME_SEPARATOR}{suite}.json")


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def error_line(err: BaseException) -> str:
    """One line for a failed evaluation: a vtok error's own message; for anything else (a Ray task error wraps
    the worker's traceback) its type and the innermost exception's line."""
    text = str(err).strip()
    if isinstance(err, VtokError) or not text:
        return text.splitlines()[0] if text else type(err).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # A traceback ends in "SomeError: message", the cause a worker raised.
    for line in reversed(lines):
        head = line.split(":", 1)[0]
        if ":" in line and head.replace(".", "").isidentifier() and head.endswith(("Error", "Exception")):
            return f"{type(err).__name__}: {line}"[:500]
    return f"{type(err).__name__}: {lines[0]}"[:500]


def check_scan(cfg: ScanConfig) -> dict[str, Any]:
    """The checks every checkpoint's evaluation shares, before any Ray work: the run exists, the held-out data
    is a committed token dataset with the ground truth; its manifest, or an InputError naming the key."""
    from pipelines.train.data import check_manifest
    from vtok.storage import get_fs

    if not cfg.run or cfg.run == "???":
        raise InputError("run: not set; give run=RUN (a training run folder, local or s3://)")
    opts = cfg.storage_options or None
    try:
        fs, path = get_fs(cfg.run, opts)
        exists = fs.exists(path)
    except Exception as err:  # noqa: BLE001 - every backend raises its own types
        raise InputError(f"run={cfg.run}: cannot be read ({type(err).__name__}: {err})") from None
    if not exists:
        raise InputError(f"run={cfg.run}: no such run folder")
    return check_manifest(cfg.data, opts)


def _eval_config(cfg: ScanConfig, checkpoint_uri: str, suites: list[str]) -> EvalConfig:
    values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(EvalConfig)}
    return EvalConfig(**{**values, "checkpoint": checkpoint_uri, "suites": suites})


class _Keeper(threading.Thread):
    """Renews leases every third of their lifetime while an evaluation runs, so a slow evaluation keeps them."""

    def __init__(self, leases: dict[str, Lease], seconds: float, opts: dict[str, Any] | None) -> None:
        super().__init__(daemon=True, name="vtok-lease-keeper")
        self.leases, self.seconds, self.opts = leases, seconds, opts
        self.halt = threading.Event()
        self.lost: list[str] = []

    def run(self) -> None:
        while not self.halt.wait(self.seconds / 3):
            for suite, lease in list(self.leases.items()):
                try:
                    renewed = renew_lease(lease, self.seconds, self.opts)
                except Exception as err:  # noqa: BLE001 - a storage hiccup: retried at the next turn
                    logger.warning("could not renew the lease %s: %s", lease.uri, err)
                    continue
                if renewed is None:
                    logger.warning("lost the lease %s (it expired and another scan took it over)", lease.uri)
                    self.lost.append(suite)
                    del self.leases[suite]
                else:
                    self.leases[suite] = renewed

    def stop(self) -> dict[str, Lease]:
        self.halt.set()
        self.join()
        return self.leases


class _Scan:
    """One scan's state: the config, its owner id, the summary it fills in."""

    def __init__(self, cfg: ScanConfig, echo: Callable[[str], None], before_eval: Callable[[], None] | None,
                 progress: bool) -> None:
        self.cfg, self.echo, self.before_eval, self.progress = cfg, echo, before_eval, progress
        self.opts = cfg.storage_options or None
        self.owner = new_owner_id()
        self.summary = ScanSummary(run=cfg.run)

    def say(self, checkpoint: str, suite: str, what: str) -> None:
        line = f"{checkpoint} {suite:<9} {what}"
        self.summary.lines.append(line)
        self.echo(line)

    def attempts(self, checkpoint: str, suite: str) -> dict[str, Any]:
        record = read_json(attempts_uri(self.cfg.run, checkpoint, suite), self.opts)
        return record if isinstance(record, dict) else {}

    def usable(self, checkpoint: str, suite: str) -> bool:
        """False (and reported) for a pair given up after max_attempts."""
        record = self.attempts(checkpoint, suite)
        tried = int(record.get("attempts", 0))
        if tried < self.cfg.max_attempts:
            return True
        error = str(record.get("last_error") or INTERRUPTED)
        self.summary.gave_up.append((checkpoint, suite, tried, error))
        self.say(checkpoint, suite, f"gave up ({tried} attempts: {error})")
        return False

    def start_attempt(self, checkpoint: str, suite: str) -> int:
        """Count an attempt before it runs (one that kills the scan counts too); the attempt's number."""
        record = self.attempts(checkpoint, suite)
        if record.get("status") == "running":
            record["last_error"] = INTERRUPTED  # the previous attempt's scan died holding the lease
        number = int(record.get("attempts", 0)) + 1
        now = _iso(time.time())
        write_json(attempts_uri(self.cfg.run, checkpoint, suite),
                   {**record, "checkpoint": checkpoint, "suite": suite, "attempts": number, "status": "running",
                    "owner": self.owner, "first_at": record.get("first_at", now), "last_at": now}, self.opts)
        return number

    def end_attempt(self, checkpoint: str, suite: str, error: str | None) -> None:
        record = self.attempts(checkpoint, suite)
        update = {"status": "failed", "last_error": error} if error else {"status": "done"}
        write_json(attempts_uri(self.cfg.run, checkpoint, suite),
                   {**record, **update, "ended_at": _iso(time.time())}, self.opts)


def run_scan(cfg: ScanConfig, progress: bool = False, before_eval: Callable[[], None] | None = None,
             echo: Callable[[str], None] = print) -> ScanSummary:
    """Scan the run once, as the module docstring says; `before_eval` runs once, before the first evaluation
    (the job starts or joins Ray there, so a scan with nothing to do never starts Ray); `echo` gets each line."""
    from pipelines.evaluate.results import committed_results
    from vtok.training.checkpoint import list_checkpoints

    started = time.perf_counter()
    check_scan(cfg)
    scan = _Scan(cfg, echo, before_eval, progress)
    infos = list_checkpoints(cfg.run, scan.opts)
    scan.summary.incomplete = [info.uri.rsplit("/", 1)[-1] for info in infos if not info.complete]
    complete = [info for info in infos if info.complete]
    if not complete:
        echo(f"{cfg.run}: no complete checkpoint yet; nothing to evaluate")
    committed = set(committed_results(cfg.run, scan.opts))
    worked: list[str] = []
    for info in complete:
        name = info.uri.rsplit("/", 1)[-1]
        todo = []
        for suite in cfg.suites:
            if (name, suite) in committed:
                scan.summary.done.append((name, suite))
                scan.say(name, suite, "skipped (has results)")
            elif scan.usable(name, suite):
                todo.append(suite)
        if not todo:
            continue
        if cfg.max_checkpoints is not None and len(worked) >= cfg.max_checkpoints:
            for suite in todo:
                scan.summary.deferred.append((name, suite))
                scan.say(name, suite, f"left for the next scan (max_checkpoints={cfg.max_checkpoints})")
            continue
        if _checkpoint(scan, info.uri, name, todo):
            worked.append(name)
    scan.summary.seconds = time.perf_counter() - started
    return scan.summary


def _checkpoint(scan: _Scan, uri: str, name: str, suites: list[str]) -> bool:
    """Lease, evaluate and release the `suites` of one checkpoint; whether it attempted any."""
    from pipelines.evaluate.results import has_results

    cfg, opts = scan.cfg, scan.opts
    held: dict[str, Lease] = {}
    try:
        for suite in suites:
            number = int(scan.attempts(name, suite).get("attempts", 0)) + 1
            taken, lease = acquire_lease(lease_uri(cfg.run, name, suite), scan.owner, cfg.lease_seconds, number,
                                         opts)
            if not taken:
                scan.summary.leased.append((name, suite, lease.expires_at))
                scan.say(name, suite, f"skipped (leased by another scan, {lease.host}:{lease.pid}, until "
                                      f"{_iso(lease.expires_at)})")
                continue
            held[suite] = lease
            # Between our listing and our lease another scan may have committed, or given up on, this pair.
            if has_results(cfg.run, name, suite, opts):
                scan.summary.done.append((name, suite))
                scan.say(name, suite, "skipped (has results)")
                release_lease(held.pop(suite), opts)
            elif not scan.usable(name, suite):
                release_lease(held.pop(suite), opts)
        if not held:
            return False
        leased = list(held)
        keeper = _Keeper(held, cfg.lease_seconds, opts)
        keeper.start()
        try:
            result = _evaluate(scan, uri, name, leased)
        finally:
            held = keeper.stop()
        if result is not None:
            for suite in leased:
                scan.summary.evaluated.append((name, suite))
                scan.say(name, suite, f"evaluated ({result['seconds']:.1f} s): {result['results'].get(suite, '')}")
        return True
    finally:
        for lease in held.values():
            try:
                release_lease(lease, opts)
            except Exception as err:  # noqa: BLE001 - an unreleased lease only expires; the results are committed
                logger.warning("could not release the lease %s: %s", lease.uri, err)


def _evaluate(scan: _Scan, uri: str, name: str, suites: list[str]) -> dict[str, Any] | None:
    """Evaluate the leased `suites` of one checkpoint in one pass, counting the attempt: run_eval's result, or
    None when it failed (recorded, and reported)."""
    from pipelines.evaluate.eval import prepare_eval, run_eval

    eval_cfg = _eval_config(scan.cfg, uri, suites)
    try:
        plan = prepare_eval(eval_cfg)
    except Exception as err:  # noqa: BLE001 - a checkpoint that fails its checks is recorded like any failure
        _failed(scan, name, {suite: scan.start_attempt(name, suite) for suite in suites}, err)
        return None
    if scan.before_eval is not None:
        # Before counting the attempt: a Ray that cannot start ends the scan, and is no fault of the checkpoint.
        scan.before_eval()
        scan.before_eval = None
    numbers = {suite: scan.start_attempt(name, suite) for suite in suites}
    try:
        result = run_eval(eval_cfg, progress=scan.progress, plan=plan)
    except Exception as err:  # noqa: BLE001 - any failure is recorded and retried by a later scan
        _failed(scan, name, numbers, err)
        return None
    for suite in suites:
        scan.end_attempt(name, suite, None)
    return result


def _failed(scan: _Scan, name: str, numbers: dict[str, int], err: BaseException) -> None:
    error = error_line(err)
    logger.warning("evaluating %s (%s) failed: %s", name, ", ".join(numbers), error)
    for suite, number in numbers.items():
        scan.end_attempt(name, suite, error)
        scan.summary.failed.append((name, suite, number, error))
        scan.say(name, suite, f"failed (attempt {number} of {scan.cfg.max_attempts}: {error})")
