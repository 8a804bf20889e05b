"""Expected failures: each carries the exit code the CLI ends with, and a one-line message naming its input.

Anything that is not a VtokError (or a ValueError/FileNotFoundError from a config or listing check) is a
bug: the CLI then says so in one line and shows the traceback only with --debug.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
"""An unexpected error (a bug); rerun with --debug for the traceback."""
EXIT_BAD_INPUT = 2
"""Bad input or config: a key, a value, a URI, a manifest, an output that would collide or mix datasets."""
EXIT_STORAGE = 3
"""Storage refused: unwritable or read-only output, full disk, unreachable bucket, refused credentials."""
EXIT_DATA = 4
"""The run finished but its data failed a gate: every input quarantined, or more than the allowed fraction."""


class VtokError(Exception):
    """An expected failure with a one-line message; `exit_code` is what the CLI exits with."""

    exit_code = EXIT_INTERNAL


class InputError(VtokError, ValueError):
    """Bad input or config."""

    exit_code = EXIT_BAD_INPUT


class DataQualityError(VtokError):
    """The data a run produced failed a gate (e.g. too many inputs quarantined); its shards are committed."""

    exit_code = EXIT_DATA
