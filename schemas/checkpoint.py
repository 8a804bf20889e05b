"""Where things live in a training checkpoint (the contract every trainer, loader and evaluator shares).

A run keeps its checkpoints under `RUN/checkpoints/step_00000100/`. Each holds top-level files (weights
and optimizer state as safetensors, scalars as JSON) and folders (an HF tokenizer, an HF LM, a diffusers
decoder). The `complete` marker is written last and lists every file with its size and sha256: a folder
without it, or whose files disagree with it, is not a checkpoint. No torch, no ray here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

CHECKPOINTS_DIR = "checkpoints"
STEP_PREFIX = "step_"
STEP_DIGITS = 8
COMPLETE_MARKER = "complete"
"""Written last: JSON with the step, every file (path, bytes, sha256), the folders and the time."""

MARKER_FORMAT = "vtok.checkpoint"
MARKER_VERSION = 1

TRAINABLE = "trainable.safetensors"
"""The trainable weights (LoRA, projector, heads): whatever the job trains that is not a whole HF model."""
OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_META = "optimizer.json"
"""The optimizer's param_groups and non-tensor state; its tensors are in OPTIMIZER_TENSORS."""
SCHEDULER = "scheduler.json"
STATE = "state.json"
"""Step, epoch, batches seen, RNG states as lists, any other scalar."""
CONFIG = "config.json"
"""The resolved job config."""
DATA = "data.json"
"""The token dataset's fingerprint and identity: a resume on other data is refused."""
FEATURE_STATS = "feature_stats.safetensors"
G_PHI = "g_phi.safetensors"
TEXT_TOKENIZER_DIR = "text_tokenizer"
LLM_DIR = "llm"
"""An HF model directory, when the LM is trained in full."""
DECODER_DIR = "decoder"
"""A diffusers directory."""

TENSOR_SUFFIX = ".safetensors"
JSON_SUFFIX = ".json"

_STEP_RE = re.compile(rf"{STEP_PREFIX}(\d{{{STEP_DIGITS},}})")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


def step_dir_name(step: int) -> str:
    """The folder of one checkpoint: step_00000100 (8 digits, more past 99,999,999)."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"a checkpoint step must be an int >= 0, got {step!r}")
    return f"{STEP_PREFIX}{step:0{STEP_DIGITS}d}"


def parse_step(name: str) -> int | None:
    """The step of a checkpoint folder name, or None for anything else (only the canonical spelling counts)."""
    match = _STEP_RE.fullmatch(name)
    if match is None:
        return None
    step = int(match.group(1))
    # step_000000100 would be a second folder for step 100: only the name step_dir_name gives is one.
    return step if step_dir_name(step) == name else None


def checkpoint_relpath(step: int) -> str:
    """A checkpoint's path relative to its run: checkpoints/step_00000100."""
    return f"{CHECKPOINTS_DIR}/{step_dir_name(step)}"


def is_safe_relpath(path: str) -> bool:
    """Whether a path from a marker stays inside its checkpoint (no '..', no absolute path, no empty part)."""
    if not isinstance(path, str) or not path or path.startswith("/") or "\\" in path or "\x00" in path:
        return False
    return all(part not in ("", ".", "..") for part in path.split("/"))


def entry_name_problem(name: str) -> str | None:
    """Why `name` cannot be a top-level file or folder of a checkpoint, or None when it can."""
    if not isinstance(name, str) or not is_safe_relpath(name) or "/" in name:
        return f"{name!r} is not a plain file or folder name"
    if name == COMPLETE_MARKER:
        return f"{name!r} is reserved for the marker"
    if name.startswith("."):
        # Temporary files start with a dot; a checkpoint entry must never look like one.
        return f"{name!r} starts with a dot"
    return None


@dataclass(frozen=True)
class FileRecord:
    """One file of a checkpoint as its marker lists it."""

    path: str
    bytes: int
    sha256: str


def make_marker(step: int, files: Iterable[FileRecord], *, dirs: Iterable[str] = (), time: str) -> dict[str, Any]:
    """The JSON value of a `complete` marker (files sorted by path, so equal checkpoints give equal markers)."""
    step_dir_name(step)
    return {
        "format": MARKER_FORMAT,
        "version": MARKER_VERSION,
        "step": step,
        "files": [
            {"path": f.path, "bytes": f.bytes, "sha256": f.sha256} for f in sorted(files, key=lambda f: f.path)
        ],
        "dirs": sorted(dirs),
        "time": time,
    }


def marker_problems(marker: Any, *, step: int | None = None) -> list[str]:
    """What is wrong with a marker's own content (not the files it lists), as sentences; [] when it is sound."""
    if not isinstance(marker, Mapping):
        return ["the 'complete' marker is not a JSON object"]
    if marker.get("format") != MARKER_FORMAT:
        return [f"the 'complete' marker has format {marker.get('format')!r}, not {MARKER_FORMAT!r}"]
    if marker.get("version") != MARKER_VERSION:
        return [f"the 'complete' marker has version {marker.get('version')!r}; this vtok reads {MARKER_VERSION}"]
    problems: list[str] = []
    marker_step = marker.get("step")
    if isinstance(marker_step, bool) or not isinstance(marker_step, int) or marker_step < 0:
        problems.append(f"the 'complete' marker has step {marker_step!r}, not an int >= 0")
    elif step is not None and marker_step != step:
        problems.append(f"the 'complete' marker is for step {marker_step}, but the folder is for step {step}")
    dirs = marker.get("dirs")
    if not isinstance(dirs, list) or any(entry_name_problem(d) for d in dirs):
        problems.append("the 'complete' marker's dirs are not a list of plain folder names")
        dirs = []
    files = marker.get("files")
    if not isinstance(files, list):
        return [*problems, "the 'complete' marker's files are not a list"]
    seen: set[str] = set()
    for entry in files:
        if not isinstance(entry, Mapping) or set(entry) != {"path", "bytes", "sha256"}:
            problems.append(f"the 'complete' marker lists {entry!r}, not a {{path, bytes, sha256}} object")
            continue
        path, size, digest = entry["path"], entry["bytes"], entry["sha256"]
        if not is_safe_relpath(path):
            problems.append(f"the 'complete' marker lists the path {path!r}, which leaves the checkpoint")
            continue
        if path in seen:
            problems.append(f"the 'complete' marker lists {path!r} twice")
        seen.add(path)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            problems.append(f"the 'complete' marker gives {path!r} the size {size!r}")
        if not isinstance(digest, str) or _SHA256_RE.fullmatch(digest) is None:
            problems.append(f"the 'complete' marker gives {path!r} the sha256 {digest!r}")
        top = path.split("/", 1)[0]
        if "/" in path:
            if top not in dirs:
                problems.append(f"the 'complete' marker lists {path!r} in a folder it does not name")
        elif entry_name_problem(path) is not None:
            problems.append(f"the 'complete' marker lists {path!r}: {entry_name_problem(path)}")
        elif not path.endswith((TENSOR_SUFFIX, JSON_SUFFIX)):
            problems.append(f"the 'complete' marker lists {path!r}, neither {TENSOR_SUFFIX} nor {JSON_SUFFIX}")
    return problems


def marker_files(marker: Mapping[str, Any]) -> dict[str, FileRecord]:
    """The files a sound marker lists, by path (check marker_problems first)."""
    return {e["path"]: FileRecord(e["path"], e["bytes"], e["sha256"]) for e in marker["files"]}


def validate_checkpoint_listing(
    files: Mapping[str, int], marker: Any | None, *, step: int | None = None
) -> list[str]:
    """Why a checkpoint folder is not a complete checkpoint, as sentences; [] when it is one.

    Loaders refuse, and listings skip, a folder with any problem. `files` maps every path present under the folder (relative, '/'-separated) to its size; `marker` is
    the parsed `complete` marker, None when there is none. Files the marker does not list are ignored
    (only what the marker names is ever read). Content (sha256) is checked by the loader as it reads.
    """
    if marker is None or COMPLETE_MARKER not in files:
        return [f"there is no '{COMPLETE_MARKER}' marker: the checkpoint was never finished (or is being deleted)"]
    problems = marker_problems(marker, step=step)
    if problems:
        return problems
    for path, record in marker_files(marker).items():
        if path not in files:
            problems.append(f"{path!r} is listed by the marker but missing")
        elif files[path] != record.bytes:
            problems.append(f"{path!r} has {files[path]} bytes, the marker says {record.bytes}")
    return problems
