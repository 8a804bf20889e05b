"""The `vtok` command: parse the subcommand from the registry, run it, turn any error into one line and an exit code."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from jobs.config import ConfigError
from vtok.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_STORAGE, VtokError


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    logging.getLogger("ray").setLevel(logging.WARNING)
    # Deprecation notices of libraries about their own internals say nothing a vtok user can act on.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


class _JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers (--log-json)."""

    def format(self, record: logging.LogRecord) -> str:
        import json

        entry = {"ts": round(record.created, 3), "level": record.levelname, "logger": record.name,
                 "msg": record.getMessage()}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(json_format: bool = False) -> None:
    """One format for every vtok log line (stderr); libraries stay at WARNING, vtok's own at INFO."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if json_format else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    # Replace, not add: main() may run more than once in a process (tests, notebooks).
    root.handlers = [h for h in root.handlers if not getattr(h, "_vtok", False)]
    handler._vtok = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    for name in ("jobs", "pipelines", "vtok", "schemas"):
        logging.getLogger(name).setLevel(logging.INFO)


def build_parser() -> argparse.ArgumentParser:
    import jobs.judge_command  # noqa: F401 - registers `vtok judge` (its own module, beside jobs.commands)
    from jobs.registry import commands, keys_epilog

    parser = argparse.ArgumentParser(prog="vtok", description="VTok video tokens at cluster scale")
    parser.add_argument("--log-json", action="store_true", help="log lines as JSON objects")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of any error")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in commands().values():
        p = sub.add_parser(command.name, help=command.help, description=command.help, epilog=keys_epilog(command),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        command.arguments(p)
        p.set_defaults(func=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    args = build_parser().parse_args(argv)
    setup_logging(args.log_json)
    try:
        return int(args.func(args))
    except BaseException as err:  # noqa: BLE001 - every error ends in one line and an exit code
        if args.debug or isinstance(err, SystemExit):
            raise
        message, code = explain_error(err)
        print(f"vtok {args.command}: {message}", file=sys.stderr)
        return code


def explain_error(err: BaseException) -> tuple[str, int]:
    """One line and an exit code for an error (see vtok.errors); tracebacks are for --debug."""
    import errno

    first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if isinstance(err, ConfigError):
        return f"config error: {first_line}", EXIT_BAD_INPUT
    if isinstance(err, VtokError):
        return f"error: {first_line}", err.exit_code
    if isinstance(err, KeyboardInterrupt):
        return "interrupted; rerun the same command to resume", 130
    if isinstance(err, (FileNotFoundError, NotADirectoryError, IsADirectoryError, ValueError)):
        return f"error: {first_line}", EXIT_BAD_INPUT
    if isinstance(err, OSError):
        where = f" ({err.filename})" if err.filename else ""
        if err.errno == errno.ENOSPC:
            return f"error: no space left on the device{where}; free space and rerun to resume", EXIT_STORAGE
        if err.errno == errno.EROFS:
            return f"error: read-only file system{where}", EXIT_STORAGE
        return f"error: {err.strerror or first_line}{where}", EXIT_STORAGE
    return (f"internal error: {type(err).__name__}: {first_line} (a bug; rerun with --debug for the traceback)",
            EXIT_INTERNAL)


if __name__ == "__main__":
    sys.exit(main())
