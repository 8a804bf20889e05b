"""The `vtok` subcommands: one registry that `vtok` builds its parser from and `vtok submit` asks.

A subcommand is a name, its arguments, how to run it and, for a config-driven job, how to load its typed
config (so `vtok submit` can check a job's keys on the laptop). Adding one is one `register(...)` call in
jobs/commands.py.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Command:
    """One `vtok` subcommand."""

    name: str
    """What the user types: `vtok NAME ...`."""
    help: str
    """One line for `vtok --help`."""
    arguments: Callable[[argparse.ArgumentParser], None]
    """Adds the subcommand's arguments to its parser."""
    run: Callable[[argparse.Namespace], int]
    """Runs it; returns the exit code."""
    load_config: Callable[[list[str], str | None], Any] | None = None
    """(key=value overrides, --config file) -> the job's typed config, for a config-driven job."""
    submittable: bool = True
    """Whether `vtok submit` may run it on a cluster."""
    config_schema: type | None = None
    """The job's config dataclass, whose keys `vtok config NAME` and `vtok NAME --help` list."""
    hidden_keys: frozenset[str] = frozenset()
    """Config keys the job sets itself, not listed."""


_COMMANDS: dict[str, Command] = {}


def register(command: Command) -> Command:
    if command.name in _COMMANDS:
        raise ValueError(f"vtok subcommand {command.name!r} is registered twice")
    _COMMANDS[command.name] = command
    return command


def commands() -> dict[str, Command]:
    """Every subcommand, by name (importing jobs.commands registers them)."""
    import jobs.commands  # noqa: F401

    return dict(_COMMANDS)


def parser_for(command: Command, prog: str = "vtok") -> argparse.ArgumentParser:
    """A parser of one subcommand alone, as `vtok NAME` parses it."""
    parser = argparse.ArgumentParser(prog=f"{prog} {command.name}", description=command.help,
                                     epilog=keys_epilog(command), formatter_class=argparse.RawDescriptionHelpFormatter)
    command.arguments(parser)
    return parser


def keys_epilog(command: Command) -> str | None:
    """Every config key with its default and docstring, for a config-driven command's --help."""
    if command.config_schema is None:
        return None
    from jobs.config import config_keys, format_keys

    keys = config_keys(command.config_schema, hidden=command.hidden_keys)
    return f"config keys (set any as key=value):\n{format_keys(keys)}"
