"""Per-step training metrics: RUN/metrics.jsonl (local or s3://) and, when `tracking.mlflow_uri` is set,
MLflow (a tracking server, or a local SQLite store: sqlite:///PATH/mlflow.db).

Only rank 0 writes. The file is rewritten whole at each flush (object stores cannot append), from the
records of this run plus those an earlier, interrupted run wrote up to the step it resumes from: a
resumed run never repeats a step in the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

from vtok.errors import InputError
from vtok.secrets import mask_text
from vtok.storage import get_fs, join, strip_file_scheme, write_bytes_atomic

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
    """Collects records and writes them out at flush(): the whole file, and the new records to MLflow in
    one batch (never a request per step, so MLflow does not slow the worker down)."""

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
        self._pending: list[tuple[int, dict[str, Any]]] = []
        self._mlflow: _MlflowSink | None = None
        if not enabled:
            return
        self.records = [r for r in read_metrics(run_uri, storage_options) if r["step"] <= resume_step]
        if mlflow_uri:
            self._mlflow = _MlflowSink(mlflow_uri, experiment, run_uri, run_name, params or {})

    def add(self, record: dict[str, Any]) -> None:
        if self.enabled:
            self.records.append(record)
            self._pending.append((int(time.time() * 1000), record))

    def flush(self) -> None:
        if not self.enabled:
            return
        body = "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.records)
        write_bytes_atomic(join(self.run_uri, METRICS_FILE), body.encode(), self.storage_options)
        if self._mlflow is not None and self._pending and not self._mlflow.log(self._pending):
            return  # MLflow refused this batch: kept, and sent again with the next flush
        self._pending = []

    def close(self) -> None:
        self.flush()
        if self._mlflow is not None:
            self._mlflow.close()


MLFLOW_KEY = "tracking.mlflow_uri"
RUN_KEY_TAG = "vtok.run_key"
"""MLflow run tag that identifies the training run (a hash of its run URI): a resume finds its MLflow run by it."""
LOGGED_THROUGH_TAG = "vtok.logged_through_step"
"""MLflow run tag: the last step logged, written in the same batch as the metrics."""
_BATCH_METRICS, _BATCH_PARAMS = 1000, 100  # MLflow's limits per log_batch request
_PARAM_CHARS = 500  # the longest parameter value every MLflow server version accepts


def check_mlflow(uri: str, experiment: str = "vtok") -> None:
    """The driver's check before training starts: the tracking URI answers and the experiment can be used
    (it is created when missing); otherwise an InputError naming tracking.mlflow_uri, in one line."""
    _experiment_id(_client(uri), uri, experiment)


def _client(uri: str) -> Any:
    try:
        import mlflow  # noqa: F401 - first, so that a missing mlflow fails here whatever is cached
        from mlflow.tracking import MlflowClient
    except ImportError as err:
        raise InputError(f"{MLFLOW_KEY}={mask_text(uri)!r} is set but mlflow is not installed "
                         f"(pip install 'vtok[tracking]', or mlflow-skinny)") from err
    with _fail_fast(uri):
        return MlflowClient(tracking_uri=uri)


def _experiment_id(client: Any, uri: str, experiment: str) -> str:
    with _fail_fast(uri):
        found = client.get_experiment_by_name(experiment)
        if found is None:
            try:
                return client.create_experiment(experiment)
            except Exception:  # another run created it meanwhile
                found = client.get_experiment_by_name(experiment)
                if found is None:
                    raise
        if found.lifecycle_stage != "active":
            raise InputError(f"MLflow experiment {experiment!r} at {MLFLOW_KEY}={mask_text(uri)!r} is deleted: "
                             f"restore it, or set tracking.experiment to another name")
        return found.experiment_id


@contextlib.contextmanager
def _fail_fast(uri: str) -> Iterator[None]:
    """Setting up against a server that does not answer fails in seconds, not after MLflow's minutes of
    retries (logging later keeps MLflow's retries), and any failure is one line naming the config key."""
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}
    saved = {k: os.environ.get(k) for k in quick}
    for k, v in quick.items():
        os.environ.setdefault(k, v)
    try:
        yield
    except InputError:
        raise
    except Exception as err:  # MlflowException, OSError from a local store, a bad URI...
        reason = " ".join(str(err).split()) or type(err).__name__
        if "MLFLOW_ALLOW_FILE_STORE" in reason:
            reason = ("MLflow 3 refuses its file store; use a SQLite store (sqlite:///PATH/mlflow.db) or a "
                      "tracking server, or set MLFLOW_ALLOW_FILE_STORE=true")
        elif len(reason) > 300:
            reason = reason[:300] + "..."
        raise InputError(f"{MLFLOW_KEY}={mask_text(uri)!r} cannot be used: {mask_text(reason)}") from err
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_key(run_uri: str) -> str:
    """What identifies a training run in MLflow: its run URI, however it was spelt (file://, a trailing /)."""
    return hashlib.sha256(strip_file_scheme(run_uri).rstrip("/").encode()).hexdigest()[:32]


class _MlflowSink:
    """One MLflow run per training run: a resumed run (the same run URI) continues its MLflow run, and steps
    it already logged are not logged again (MLflow cannot delete a metric value; an interrupted run may have
    logged past the checkpoint a resume starts from: those steps keep the values it logged first)."""

    def __init__(self, uri: str, experiment: str, run_uri: str, run_name: str, params: dict[str, Any]) -> None:
        self.uri = uri
        self.client = _client(uri)
        experiment_id = _experiment_id(self.client, uri, experiment)
        key = run_key(run_uri)
        with _fail_fast(uri):
            found = self.client.search_runs([experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}'",
                                            max_results=1)
            if found:
                run = found[0]
                self.run_id = run.info.run_id
                self.logged_through = int(run.data.tags.get(LOGGED_THROUGH_TAG, 0))
                self.client.update_run(self.run_id, status="RUNNING")
            else:
                name = run_name or strip_file_scheme(run_uri).rstrip("/").rsplit("/", 1)[-1]
                run = self.client.create_run(experiment_id, run_name=name,
                                             tags={RUN_KEY_TAG: key, "vtok.run_uri": mask_text(run_uri)})
                self.run_id, self.logged_through = run.info.run_id, 0
            self._log_params(run.data.params if found else {}, params)

    def _log_params(self, logged: dict[str, str], params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        values = {k: str(v)[:_PARAM_CHARS] for k, v in params.items()}
        changed = sorted(k for k, v in values.items() if k in logged and logged[k] != v)
        if changed:
            logger.warning("MLflow run %s keeps its first values of %s (MLflow parameters cannot change)",
                           self.run_id, ", ".join(changed))
        new = [Param(k, v) for k, v in sorted(values.items()) if k not in logged]
        for i in range(0, len(new), _BATCH_PARAMS):
            self.client.log_batch(self.run_id, params=new[i:i + _BATCH_PARAMS])

    def log(self, records: list[tuple[int, dict[str, Any]]]) -> bool:
        """Every number of every record past the steps already logged, whole steps per request (at most
        MLflow's 1000 values each, with the last step they complete); False when MLflow refused."""
        from mlflow.entities import Metric, RunTag

        chunks: list[list[Any]] = [[]]
        for ms, r in records:
            step = int(r["step"])
            if step <= self.logged_through:
                continue
            values = [Metric(k, float(v), ms, step) for k, v in r.items()
                      if k != "step" and isinstance(v, (int, float))]
            if chunks[-1] and len(chunks[-1]) + len(values) > _BATCH_METRICS:
                chunks.append([])
            chunks[-1].extend(values)
        try:
            for chunk in filter(None, chunks):
                step = chunk[-1].step
                self.client.log_batch(self.run_id, metrics=chunk, tags=[RunTag(LOGGED_THROUGH_TAG, str(step))])
                self.logged_through = step
        except Exception as err:  # a tracking server down must not stop training; metrics.jsonl has every step
            logger.warning("MLflow (%s=%s) refused metrics after step %d, retrying at the next flush: %s",
                           MLFLOW_KEY, mask_text(self.uri), self.logged_through, " ".join(str(err).split())[:300])
            return False
        return True

    def close(self) -> None:
        try:
            self.client.set_terminated(self.run_id)
        except Exception as err:  # the training run is done; only its MLflow status is stale
            logger.warning("MLflow run %s not marked finished: %s", self.run_id, " ".join(str(err).split())[:300])
