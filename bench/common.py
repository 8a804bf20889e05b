"""Shared helpers of the benchmarks: timing, interleaved repeats, medians, tables, result JSON, caches.

Every benchmark compares contenders side by side in one process run and reports medians and ratios.
Contenders are interleaved (A B C, B C A, C A B, ...) rather than run in blocks, so that load from
other processes on a shared machine lands on all of them alike instead of on whichever ran last.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a small smoke run (< 1 min) instead of the full one")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per contender (default: per benchmark)")
    p.add_argument("--out", type=Path, default=None, help="result JSON path (default: bench/results/<name>.json)")
    return p


def cache_dir(*parts: str) -> Path:
    """Where generated inputs are kept between runs: $VTOK_BENCH_CACHE, else $VTOK_CACHE/bench.

    Never inside the repository: the inputs are media files that must not be committed.
    """
    root = os.environ.get("VTOK_BENCH_CACHE")
    if root is None:
        root = str(Path(os.environ.get("VTOK_CACHE", Path.home() / ".cache" / "vtok")) / "bench")
    path = Path(root).joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def cached_corpus(name: str, fill: Callable[[Path], None]) -> str:
    """The manifest of corpus `name` in the cache, made once by `fill(folder)` if missing.

    `fill` writes into a staging folder that is renamed into place when complete, so an interrupted
    generation is never mistaken for a corpus.
    """
    import shutil
    import tempfile

    root = cache_dir("corpus") / name
    manifest = root / "manifest.jsonl"
    if manifest.is_file():
        return str(manifest)
    staging = Path(tempfile.mkdtemp(dir=root.parent, prefix=".staging-"))
    fill(staging)
    assert (staging / "manifest.jsonl").is_file(), f"corpus {name}: fill() wrote no manifest.jsonl"
    shutil.rmtree(root, ignore_errors=True)
    staging.rename(root)
    return str(manifest)


def _lscpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def machine_info() -> dict[str, Any]:
    """What the figures were measured on, read from the machine rather than assumed."""
    import psutil

    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": _lscpu_model(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for module in ("torch", "av", "decord", "ray", "pyarrow", "transformers"):
        try:
            info[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001 - a missing optional module is just not reported
            info[module] = None
    try:
        import torch

        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001
        info["gpu"] = None
    return info


def time_call(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of one call, by the monotonic high-resolution clock."""
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def interleaved(
    contenders: dict[str, Callable[[], Any]],
    repeats: int,
    warmup: bool = True,
    on_result: Callable[[str, float, Any], None] | None = None,
) -> dict[str, list[float]]:
    """Run each contender `repeats` times, rotating the order every round; returns seconds per run.

    A warm-up round (untimed) first loads libraries and fills the page cache for all of them alike.
    `on_result(name, seconds, result)` sees every timed run, e.g. to check outputs or log progress.
    """
    names = list(contenders)
    if warmup:
        for name in names:
            contenders[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            seconds, result = time_call(contenders[name])
            times[name].append(seconds)
            if on_result is not None:
                on_result(name, seconds, result)
    return times


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def summary(values: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and every value: the JSON keeps the raw runs so spread can be judged later."""
    return {
        "median": median(values),
        "min": min(values) if values else None,
        "max": max(values) if values else None,
        "runs": [round(v, 6) for v in values],
    }


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: floats to `digits` significant figures, everything else as str."""
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        if value == 0 or 1e-3 <= abs(value) < 1e6:
            return f"{value:.{digits}g}" if abs(value) < 10 ** digits else f"{value:.0f}"
        return f"{value:.{digits}e}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (printable as is, and pasteable into BENCHMARKS.md)."""
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |"]
    lines.append("| " + " | ".join("-" * w for w in widths) + " |")
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    return "\n".join(lines)


def write_results(name: str, payload: dict[str, Any], out: Path | None = None) -> Path:
    """Write the benchmark's JSON (with the machine and command line) to bench/results/<name>.json."""
    path = out or RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": name,
        "command": " ".join([Path(sys.executable).name, "-m", f"bench.{name}", *sys.argv[1:]]),
        "unix_time": time.time(),
        "machine": machine_info(),
        **payload,
    }
    path.write_text(json.dumps(doc, indent=2, default=_json_default) + "\n")
    return path


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def log(message: str) -> None:
    """Progress to stderr, so stdout holds only the result tables."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


@contextmanager
def env(**values: str) -> Iterator[None]:
    """Set environment variables for the duration of a block, restoring the old values after."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class TreeCpu:
    """CPU seconds used by a process (default: this one) and all its descendants, sampled in a thread.

    Ray workers and actors are descendants of the driver, and an actor's process ends with its run, so
    the CPU time of every process is sampled every `interval_s` and kept after it exits (losing at most
    one interval of a process's last work). Wall time under load measures a share of the machine; CPU
    seconds per item measure the work itself, so both are reported.
    """

    def __init__(self, pid: int | None = None, interval_s: float = 0.2) -> None:
        import threading

        import psutil

        self._root = psutil.Process(pid)
        self._seen: dict[tuple[int, float], float] = {}
        self._lock = threading.Lock()
        self._interval = interval_s
        self._stop = threading.Event()
        self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        import psutil

        try:
            procs = [self._root, *self._root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for p in procs:
            try:
                # (pid, start time) names a process even if its pid is reused later.
                key = (p.pid, p.create_time())
                t = p.cpu_times()
                used = t.user + t.system
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            with self._lock:
                self._seen[key] = max(self._seen.get(key, 0.0), used)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def total(self) -> float:
        """CPU seconds of the tree so far (sampled now)."""
        self._sample()
        with self._lock:
            return sum(self._seen.values())

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def git_worktree(rev: str, prefix: str = "vtok-bench-rev-") -> tuple[Path, bool]:
    """A detached git worktree of `rev` under /tmp (for a 'before' contender); (its path, made now).

    An existing worktree of the same commit is reused and reported as not made now, so a caller
    removes only what it made (`remove_worktree`).
    """
    import tempfile

    sha = subprocess.run(["git", "rev-parse", "--short", rev], check=True, capture_output=True, text=True).stdout.strip()
    tree = Path(tempfile.gettempdir()) / f"{prefix}{sha}"
    if tree.is_dir():
        return tree, False
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), sha], check=True, capture_output=True)
    return tree, True


def remove_worktree(tree: Path) -> None:
    """Remove a worktree made by `git_worktree` (its files and git's record of it)."""
    subprocess.run(["git", "worktree", "remove", "--force", str(tree)], check=False, capture_output=True)
