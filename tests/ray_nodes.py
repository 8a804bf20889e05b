"""Ray processes that tests start outside the session's in-process Ray, and how to stop only those."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_ray_node(args: list[str], temp_dir: str, env_extra: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """`ray start --block ARGS` in a process group of its own, with this venv's python first on PATH."""
    bin_dir = Path(sys.executable).parent
    # Jobs run `python`: the venv's bin first on PATH makes that this venv's python, with vtok installed.
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "RAY_USAGE_STATS_ENABLED": "0", **(env_extra or {})}
    env.pop("RAY_ADDRESS", None)
    cmd = [str(bin_dir / "ray"), "start", "--block", f"--temp-dir={temp_dir}",
           f"--dashboard-agent-listen-port={free_port()}", "--disable-usage-stats", *args]
    log = open(Path(temp_dir) / "ray-start.log", "wb")  # noqa: SIM115 - lives as long as the node
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop_process_tree(proc: subprocess.Popen, temp_dir: str | Path, sig: int = signal.SIGTERM) -> None:
    """Stop `proc` (its group) and whatever runs from `temp_dir`: never `ray stop`, which stops every Ray."""
    import psutil

    if proc.poll() is None:
        try:
            # SIGKILL hits the whole group at once, as a preempted node would; SIGTERM lets Ray tear down.
            if sig == signal.SIGKILL:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            mine = os.getpgid(p.pid) == proc.pid or str(temp_dir) in " ".join(p.info["cmdline"] or [])
        except (ProcessLookupError, psutil.Error):
            continue
        if mine and p.pid != os.getpid():
            try:
                p.kill()
            except psutil.Error:
                pass
    shutil.rmtree(temp_dir, ignore_errors=True)
