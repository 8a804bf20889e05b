"""The official VBench package, run in its own environment, and VBench's own constants. Stdlib + numpy only.

VBench's dimensions other than temporal_flickering need weights (DINO, RAFT, AMT, CLIP, MUSIQ, ...) and a
torch/CUDA stack of their own, so vtok never imports it: `run_official` runs VBench's command line
(`vbench evaluate --videos_path DIR --dimension D --mode custom_input --output_path OUT`, flags as in
Vchitect/VBench vbench/cli/evaluate.py) with the interpreter of a separate environment (`vbench.python`)
and VBENCH_CACHE_DIR pointing at its weights, then parses the `*_eval_results.json` it writes
(`parse_eval_results`).

The normalization bounds, dimension weights and quality/semantic lists are copied from Vchitect/VBench
scripts/constant.py and applied as scripts/cal_final_score.py does (`quality_score`, `semantic_score`,
`total_score`), keyed by the dimension names of the command line (VBench's scripts key them with spaces:
"temporal flickering").
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vtok.errors import InputError, VtokError

NORMALIZE_BOUNDS: dict[str, tuple[float, float]] = {
    "subject_consistency": (0.1462, 1.0),
    "background_consistency": (0.2615, 1.0),
    "temporal_flickering": (0.6293, 1.0),
    "motion_smoothness": (0.706, 0.9975),
    "dynamic_degree": (0.0, 1.0),
    "aesthetic_quality": (0.0, 1.0),
    "imaging_quality": (0.0, 1.0),
    "object_class": (0.0, 1.0),
    "multiple_objects": (0.0, 1.0),
    "human_action": (0.0, 1.0),
    "color": (0.0, 1.0),
    "spatial_relationship": (0.0, 1.0),
    "scene": (0.0, 0.8222),
    "appearance_style": (0.0009, 0.2855),
    "temporal_style": (0.0, 0.364),
    "overall_consistency": (0.0, 0.364),
}
"""(Min, Max) of each dimension: VBench's NORMALIZE_DIC (scripts/constant.py)."""

DIM_WEIGHT: dict[str, float] = {name: 1.0 for name in NORMALIZE_BOUNDS} | {"dynamic_degree": 0.5}
"""Weight of each dimension in its group: VBench's DIM_WEIGHT (all 1 but dynamic_degree 0.5)."""

QUALITY_DIMENSIONS: tuple[str, ...] = (
    "subject_consistency", "background_consistency", "temporal_flickering", "motion_smoothness",
    "aesthetic_quality", "imaging_quality", "dynamic_degree",
)
"""VBench's QUALITY_LIST."""

SEMANTIC_DIMENSIONS: tuple[str, ...] = (
    "object_class", "multiple_objects", "human_action", "color", "spatial_relationship", "scene",
    "appearance_style", "temporal_style", "overall_consistency",
)
"""VBench's SEMANTIC_LIST."""

QUALITY_WEIGHT = 4.0
SEMANTIC_WEIGHT = 1.0
"""Weights of the quality and semantic scores in VBench's total (scripts/constant.py)."""

DIMENSIONS: tuple[str, ...] = QUALITY_DIMENSIONS + SEMANTIC_DIMENSIONS
WEIGHT_FREE: frozenset[str] = frozenset({"temporal_flickering"})
"""Dimensions VBench computes without any model (vtok computes these itself, exactly)."""

CUSTOM_INPUT_UNSUPPORTED: frozenset[str] = frozenset(
    {"object_class", "multiple_objects", "scene", "appearance_style", "color", "spatial_relationship"}
)
"""Dimensions VBench refuses in custom_input mode: they need its own prompt suite's auxiliary info
(VBench.check_dimension_requires_extra_info in vbench/__init__.py)."""

_SHELL_SAFE = re.compile(r"[A-Za-z0-9_./+:=@%,-]+")
_RUNNER = "import sys; sys.argv[0] = 'vbench'; from vbench.cli.vbench import main; main()"


class VBenchRunError(VtokError):
    """The official VBench run failed: a non-zero exit, a timeout or no results file."""


@dataclass
class VBenchConfig:
    """What `vbench_metrics` reports and how it reaches the official package."""

    dimensions: tuple[str, ...] = ("temporal_flickering",)
    """VBench dimensions to report: temporal_flickering computed here, the others by the official package."""
    proxies: bool = True
    """Also report the weight-free proxy_* metrics (never mixed into VBench's scores)."""
    python: str | None = None
    """Interpreter of a separate environment with VBench installed; needed for any weighted dimension."""
    cache_dir: str | None = None
    """VBENCH_CACHE_DIR, the folder of VBench's weights; None takes the environment's VBENCH_CACHE_DIR."""
    output_dir: str | None = None
    """Where the official run writes its videos and results (a folder per dimension); None = a temp folder."""
    timeout_s: float = 3600.0
    """Wall-clock limit of one official `vbench evaluate` run (one dimension)."""
    ngpus: int = 1
    """VBench's --ngpus: GPUs its torch.distributed launcher uses."""
    load_ckpt_from_local: bool = True
    """VBench's --load_ckpt_from_local: read CLIP/DINO weights from VBENCH_CACHE_DIR, not from their hubs."""
    fps: float = 8.0
    """Frame rate of the mp4s written for the official package and of the frames proxy_dynamic_degree gets."""


def check_config(cfg: VBenchConfig) -> dict[str, Any]:
    """Validate `cfg`: {"official": [dimensions for the package], "python": Path|None, "cache_dir": str|None}.

    Raises InputError naming the key: an unknown or repeated dimension (listing the known ones), one VBench
    refuses in custom_input mode, `vbench.python` missing or not executable, VBENCH_CACHE_DIR unset or not a
    folder when a weighted dimension is asked, a bad timeout, ngpus or fps.
    """
    dims = list(cfg.dimensions)
    for name in dims:
        if name not in NORMALIZE_BOUNDS:
            raise InputError(f"vbench.dimensions: unknown dimension {name!r}; known: {', '.join(DIMENSIONS)}")
        if dims.count(name) > 1:
            raise InputError(f"vbench.dimensions: {name!r} is listed twice")
        if name in CUSTOM_INPUT_UNSUPPORTED:
            supported = [d for d in DIMENSIONS if d not in CUSTOM_INPUT_UNSUPPORTED]
            raise InputError(f"vbench.dimensions: {name!r} needs VBench's own prompt suite, which "
                             f"custom_input mode lacks; supported: {', '.join(supported)}")
    if not (isinstance(cfg.timeout_s, (int, float)) and cfg.timeout_s > 0):
        raise InputError(f"vbench.timeout_s must be > 0, got {cfg.timeout_s!r}")
    if not (isinstance(cfg.ngpus, int) and cfg.ngpus >= 1):
        raise InputError(f"vbench.ngpus must be an int >= 1, got {cfg.ngpus!r}")
    if not (isinstance(cfg.fps, (int, float)) and cfg.fps > 0):
        raise InputError(f"vbench.fps must be > 0, got {cfg.fps!r}")
    official = [d for d in dims if d not in WEIGHT_FREE]
    out: dict[str, Any] = {"official": official, "python": None, "cache_dir": None}
    if not official:
        return out
    if not cfg.python:
        raise InputError(f"vbench.python: not set; dimensions {', '.join(official)} need an interpreter "
                         "with VBench installed")
    python = Path(cfg.python).expanduser()
    if not python.exists():
        raise InputError(f"vbench.python: {python} does not exist")
    if not python.is_file() or not os.access(python, os.X_OK):
        raise InputError(f"vbench.python: {python} is not an executable file")
    cache = cfg.cache_dir or os.environ.get("VBENCH_CACHE_DIR")
    if not cache:
        raise InputError(f"VBENCH_CACHE_DIR: not set (vbench.cache_dir or the environment); dimensions "
                         f"{', '.join(official)} need VBench's weights there")
    if not Path(cache).expanduser().is_dir():
        raise InputError(f"VBENCH_CACHE_DIR: {cache} is not a folder")
    out.update(python=python, cache_dir=str(Path(cache).expanduser()))
    return out


def _shell_safe(key: str, value: str) -> str:
    # VBench's evaluate joins its arguments into one unquoted shell line (vbench/cli/evaluate.py).
    if not _SHELL_SAFE.fullmatch(value):
        raise InputError(f"{key}: {value!r} has a character VBench's shell command line cannot carry "
                         "(use letters, digits and ._/+:=@%,-)")
    return value


def evaluate_command(python: Path, videos_dir: str, dimension: str, output_path: str,
                     cfg: VBenchConfig) -> list[str]:
    """The argv of one `vbench evaluate`: VBench's console script (vbench.cli.vbench:main) under `python`."""
    cmd = [str(python), "-c", _RUNNER, "evaluate",
           "--videos_path", _shell_safe("vbench videos_path", videos_dir),
           "--dimension", dimension, "--mode", "custom_input",
           "--output_path", _shell_safe("vbench.output_dir", output_path),
           "--ngpus", str(cfg.ngpus)]
    if cfg.load_ckpt_from_local:
        # argparse type=bool: any non-empty string is True, so the flag is given only when wanted.
        cmd += ["--load_ckpt_from_local", "True"]
    return cmd


def run_official(videos_dir: str | Path, cfg: VBenchConfig) -> list[dict[str, Any]]:
    """Run VBench on the videos of `videos_dir` for each weighted dimension of `cfg`: parse_eval_results rows.

    One `vbench evaluate` per dimension, each into `output_dir/<dimension>/`, in the environment of
    `vbench.python` (its folder first on PATH: VBench starts `python -m torch.distributed.run` through a
    shell) with VBENCH_CACHE_DIR set. Raises InputError for bad configuration (check_config) and
    VBenchRunError naming the dimension when a run exits non-zero, times out or writes no results file.
    """
    import tempfile

    resolved = check_config(cfg)
    if not resolved["official"]:
        return []
    videos = str(Path(videos_dir).resolve())
    if not Path(videos).is_dir():
        raise InputError(f"vbench videos_path: {videos} is not a folder")
    root = Path(cfg.output_dir).expanduser().resolve() if cfg.output_dir else Path(
        tempfile.mkdtemp(prefix="vtok-vbench-"))
    python: Path = resolved["python"]
    env = dict(os.environ)
    env["VBENCH_CACHE_DIR"] = resolved["cache_dir"]
    env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
    rows: list[dict[str, Any]] = []
    for dimension in resolved["official"]:
        out = root / dimension
        cmd = evaluate_command(python, videos, dimension, str(out), cfg)  # refuses an unsafe path first
        out.mkdir(parents=True, exist_ok=True)
        started = time.time()
        returncode, stdout, stderr = _run(cmd, out, env, cfg.timeout_s, dimension)
        if returncode != 0:
            raise VBenchRunError(f"vbench evaluate --dimension {dimension}: exit {returncode}: "
                                 f"{_last_line(stderr or stdout)}")
        # Files from earlier runs into the same folder stay (never ours to delete); only this run's count.
        fresh = [p for p in out.glob("*_eval_results.json") if p.stat().st_mtime >= started - 1.0]
        if not fresh:
            # VBench's evaluate ignores its launcher's exit status, so a failed launch shows up only here.
            raise VBenchRunError(f"vbench evaluate --dimension {dimension}: no *_eval_results.json in {out}; "
                                 f"last output: {_last_line(stderr or stdout)}")
        newest = max(fresh, key=lambda p: p.stat().st_mtime)
        found = [r for r in parse_eval_results(newest) if r["metric"] == dimension]
        if not found:
            raise VBenchRunError(f"{newest}: has no results for dimension {dimension!r}")
        rows += found
    return rows


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout_s: float,
         dimension: str) -> tuple[int, str, str]:
    """Run `cmd`; on timeout kill its whole process group (VBench's launcher, its GPU workers) and raise."""
    import signal

    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            pass  # a process that left the group still holds the pipes; the run is over for us regardless
        raise VBenchRunError(f"vbench evaluate --dimension {dimension}: timed out after {timeout_s:g} s "
                             "(vbench.timeout_s)") from None
    return proc.returncode, stdout, stderr


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def _number(path: Any, where: str, value: Any) -> float:
    # dynamic_degree and human_action give a bool per video; VBench averages them as 0/1.
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    raise InputError(f"{path}: {where} is {value!r}, not a finite number")


def parse_eval_results(path: str | Path) -> list[dict[str, Any]]:
    """Rows {metric, value, n, per_video: [{video_path, value}]} of a VBench `*_eval_results.json`.

    Its layout (VBench.evaluate in vbench/__init__.py, each compute_<dimension>):
    {dimension: [aggregate, [{"video_path": ..., "video_results": number or bool, ...}, ...]]}. `value` is
    VBench's aggregate as written (a mean over videos for most dimensions, over frames for the
    consistency ones); `n` counts the videos. Raises InputError naming the file and the entry that is not
    in that layout.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not a VBench results JSON ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict) or not data:
        raise InputError(f"{path}: expected an object {{dimension: [aggregate, per-video list]}}")
    rows: list[dict[str, Any]] = []
    for dimension, entry in data.items():
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], list)):
            raise InputError(f"{path}: {dimension!r} is not [aggregate, per-video list]")
        per_video = []
        for i, video in enumerate(entry[1]):
            if not (isinstance(video, dict) and "video_results" in video):
                raise InputError(f"{path}: {dimension!r} video {i} has no 'video_results'")
            per_video.append({"video_path": str(video.get("video_path", "")),
                              "value": _number(path, f"{dimension!r} video {i}", video["video_results"])})
        rows.append({"metric": str(dimension), "value": _number(path, f"{dimension!r} aggregate", entry[0]),
                     "n": len(per_video), "per_video": per_video})
    return rows


def _weighted(values: Mapping[str, float], names: tuple[str, ...], bounds_of: Mapping[str, str],
              group: str) -> tuple[float, list[str]]:
    used = [name for name in names if name in values]
    if not used:
        raise InputError(f"no {group} dimension in values (got {', '.join(sorted(values)) or 'none'}); "
                         f"{group} dimensions: {', '.join(names)}")
    total = 0.0
    for name in used:
        value = values[name]
        if not (isinstance(value, (int, float)) and math.isfinite(value)):
            raise InputError(f"values[{name!r}] is {value!r}, not a finite number")
        lo, hi = NORMALIZE_BOUNDS[bounds_of[name]]
        total += (float(value) - lo) / (hi - lo) * DIM_WEIGHT[bounds_of[name]]
    return total / sum(DIM_WEIGHT[bounds_of[n]] for n in used), used


def _official_only(values: Mapping[str, float]) -> None:
    for name in values:
        if name not in NORMALIZE_BOUNDS and not name.startswith("proxy_"):
            raise InputError(f"values: unknown dimension {name!r}; known: {', '.join(DIMENSIONS)}")


def quality_score(values: Mapping[str, float]) -> tuple[float, list[str]]:
    """VBench's quality score over the quality dimensions present in `values`, and which those were.

    Each value v of dimension d is normalized (v - Min_d) / (Max_d - Min_d) (not clipped, as VBench does) and
    the score is sum(w_d * normalized) / sum(w_d) over the dimensions used (scripts/cal_final_score.py; it
    counts a missing dimension as 0, this uses only those present). proxy_* keys never enter it; an
    unknown key is an InputError.
    """
    _official_only(values)
    return _weighted(values, QUALITY_DIMENSIONS, {d: d for d in QUALITY_DIMENSIONS}, "VBench quality")


def semantic_score(values: Mapping[str, float]) -> tuple[float, list[str]]:
    """VBench's semantic score over the semantic dimensions present in `values` (as quality_score)."""
    _official_only(values)
    return _weighted(values, SEMANTIC_DIMENSIONS, {d: d for d in SEMANTIC_DIMENSIONS}, "VBench semantic")


def total_score(values: Mapping[str, float]) -> tuple[float, list[str]]:
    """VBench's total (4 * quality + 1 * semantic) / 5; needs at least one dimension of each group."""
    quality, q_used = quality_score(values)
    semantic, s_used = semantic_score(values)
    total = (quality * QUALITY_WEIGHT + semantic * SEMANTIC_WEIGHT) / (QUALITY_WEIGHT + SEMANTIC_WEIGHT)
    return total, q_used + s_used


PROXY_STANDS_FOR: dict[str, str] = {
    "temporal_flickering": "temporal_flickering",
    "proxy_subject_consistency": "subject_consistency",
    "proxy_motion_smoothness": "motion_smoothness",
    "proxy_dynamic_degree": "dynamic_degree",
}
"""The metrics proxy_quality_score takes, and the VBench dimension whose bounds and weight each borrows."""


def proxy_quality_score(values: Mapping[str, float]) -> tuple[float, list[str]]:
    """quality_score's formula over the weight-free metrics: exact temporal_flickering and the proxy_* ones.

    Not a VBench number: the proxies only borrow their dimension's bounds and weight (PROXY_STANDS_FOR).
    Other keys are ignored.
    """
    return _weighted(values, tuple(PROXY_STANDS_FOR), PROXY_STANDS_FOR, "weight-free")
