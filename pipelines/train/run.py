"""The driver side every training job shares: bind the run to its settings, start Ray Train, show progress.

RUN/run.json records what a run is made of (model, data fingerprint, token mode, ...): a rerun of the same
command resumes it, a rerun with another value of any of those is refused, naming the setting, because
its checkpoints would mix two models.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from typing import Any

from pipelines.progress import ProgressLine
from pipelines.train.config import ScalingSettings
from pipelines.train.loop import LoopSpec, TrainTask, train_loop
from pipelines.train.metrics import read_metrics
from vtok.errors import InputError
from vtok.secrets import is_secret_name
from vtok.storage import is_local, join, read_json, strip_file_scheme, write_json

RUN_FILE = "run.json"
logger = logging.getLogger(__name__)


class RunMismatchError(InputError):
    """A run directory already holds a run made with other settings."""


def bind_training_run(run_uri: str, identity: dict[str, Any], storage_options: dict[str, Any] | None = None) -> bool:
    """Record the run's identity, or check a resume against it; True when the run already existed."""
    existing = read_json(join(run_uri, RUN_FILE), storage_options)
    if existing is None:
        write_json(join(run_uri, RUN_FILE), identity, storage_options)
        return False
    existing, identity = flat_config(existing), flat_config(json.loads(json.dumps(identity)))
    for key in sorted(set(existing) | set(identity)):
        if existing.get(key) != identity.get(key):
            raise RunMismatchError(
                f"run {run_uri} was made with {key}={existing.get(key)!r}, this run has {key}={identity.get(key)!r}; "
                f"resuming would mix them in one run. Use a new output, or delete the run to start over."
            )
    return True


def flat_config(value: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"tokens": "vtok"}} -> {"model.tokens": "vtok"}: mismatches are named by their config key."""
    out: dict[str, Any] = {}
    for k, v in value.items():
        if isinstance(v, dict) and v:
            out |= flat_config(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def fit(task: TrainTask, spec: LoopSpec, datasets: dict[str, Any], scaling: ScalingSettings,
        name: str, progress: bool = True) -> None:
    """Train with Ray Train (TorchTrainer) until spec.train.steps; a worker failure restarts from the last checkpoint."""
    import ray.train
    from ray.data import ExecutionOptions
    from ray.train.torch import TorchTrainer

    # vtok keeps its own checkpoints under RUN/checkpoints; Ray Train's storage holds only its run state.
    storage = join(strip_file_scheme(spec.run_uri), "_ray_train") if is_local(spec.run_uri) else tempfile.mkdtemp(
        prefix="vtok-ray-train-")
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"task": task, "spec": spec},
        scaling_config=ray.train.ScalingConfig(
            num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
            resources_per_worker={"CPU": scaling.cpus_per_worker, **({"GPU": 1} if scaling.use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage, failure_config=ray.train.FailureConfig(max_failures=scaling.max_failures),
            # vtok's own settings (VTOK_CACHE, ...) and MLflow's (MLFLOW_ALLOW_FILE_STORE, ...) reach the workers
            # as they reach the driver; credentials (MLFLOW_TRACKING_TOKEN, ...) come from the workers' own env.
            worker_runtime_env={"env_vars": {k: v for k, v in os.environ.items()
                                             if k.startswith("VTOK_") or (k.startswith("MLFLOW_") and not is_secret_name(k))}},
        ),
        datasets=datasets,
        # Batches in the shards' order, so a resumed run sees the batches an uninterrupted one would. Set here,
        # not through the driver's DataContext: Ray Train resolves its ingest options in its controller actor,
        # whose DataContext does not carry the driver's preserve_order (batches came in finish order there).
        dataset_config=ray.train.DataConfig(execution_options=ExecutionOptions(preserve_order=True)),
    )
    watcher = _ProgressWatcher(spec, enabled=progress)
    watcher.start()
    try:
        trainer.fit()
    finally:
        watcher.stop()


class _ProgressWatcher(threading.Thread):
    """Shows the training progress line from RUN/metrics.jsonl while Ray Train runs (workers' stdout is off)."""

    def __init__(self, spec: LoopSpec, enabled: bool, poll_s: float = 2.0) -> None:
        super().__init__(name="vtok-train-progress", daemon=True)
        self.spec, self.enabled, self.poll_s = spec, enabled, poll_s
        self._done = threading.Event()
        self.line = ProgressLine(spec.train.steps, unit="steps", label="train", failed_label=None, enabled=enabled)

    def run(self) -> None:
        while not self._done.wait(self.poll_s):
            self._show()

    def _show(self) -> None:
        try:
            records = read_metrics(self.spec.run_uri, self.spec.storage_options)
        except Exception:  # noqa: BLE001 - a half-visible file on a slow store; the next poll reads it
            return
        if records:
            last = records[-1]
            self.line.note = f"loss {last.get('loss', float('nan')):.4f}, {last.get('tokens_per_s', 0.0):,.0f} tokens/s"
            self.line.update(int(last["step"]))

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=5)
        self._show()
        self.line.close()
