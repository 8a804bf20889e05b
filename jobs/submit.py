"""`vtok submit` and `vtok jobs`: run any vtok job on a Ray cluster through Ray's Job API.

`vtok submit [--address URL] [--follow] JOB [args ...]` runs `python -m jobs.cli JOB args ...` on
the cluster, with this project as the job's working_dir, so the code that runs is the code you
have here. The job's arguments are checked here first (unknown flags, bad config keys and values),
so a typo fails in a second on the laptop instead of minutes later on the cluster.

What the job gets of this machine's environment:
  - by value: AWS_ENDPOINT_URL(_S3), AWS_REGION, AWS_DEFAULT_REGION, AWS_PROFILE, VTOK_* (not
    VTOK_CACHE, a local path) and whatever `--env` names;
  - AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, where set here, by reference
    only: the runtime_env says `${AWS_SECRET_ACCESS_KEY}` and Ray expands it on each node from that
    node's own environment (ray._private.utils.update_envs; an unset one becomes empty, which
    botocore skips, so an instance profile still applies). The secret never leaves this machine.
    `--forward-credentials` sends the values instead (they are then stored in the cluster's job
    table, visible to whoever can read the dashboard).
Secrets are never printed: not by `submit`, not by `jobs status`, and values of this machine's
credential variables are masked in followed logs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from jobs.config import ConfigError
from jobs.registry import commands, parser_for
from vtok.secrets import CREDENTIAL_VARS, is_secret_name, mask_text

if TYPE_CHECKING:
    from ray.job_submission import JobStatus, JobSubmissionClient

logger = logging.getLogger(__name__)

PASSED_VARS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE")
"""Non-secret settings the job needs to reach the same storage; sent by value."""
PASSED_PREFIXES = ("VTOK_",)
LOCAL_ONLY_VARS = ("VTOK_CACHE",)
"""Paths of this machine that mean nothing on a cluster node."""
WORKING_DIR_EXCLUDES = [
    ".venv/", "venv/", ".git/", "demo_out/", "out/", "bench/results/", "build/", "dist/", "*.egg-info/",
    "__pycache__/", "*.pyc", ".pytest_cache/", ".ruff_cache/", ".mypy_cache/", ".import_linter_cache/",
    ".ipynb_checkpoints/",
]
"""gitignore-style patterns left out of the uploaded working_dir (Ray caps it at a few hundred MiB)."""
DEFAULT_PYTHON = "python"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class SubmitError(RuntimeError):
    """The cluster could not be reached, or refused a request; the message says which and why."""


@dataclass
class Submission:
    """A job ready to send: built and validated locally, before anything reaches the cluster."""

    job: str
    """The vtok subcommand the job runs (tokenize, ...)."""
    args: list[str]
    """Its arguments as they will run on the cluster (after local validation and defaults)."""
    entrypoint: str
    """The shell command Ray runs in the job's working_dir."""
    runtime_env: dict[str, Any]
    """working_dir, excludes and env_vars (credentials by reference unless forwarded)."""
    metadata: dict[str, str] = field(default_factory=dict)
    """Shown by `vtok jobs list` / `status` (the vtok job name and version)."""


def project_dir() -> Path:
    """The project checkout this vtok runs from: the folder holding pyproject.toml above jobs/."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file():
        raise ConfigError(
            f"vtok is not running from a project checkout ({root} has no pyproject.toml); "
            f"pass --working-dir PROJECT_DIR"
        )
    return root


def _relocate_config_file(args: list[str], working_dir: Path) -> tuple[list[str], str | None]:
    """--config FILE: validated here from the local path, run there relative to the working_dir."""
    out = list(args)
    for i, arg in enumerate(out):
        if arg == "--config" and i + 1 < len(out):
            index, value = i + 1, out[i + 1]
        elif arg.startswith("--config="):
            index, value = i, arg.split("=", 1)[1]
        else:
            continue
        local = Path(value).resolve()
        try:
            rel = local.relative_to(working_dir.resolve())
        except ValueError:
            raise ConfigError(
                f"--config {value}: the file must be inside the project directory {working_dir} so it "
                f"travels with the job"
            ) from None
        out[index] = str(rel) if index == i + 1 else f"--config={rel}"
        return out, str(local)
    return out, None


def validate_job_args(job: str, args: list[str], working_dir: Path) -> list[str]:
    """Check a job's arguments here, as the cluster would, and return them as they should run there.

    The subcommand's own argparse parser checks flags; a config-driven job (one with
    jobs.<job>.load_<job>_config) also loads its config, so a bad key or value raises ConfigError
    naming the key. A job with a `ray.address` setting left unset gets `ray.address=auto`: a
    submitted job runs on the cluster it was submitted to, never on a private local Ray.
    """
    submittable = {name: c for name, c in commands().items() if c.submittable}
    if job not in submittable:
        raise ConfigError(f"unknown job {job!r}; submittable vtok jobs: {', '.join(sorted(submittable))}")
    command = submittable[job]
    args, config_file = _relocate_config_file(args, working_dir)
    # argparse reports its own errors (and exits 2) exactly as `vtok JOB ...` would on the cluster.
    namespace = parser_for(command).parse_args(args)
    overrides = getattr(namespace, "overrides", None)
    if command.load_config is None or overrides is None:
        return args
    cfg = command.load_config(list(overrides), config_file)
    return for_the_cluster(args, cfg, ("input", "output", "data", "checkpoint", "decoder", "compare"))


def for_the_cluster(args: list[str], cfg: Any, path_keys: Sequence[str]) -> list[str]:
    """`args` as a submitted job must run them: ConfigError for a relative path in any of `path_keys` (the job
    runs in a copy of the project on the cluster), and `ray.address=auto` added when cfg leaves it unset."""
    for key in path_keys:
        value = getattr(cfg, key, None)
        if isinstance(value, str) and "://" not in value and not value.startswith("/"):
            raise ConfigError(
                f"config key {key!r}: {value!r} is a relative path, but a submitted job runs in a copy of the "
                f"project on the cluster; pass an absolute path on storage the cluster shares, or a URI (s3://...)"
            )
    ray_cfg = getattr(cfg, "ray", None)
    if ray_cfg is not None and getattr(ray_cfg, "address", "") is None:
        # First, not last: argparse takes overrides only as one run of positionals, before or after flags.
        args = ["ray.address=auto", *args]
    return args


def build_entrypoint(job: str, args: list[str], python: str = DEFAULT_PYTHON) -> str:
    return shlex.join([python, "-m", "jobs.cli", job, *args])


def build_runtime_env(
    working_dir: Path,
    environ: dict[str, str] | None = None,
    forward_credentials: bool = False,
    extra_env: list[str] | None = None,
) -> dict[str, Any]:
    """The job's runtime_env: the project as working_dir and the environment it needs (see module doc)."""
    environ = dict(os.environ if environ is None else environ)
    env: dict[str, str] = {}
    for name in PASSED_VARS:
        if environ.get(name):
            env[name] = environ[name]
    for name, value in sorted(environ.items()):
        if name.startswith(PASSED_PREFIXES) and name not in LOCAL_ONLY_VARS and value:
            env[name] = value
    for name in CREDENTIAL_VARS:
        if environ.get(name):
            env[name] = environ[name] if forward_credentials else "${" + name + "}"
    for item in extra_env or []:
        name, sep, value = item.partition("=")
        if not name.isidentifier():
            raise ConfigError(f"--env {item!r}: expected NAME=VALUE or NAME")
        if not sep:
            if name not in environ:
                raise ConfigError(f"--env {name}: not set in this environment")
            value = environ[name]
        env[name] = value
    return {"working_dir": str(working_dir), "excludes": list(WORKING_DIR_EXCLUDES), "env_vars": env}


def _is_reference(value: str) -> bool:
    return value.startswith("${") and value.endswith("}")


def safe_env(env_vars: dict[str, str]) -> dict[str, str]:
    """env_vars fit to print: secret values masked, `${NAME}` references shown as they are."""
    return {k: (v if _is_reference(v) or not is_secret_name(k) else "***") for k, v in env_vars.items()}


def prepare_submission(
    job: str,
    args: list[str],
    working_dir: Path | None = None,
    forward_credentials: bool = False,
    extra_env: list[str] | None = None,
    python: str = DEFAULT_PYTHON,
) -> Submission:
    """Validate and build everything a submission sends; raises ConfigError naming a bad key."""
    from vtok import __version__

    root = (working_dir or project_dir()).resolve()
    if not (root / "jobs" / "cli.py").is_file():
        raise ConfigError(f"--working-dir {root}: not a vtok project (no jobs/cli.py)")
    final_args = validate_job_args(job, args, root)
    return Submission(
        job=job,
        args=final_args,
        entrypoint=build_entrypoint(job, final_args, python),
        runtime_env=build_runtime_env(root, forward_credentials=forward_credentials, extra_env=extra_env),
        metadata={"vtok_job": job, "vtok_version": __version__},
    )


def connect(address: str | None) -> JobSubmissionClient:
    """A Job API client; `address` None means $RAY_ADDRESS, then http://127.0.0.1:8265, as Ray's CLI."""
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as err:  # noqa: BLE001 - requests, ConnectionError and Ray's own errors all land here
        where = address or os.environ.get("RAY_ADDRESS") or "http://127.0.0.1:8265"
        raise SubmitError(
            f"cannot reach the Ray Job API at {where} ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
            f"is the cluster up (`ray up cluster.yaml`; `ray dashboard cluster.yaml` forwards the port)? "
            f"Pass --address or set RAY_ADDRESS"
        ) from None


def describe(submission: Submission) -> list[str]:
    """What is being sent, fit to print: env values of secrets are never shown."""
    env = submission.runtime_env["env_vars"]
    by_ref = [k for k, v in env.items() if _is_reference(v)]
    by_value = [k for k, v in env.items() if not _is_reference(v)]
    return [
        f"entrypoint  {submission.entrypoint}",
        f"working_dir {submission.runtime_env['working_dir']}",
        f"env         by value: {', '.join(by_value) or '-'}; by reference to the node's own: "
        f"{', '.join(by_ref) or '-'}",
    ]


def submit(client: JobSubmissionClient, submission: Submission, submission_id: str | None = None) -> str:
    try:
        return client.submit_job(
            entrypoint=submission.entrypoint, runtime_env=submission.runtime_env, metadata=submission.metadata,
            submission_id=submission_id,
        )
    except Exception as err:  # noqa: BLE001 - the Job API reports refusals as RuntimeError with HTTP text
        raise SubmitError(f"the cluster refused the job: {mask_text(str(err))}") from None


def wait(client: JobSubmissionClient, job_id: str, timeout_s: float = 3600.0, poll_s: float = 1.0) -> JobStatus:
    """Poll until the job is terminal or `timeout_s` passes; returns the last status seen."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = client.get_job_status(job_id)
        if status.is_terminal() or time.monotonic() >= deadline:
            return status
        time.sleep(poll_s)


def follow(client: JobSubmissionClient, job_id: str, out: IO[str] | None = None) -> JobStatus:
    """Stream the job's logs until it ends; returns its final status."""
    out = out or sys.stdout

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            out.write(mask_text(chunk))
            out.flush()

    asyncio.run(tail())
    # The log stream closes as the driver exits; the status may trail it by a moment.
    return wait(client, job_id, timeout_s=60.0, poll_s=0.5)


def _exit_code(status: Any) -> int:
    return 0 if str(status) == "SUCCEEDED" else 1


def _fmt_time(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else "-"


def _duration(start_ms: int | None, end_ms: int | None) -> str:
    if not start_ms:
        return "-"
    seconds = ((end_ms or time.time() * 1000) - start_ms) / 1000
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"


# ---------------------------------------------------------------- commands


def _fail(command: str, err: Exception) -> int:
    print(f"vtok {command}: error: {err}", file=sys.stderr)
    return 1


def cmd_submit(args: argparse.Namespace) -> int:
    if args.job == "eval-scan":
        from jobs.submit_scan import cmd_submit_eval_scan

        return cmd_submit_eval_scan(args)
    submission = prepare_submission(
        args.job, list(args.args), working_dir=Path(args.working_dir) if args.working_dir else None,
        forward_credentials=args.forward_credentials, extra_env=args.env, python=args.python,
    )
    job_id = ""
    try:
        client = connect(args.address)
        for line in describe(submission):
            logger.info(line)
        if args.forward_credentials:
            logger.warning("credentials are forwarded by value: they are stored in the cluster's job table")
        job_id = submit(client, submission, args.submission_id)
        print(job_id, flush=True)
        logger.info("submitted %s as %s; follow with: vtok jobs logs --follow %s", args.job, job_id, job_id)
        if not args.follow:
            return 0
        status = follow(client, job_id)
    except KeyboardInterrupt:
        if job_id:
            print(f"\nstopped following; the job goes on. Stop it with: vtok jobs stop {job_id}", file=sys.stderr)
        return 130
    except (SubmitError, RuntimeError, ConnectionError) as err:
        return _fail("submit", err)
    logger.info("job %s finished: %s", job_id, status)
    return _exit_code(status)


def cmd_jobs(args: argparse.Namespace) -> int:
    try:
        client = connect(args.address)
        return int(args.jobs_func(client, args))
    except KeyboardInterrupt:
        return 130
    except (SubmitError, RuntimeError, ConnectionError) as err:
        return _fail(f"jobs {args.jobs_command}", err)


def _jobs_status(client: JobSubmissionClient, args: argparse.Namespace) -> int:
    info = client.get_job_info(args.job_id)
    env = safe_env(dict((info.runtime_env or {}).get("env_vars") or {}))
    lines = [
        f"job          {args.job_id}",
        f"status       {info.status}",
        f"message      {info.message or '-'}",
        f"vtok job     {(info.metadata or {}).get('vtok_job', '-')}",
        f"entrypoint   {info.entrypoint}",
        f"started      {_fmt_time(info.start_time)}",
        f"ended        {_fmt_time(info.end_time)} ({_duration(info.start_time, info.end_time)})",
        "env          " + (", ".join(f"{k}={v}" for k, v in sorted(env.items())) or "-"),
    ]
    if info.error_type:
        lines.insert(3, f"error type   {info.error_type}")
    print("\n".join(mask_text(line) for line in lines))
    return 0


def _jobs_logs(client: JobSubmissionClient, args: argparse.Namespace) -> int:
    if args.follow:
        return _exit_code(follow(client, args.job_id))
    print(mask_text(client.get_job_logs(args.job_id)), end="")
    return 0


def _jobs_stop(client: JobSubmissionClient, args: argparse.Namespace) -> int:
    if not client.stop_job(args.job_id):
        print(f"{args.job_id}: not running ({client.get_job_status(args.job_id)})")
        return 0
    status = wait(client, args.job_id, timeout_s=args.timeout, poll_s=0.5)
    print(f"{args.job_id}: {status}")
    return 0 if status.is_terminal() else 1


def _jobs_list(client: JobSubmissionClient, args: argparse.Namespace) -> int:
    jobs = [j for j in client.list_jobs() if j.submission_id]
    jobs.sort(key=lambda j: j.start_time or 0, reverse=True)
    if not jobs:
        print("no jobs")
        return 0
    print(f"{'job':<30} {'status':<10} {'vtok job':<10} {'started':<19} {'duration':>9}  entrypoint")
    for j in jobs:
        entry = j.entrypoint if len(j.entrypoint) <= 80 else j.entrypoint[:77] + "..."
        print(f"{j.submission_id:<30} {str(j.status):<10} {(j.metadata or {}).get('vtok_job', '-'):<10} "
              f"{_fmt_time(j.start_time):<19} {_duration(j.start_time, j.end_time):>9}  "
              f"{mask_text(entry)}")
    return 0


def _address_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None,
                   help="Ray Job API address, e.g. http://HEAD:8265 (default: $RAY_ADDRESS, then "
                        "http://127.0.0.1:8265)")


def submit_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of `vtok submit`."""
    _address_option(p)
    p.add_argument("--follow", action="store_true", help="stream the logs until the job ends; exit 1 if it failed")
    p.add_argument("--forward-credentials", action="store_true",
                   help="send AWS_ACCESS_KEY_ID/SECRET/SESSION_TOKEN by value instead of by reference")
    p.add_argument("--env", action="append", default=[], metavar="NAME[=VALUE]",
                   help="also set NAME in the job (VALUE, or this environment's value); repeatable")
    p.add_argument("--working-dir", default=None, help="project directory to upload (default: this checkout)")
    p.add_argument("--python", default=DEFAULT_PYTHON, help="python on the cluster nodes (default: python)")
    p.add_argument("--submission-id", default=None, metavar="ID",
                   help="the job's id (Ray refuses a second job with it); eval-scan: one per scan window")
    p.add_argument("job", help="the vtok job to run, e.g. tokenize; eval-scan runs `vtok eval scan ...` at most once "
                               "per window=MINUTES (default 60; see jobs/submit_scan.py)")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the job's arguments, e.g. input=s3://... output=s3://...")


def jobs_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of `vtok jobs status|logs|stop|list`."""
    jobs = p.add_subparsers(dest="jobs_command", required=True)
    for name, func, help_text in (
        ("status", _jobs_status, "status, timing and settings of a job"),
        ("logs", _jobs_logs, "a job's logs (--follow streams them until it ends)"),
        ("stop", _jobs_stop, "stop a running job and wait until it has stopped"),
        ("list", _jobs_list, "every job of the cluster, newest first"),
    ):
        q = jobs.add_parser(name, help=help_text)
        _address_option(q)
        if name != "list":
            q.add_argument("job_id")
        if name == "logs":
            q.add_argument("--follow", action="store_true")
        if name == "stop":
            q.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the job to stop")
        q.set_defaults(jobs_func=func)
