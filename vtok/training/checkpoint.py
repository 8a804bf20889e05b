"""Training checkpoints on local disk or any fsspec store (s3://): save, list, load, retain. No pickle.

Layout and marker: schemas.checkpoint. Every file is published whole (vtok.training.checkpoint_io) and the
`complete` marker goes last, so a folder without a valid marker is a crash's leftover and everything here
ignores it. Deleting withdraws the marker first, for the same reason. One writer per run (rank 0) is
assumed: two processes saving the same step at once are not coordinated.

Optimizer, LR-scheduler and RNG state without pickle: vtok.training.train_state.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from schemas.checkpoint import (
    CHECKPOINTS_DIR,
    COMPLETE_MARKER,
    JSON_SUFFIX,
    TENSOR_SUFFIX,
    FileRecord,
    entry_name_problem,
    make_marker,
    marker_files,
    parse_step,
    step_dir_name,
    validate_checkpoint_listing,
)
from vtok.errors import InputError
from vtok.storage import is_local, join, strip_file_scheme
from vtok.training.checkpoint_io import (
    Publisher,
    delete_checkpoint_folder,
    download_once,
    fresh_fs,
    listing,
    local_files,
    sha256_file,
)


class CheckpointError(InputError):
    """A checkpoint that cannot be used (no marker, a missing or changed file), or a bad save request."""


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint folder of a run; `complete` is True only when its marker is sound and its files match."""

    step: int
    uri: str
    complete: bool
    problems: tuple[str, ...] = ()


@dataclass
class LoadedCheckpoint:
    """Everything one checkpoint holds: tensors per safetensors file, parsed JSON per file, a local path per folder."""

    uri: str
    step: int
    tensors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    json_files: dict[str, Any] = field(default_factory=dict)
    dirs: dict[str, Path] = field(default_factory=dict)
    marker: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- writing


def _json_bytes(name: str, value: Any) -> bytes:
    try:
        # Strict JSON (no NaN/Infinity): any reader, not only Python's, must parse what vtok writes.
        text = json.dumps(value, indent=2, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{name}: cannot be written as JSON ({err})") from err
    return (text + "\n").encode()


def _savable(tensors: Mapping[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors that own their memory: safetensors refuses tensors sharing storage (tied weights)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in tensors.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{name}: {key!r} is not a str -> torch.Tensor entry")
        t = value.detach().cpu().contiguous()
        storage = t.untyped_storage()
        if storage.data_ptr() in seen or storage.nbytes() != t.nbytes:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[key] = t
    return out


def _check_save_request(
    tensors: Mapping[str, Any], json_files: Mapping[str, Any], dirs: Mapping[str, Any],
    files: Mapping[str, Any] | None = None,
) -> None:
    files = files or {}
    names: list[str] = [*tensors, *json_files, *dirs, *files]
    for name in names:
        problem = entry_name_problem(name)
        if problem:
            raise CheckpointError(f"checkpoint entry {problem}")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise CheckpointError(f"checkpoint entries {duplicates} are given twice")
    for name in tensors:
        if not name.endswith(TENSOR_SUFFIX):
            raise CheckpointError(f"checkpoint tensor file {name!r} must end with {TENSOR_SUFFIX}")
    for name in json_files:
        if not name.endswith(JSON_SUFFIX):
            raise CheckpointError(f"checkpoint JSON file {name!r} must end with {JSON_SUFFIX}")
    for name, folder in dirs.items():
        if not Path(folder).is_dir():
            raise CheckpointError(f"checkpoint folder {name!r}: {folder} is not a local directory")
    for name, path in files.items():
        if not name.endswith((TENSOR_SUFFIX, JSON_SUFFIX)):
            raise CheckpointError(f"checkpoint file {name!r} must end with {TENSOR_SUFFIX} or {JSON_SUFFIX}")
        if not Path(path).is_file():
            raise CheckpointError(f"checkpoint file {name!r}: {path} is not a local file")


def _hold_sources(uri: str, dirs: dict[str, str | Path]) -> Path | None:
    """Move folders to copy that live inside the checkpoint about to be replaced (a resumed run saving its
    step again with the tokenizer it loaded from there) out of harm's way; updates `dirs`."""
    if not is_local(uri):
        return None
    target = Path(strip_file_scheme(uri)).resolve()
    inside = {name: Path(folder).resolve() for name, folder in dirs.items()
              if target in Path(folder).resolve().parents}
    if any(Path(folder).resolve() == target for folder in dirs.values()):
        raise CheckpointError(f"{uri}: a checkpoint cannot contain a copy of itself")
    if not inside:
        return None
    # Beside the step folder, so moving is a rename; the dot keeps list_checkpoints from seeing it.
    holding = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-hold-"))
    for name, src in inside.items():
        src.rename(holding / name)
        dirs[name] = holding / name
    return holding


def save_checkpoint(
    run_uri: str,
    step: int,
    *,
    tensors: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    json_files: Mapping[str, Any] | None = None,
    dirs: Mapping[str, str | Path] | None = None,
    files: Mapping[str, str | Path] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> str:
    """Write checkpoint `step` of the run, the `complete` marker last, and return its URI.

    `tensors`: file name -> tensors (one safetensors file each); `json_files`: file name -> JSON value;
    `dirs`: folder name -> a local folder copied whole; `files`: file name -> a local safetensors or JSON
    file copied byte for byte (one a model wrote itself, with its own metadata). An existing folder for `step`, half written or
    complete, is replaced (its marker withdrawn first). Bad names or non-JSON values fail before any write.
    """
    tensors, json_files, dirs = dict(tensors or {}), dict(json_files or {}), dict(dirs or {})
    files = dict(files or {})
    uri = join(run_uri, CHECKPOINTS_DIR, step_dir_name(step))
    _check_save_request(tensors, json_files, dirs, files)
    # Serialise before touching storage: a JSON error must not cost the old folder for this step.
    encoded = {name: _json_bytes(name, value) for name, value in json_files.items()}
    holding = _hold_sources(uri, dirs)
    delete_checkpoint_folder(uri, storage_options)
    pub = Publisher(uri, storage_options)
    try:
        for name, group in tensors.items():
            tmp = pub.spool(name)
            try:
                safetensors.torch.save_file(_savable(group, name), tmp, metadata={"format": "pt"})
            except BaseException:
                os.unlink(tmp)
                raise
            pub.publish(tmp, name)
        for name, data in encoded.items():
            pub.publish_bytes(data, name)
        for name, path in files.items():
            pub.publish_copy(Path(path), name)
        for name, folder in dirs.items():
            for src, rel in local_files(Path(folder)):
                pub.publish_copy(src, f"{name}/{rel}")
        pub.durable()
        time = datetime.now(timezone.utc).isoformat(timespec="seconds")
        marker = make_marker(step, pub.records, dirs=dirs, time=time)
        pub.publish_bytes(_json_bytes(COMPLETE_MARKER, marker), COMPLETE_MARKER)
        pub.durable()
    finally:
        pub.close()
        if holding is not None:
            shutil.rmtree(holding, ignore_errors=True)
    return uri


# ---------------------------------------------------------------------------------------------- reading


def _read_marker(fs: Any, root: str, files: Mapping[str, int]) -> tuple[Any | None, list[str]]:
    if COMPLETE_MARKER not in files:
        return None, []
    try:
        return json.loads(fs.cat_file(f"{root}/{COMPLETE_MARKER}")), []
    except FileNotFoundError:
        return None, []
    except (ValueError, UnicodeDecodeError):
        return None, [f"the '{COMPLETE_MARKER}' marker is not valid JSON"]


def _inspect(fs: Any, root: str, step: int | None) -> tuple[Any | None, list[str]]:
    files = listing(fs, root)
    marker, problems = _read_marker(fs, root, files)
    if problems:
        return None, problems
    return marker, validate_checkpoint_listing(files, marker, step=step)


def list_checkpoints(run_uri: str, storage_options: dict[str, Any] | None = None) -> list[CheckpointInfo]:
    """Every checkpoint folder of the run, complete or not, sorted by step."""
    base = join(run_uri, CHECKPOINTS_DIR)
    fs, root = fresh_fs(base, storage_options)
    if not fs.exists(root):
        return []
    names = {str(e["name"]).rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(root, detail=True)
             if e.get("type") == "directory"}
    out: list[CheckpointInfo] = []
    for name in names:
        step = parse_step(name)
        if step is None:
            continue
        _, problems = _inspect(fs, f"{root}/{name}", step)
        out.append(CheckpointInfo(step, join(base, name), not problems, tuple(problems)))
    return sorted(out, key=lambda info: info.step)


def latest_complete(run_uri: str, storage_options: dict[str, Any] | None = None) -> CheckpointInfo | None:
    """The newest complete checkpoint of the run (where a rerun resumes), or None."""
    complete = [info for info in list_checkpoints(run_uri, storage_options) if info.complete]
    return complete[-1] if complete else None


def _refuse(uri: str, problems: list[str]) -> CheckpointError:
    return CheckpointError(f"{uri}: refusing this checkpoint: {'; '.join(problems)}")


def _verified(uri: str, path: Path, record: FileRecord, verify: bool) -> Path:
    size = path.stat().st_size
    if size != record.bytes:
        raise _refuse(uri, [f"{record.path!r} has {size} bytes, the marker says {record.bytes}"])
    if verify and sha256_file(path) != record.sha256:
        raise _refuse(uri, [f"{record.path!r} does not match the sha256 in the marker (changed since it was saved)"])
    return path


def _download_dirs(
    uri: str, fs: Any, root: str, marker: Mapping[str, Any], records: Mapping[str, FileRecord], verify: bool
) -> dict[str, Path]:
    """Local copies of a remote checkpoint's folders, downloaded once into vtok's cache and checked
    against the marker as they land."""
    if not marker["dirs"]:
        return {}
    # Keyed by the marker too: a step saved again is another download, never the stale copy.
    key = hashlib.sha256(f"{uri}\n{json.dumps(marker, sort_keys=True)}".encode()).hexdigest()[:16]
    return download_once(fs, root, marker["dirs"], [rel for rel in records if "/" in rel], key,
                         lambda local, rel: _verified(uri, local, records[rel], verify))


def load_checkpoint(
    uri: str, storage_options: dict[str, Any] | None = None, *, device: str = "cpu", verify: bool = True
) -> LoadedCheckpoint:
    """Read one checkpoint whole, or refuse it (CheckpointError, a ValueError naming `uri`).

    Refused: no sound marker, a listed file missing or of another size, or (with `verify`) another sha256.
    Folders of a remote checkpoint are downloaded once into vtok's cache; local ones are used in place.
    """
    fs, root = fresh_fs(uri, storage_options)
    step = parse_step(root.rsplit("/", 1)[-1])
    marker, problems = _inspect(fs, root, step)
    if problems or marker is None:
        raise _refuse(uri, problems or ["there is no checkpoint here"])
    records = marker_files(marker)
    out = LoadedCheckpoint(uri=uri, step=int(marker["step"]), marker=dict(marker))
    local = is_local(uri)
    with tempfile.TemporaryDirectory(prefix="vtok-ckpt-load-") as scratch:
        for rel, record in records.items():
            if "/" in rel:
                continue
            if local:
                path = _verified(uri, Path(strip_file_scheme(uri)) / rel, record, verify)
            else:
                path = Path(scratch) / rel
                fs.get_file(f"{root}/{rel}", str(path))
                _verified(uri, path, record, verify)
            if rel.endswith(TENSOR_SUFFIX):
                out.tensors[rel] = safetensors.torch.load_file(path, device=device)
            else:
                out.json_files[rel] = json.loads(path.read_bytes())
    if local:
        folder = Path(strip_file_scheme(uri))
        for rel, record in records.items():
            if "/" in rel:
                _verified(uri, folder / rel, record, verify)
        out.dirs = {name: folder / name for name in marker["dirs"]}
    else:
        out.dirs = _download_dirs(uri, fs, root, marker, records, verify)
    return out


def retain(
    run_uri: str,
    keep_last: int,
    protect: Collection[int] = (),
    storage_options: dict[str, Any] | None = None,
) -> list[int]:
    """Delete old checkpoints of the run and return the deleted steps, ascending.

    Kept: the `keep_last` (>= 1) newest complete ones, every step in `protect`, always the newest complete
    one, and incomplete ones newer than it (possibly being written). Deleted: everything else older than the
    newest complete one, crash leftovers included.
    """
    if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1:
        raise CheckpointError(f"checkpoint.keep_last must be an int >= 1, got {keep_last!r}")
    infos = list_checkpoints(run_uri, storage_options)
    complete = [info for info in infos if info.complete]
    if not complete:
        return []
    newest = complete[-1].step
    keep = {info.step for info in complete[-keep_last:]} | set(protect) | {newest}
    doomed = [info for info in infos if info.step not in keep and info.step < newest]
    for info in doomed:
        delete_checkpoint_folder(info.uri, storage_options)
    return [info.step for info in doomed]
