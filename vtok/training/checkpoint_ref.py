"""What a user names as a model (`decoder=...`, `mllm=...`): a checkpoint folder or a run, refused unless complete.

    RUN                          -> its latest complete checkpoint
    RUN/checkpoints/step_000100  -> that checkpoint, if its `complete` marker is there and its files match it

A folder without the marker is a checkpoint being written, or one a crash left half-written: loading it
would give weights that may be torn, so it is refused with a message naming the key, never loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from schemas.checkpoint import CHECKPOINTS_DIR, parse_step
from vtok.errors import InputError
from vtok.storage import get_fs, localize_dir, parent


def resolve_checkpoint(uri: str, key: str, storage_options: dict[str, Any] | None = None) -> str:
    """The URI of the complete checkpoint `uri` names (a step folder, or a run's latest); InputError naming `key`."""
    from vtok.training.checkpoint import latest_complete, list_checkpoints

    clean = uri.rstrip("/")
    step = parse_step(clean.rsplit("/", 1)[-1])
    if step is not None and parent(clean).rsplit("/", 1)[-1] == CHECKPOINTS_DIR:
        run = parent(parent(clean))
        found = {info.step: info for info in list_checkpoints(run, storage_options)}
        info = found.get(step)
        if info is None:
            raise InputError(f"{key}={uri}: no such checkpoint")
        if not info.complete:
            raise InputError(f"{key}={uri}: not a complete checkpoint ({info.problems[0]}); use a complete one, "
                             f"or the run folder {run} for its latest")
        return info.uri
    fs, path = get_fs(clean, storage_options)
    if not fs.exists(path):
        raise InputError(f"{key}={uri}: no such checkpoint or run")
    latest = latest_complete(clean, storage_options)
    if latest is None:
        if fs.exists(f"{path}/{CHECKPOINTS_DIR}"):
            raise InputError(f"{key}={uri}: the run has no complete checkpoint yet (every one lacks its "
                             f"'complete' marker)")
        raise InputError(f"{key}={uri}: not a training run or checkpoint folder (RUN or "
                         f"RUN/{CHECKPOINTS_DIR}/step_XXXXXXXX)")
    return latest.uri


def local_checkpoint(uri: str, key: str, storage_options: dict[str, Any] | None = None) -> Path:
    """A local folder of the complete checkpoint `uri` names (a remote one is downloaded once into the cache)."""
    return localize_dir(resolve_checkpoint(uri, key, storage_options), storage_options)
