"""Per-step training metrics: RUN/metrics.jsonl (local or s3://) and, when configured, MLflow.

Only rank 0 writes. The file is rewritten whole at each flush (object stores cannot append), from the
records of this run plus those an earlier, interrupted run wrote up to the step it resumes from: a
resumed run never repeats a step in the file.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from vtok.storage import get_fs, join, write_bytes_atomic

METRICS_FILE = "metrics.jsonl"
logger = logging.getLogger(__name__)


def read_metrics(run_uri: str, storage_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every record of RUN/metrics.jsonl, in step order ([] when there is none)."""
    fs, path = get_fs(join(run_uri, METRICS_FILE), storage_options)
    if not fs.exists(path):
        return []
    with fs.open(path, "rb") as f:
        lines = f.read().decode().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


class MetricsLog:
    """Collects records and writes them out at flush()."""

    def __init__(
        self,
        run_uri: str,
        storage_options: dict[str, Any] | None = None,
        enabled: bool = True,
        resume_step: int = 0,
        mlflow_uri: str | None = None,
        experiment: str = "vtok",
        run_name: str = "",
        params: dict[str, Any] | None = None,
    ) -> None:
        self.run_uri, self.storage_options, self.enabled = run_uri, storage_options, enabled
        self.records: list[dict[str, Any]] = []
        self._pending: list[dict[str, Any]] = []
        self._mlflow = None
        if not enabled:
            return
        self.records = [r for r in read_metrics(run_uri, storage_options) if r["step"] <= resume_step]
        if mlflow_uri:
            self._mlflow = _MlflowSink(mlflow_uri, experiment, run_name, params or {})

    def add(self, record: dict[str, Any]) -> None:
        if self.enabled:
            self.records.append(record)
            self._pending.append(record)

    def flush(self) -> None:
        if not self.enabled:
            return
        body = "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.records)
        write_bytes_atomic(join(self.run_uri, METRICS_FILE), body.encode(), self.storage_options)
        if self._mlflow is not None:
            self._mlflow.log(self._pending)
        self._pending = []

    def close(self) -> None:
        self.flush()
        if self._mlflow is not None:
            self._mlflow.close()


class _MlflowSink:
    """One MLflow run per training run (named after it, so a resumed run continues the same MLflow run)."""

    def __init__(self, uri: str, experiment: str, run_name: str, params: dict[str, Any]) -> None:
        try:
            import mlflow
        except ImportError as err:
            raise ValueError(f"tracking.mlflow_uri={uri!r} is set but mlflow is not installed "
                             f"(pip install mlflow-skinny)") from err
        self.mlflow = mlflow
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(experiment)
        found = mlflow.search_runs(filter_string=f"tags.mlflow.runName = '{run_name}'", output_format="list")
        self.run = mlflow.start_run(run_id=found[0].info.run_id) if found else mlflow.start_run(run_name=run_name)
        if not found:
            mlflow.log_params({k: str(v)[:500] for k, v in params.items()})

    def log(self, records: list[dict[str, Any]]) -> None:
        for r in records:
            numbers = {k: float(v) for k, v in r.items() if isinstance(v, (int, float)) and k != "step"}
            self.mlflow.log_metrics(numbers, step=int(r["step"]))

    def close(self) -> None:
        self.mlflow.end_run()
