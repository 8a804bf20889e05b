"""What a person sees at the terminal: Ray's own start-up and execution noise kept out of it.

Ray Data logs its execution plan and progress at INFO, and the driver's C++ core worker prints a red
"constructor arguments in the object store" error for every actor pool: Ray Data always passes its map
function to pool actors by object reference, and vtok keeps actor restarts on (max_restarts=-1) so an
encoder actor that dies is replaced. The reference lives as long as the pool, so the warning can never
apply to vtok; it is dropped from the driver's stderr, which the C++ side writes without Python logging.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator

NOISE = (re.compile(rb"core_worker\.cc:\d+: Actor with class name: .* has constructor arguments in the object store"),)
"""stderr lines of the driver's Ray core worker that say nothing a vtok user can act on."""


def quiet_ray_logging() -> None:
    """Ray's and Ray Data's INFO lines off the terminal; their warnings and errors stay, and Ray Data's
    session log file keeps everything."""
    import ray.data  # noqa: F401 - configures Ray Data's loggers, which must exist before they are quieted

    for name in ("ray", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.WARNING)
    # "Progress bars disabled" is a warning about vtok's own choice.
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


@contextlib.contextmanager
def filtered_stderr(patterns: tuple[re.Pattern[bytes], ...] = NOISE) -> Iterator[None]:
    """Drop stderr lines (file descriptor 2, so C++ output too) that match `patterns`; pass everything else."""
    try:
        original = os.dup(2)
    except OSError:
        yield
        return
    read_end, write_end = os.pipe()
    sys.stderr.flush()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        buffer = b""
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                out = b"".join(line + b"\n" for line in lines if not any(p.search(line) for p in patterns))
                if buffer.startswith(b"\r"):
                    # A progress line redrawn in place has no newline: show it now, not at the next one.
                    out, buffer = out + buffer, b""
                if out:
                    os.write(original, out)
            if buffer:
                os.write(original, buffer)

    thread = threading.Thread(target=pump, name="vtok-stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(original, 2)  # closes the pipe's last write end held by fd 2: the pump sees EOF
        thread.join(timeout=2.0)
        os.close(original)
