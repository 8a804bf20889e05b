"""RUN/metrics.jsonl and MLflow, without Ray: MetricsLog used as rank 0 of the training loop uses it.

MLflow goes to a local store in tmp_path: SQLite (sqlite:///PATH/mlflow.db), the store MLflow 3 wants for
local use, and its old file store (file://PATH), which MLflow 3 refuses unless MLFLOW_ALLOW_FILE_STORE=true.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from jobs.train import load_train_mllm_config
from pipelines.train import metrics
from pipelines.train.metrics import MLFLOW_KEY, MetricsLog, check_mlflow, read_metrics
from pipelines.train.mllm import loop_spec
from tests.ray_nodes import free_port
from vtok.errors import InputError

EXPERIMENT = "vtok-test"
PARAMS = {"train.steps": 8, "train.lr": 0.002, "model.tokens": "vtok", "model.llm": None}
KEYS = ("epoch", "lr", "step_time_s", "loss", "loss_understanding", "loss_generation", "tokens_per_s",
        "samples_per_s")


def record(step: int) -> dict[str, Any]:
    """A record as pipelines.train.loop makes one; every value a function of the step."""
    return {"step": step, "epoch": (step - 1) // 4, "lr": 1e-3 * step, "step_time_s": 0.1 + step / 1000,
            "loss": 5.0 / step, "loss_understanding": 3.0 / step, "loss_generation": 2.0 / step,
            "tokens_per_s": 100.0 * step, "samples_per_s": 8.0 + step}


def train(log: MetricsLog, steps: range, log_every: int = 2, close: bool = True) -> None:
    """The loop's calls: add every step, flush every `log_every` steps, close at the end (or not: a crash)."""
    for step in steps:
        log.add(record(step))
        if step % log_every == 0:
            log.flush()
    if close:
        log.close()


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


@pytest.fixture(params=["sqlite", "file"])
def tracking_uri(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is ./mlruns: keep it out of the repo
    if request.param == "file":
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        return f"file://{tmp_path}/mlruns"
    return f"sqlite:///{tmp_path}/mlflow.db"


def test_steps_params_and_a_resumed_run_go_to_one_mlflow_run(tracking_uri: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    run_uri = str(tmp_path / "runs" / "vtok")
    log = MetricsLog(run_uri, mlflow_uri=tracking_uri, experiment=EXPERIMENT, run_name="vtok", params=PARAMS)
    batches: list[int] = []
    log_batch = log._mlflow.client.log_batch
    monkeypatch.setattr(log._mlflow.client, "log_batch",
                        lambda run_id, **kw: (batches.append(len(kw.get("metrics", []))), log_batch(run_id, **kw)))
    # The first run logs steps 1..6, then dies (no close) after its checkpoint at step 4.
    train(log, range(1, 7), close=False)
    assert batches == [2 * len(KEYS)] * 3, "one MLflow request per flush, not one per step"

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "vtok"
    assert run.data.params == {"train.steps": "8", "train.lr": "0.002", "model.tokens": "vtok", "model.llm": "None"}
    for key in KEYS:
        assert history(client, run.info.run_id, key) == [(s, float(record(s)[key])) for s in range(1, 7)], key

    # The same command again resumes from step 4: the same MLflow run, steps 5..8, none twice. The file
    # of an interrupted run is spelt differently here (file://, a trailing /): still the same run.
    resumed = MetricsLog(f"file://{run_uri}/", resume_step=4, mlflow_uri=tracking_uri, experiment=EXPERIMENT,
                         run_name="vtok", params={**PARAMS, "train.steps": 8})
    train(resumed, range(5, 9))

    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [run.info.run_id], "a resume continues its MLflow run"
    assert runs[0].info.status == "FINISHED"
    assert runs[0].data.params == run.data.params
    expected = {key: [(s, float(record(s)[key])) for s in range(1, 9)] for key in KEYS}
    for key in KEYS:
        assert history(client, run.info.run_id, key) == expected[key], key

    # metrics.jsonl holds the same values, every step once.
    records = read_metrics(run_uri)
    assert [r["step"] for r in records] == list(range(1, 9))
    assert {key: [(r["step"], float(r[key])) for r in records] for key in KEYS} == expected
    assert records == [record(s) for s in range(1, 9)]


def test_another_run_directory_with_the_same_name_gets_its_own_mlflow_run(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = f"file://{tmp_path}/mlruns"
    for parent in ("a", "b"):
        train(MetricsLog(str(tmp_path / parent / "vtok"), mlflow_uri=uri, experiment=EXPERIMENT, run_name="vtok"),
              range(1, 3))
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert len(runs) == 2
    for run in runs:
        assert history(client, run.info.run_id, "loss") == [(1, 5.0), (2, 2.5)]


def test_a_refused_batch_is_sent_again_and_requests_hold_whole_steps(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setattr(metrics, "_BATCH_METRICS", 2 * len(KEYS) + 1)  # two steps per request
    uri, run_uri = f"file://{tmp_path}/mlruns", str(tmp_path / "run")
    log = MetricsLog(run_uri, mlflow_uri=uri, experiment=EXPERIMENT)
    sent: list[list[int]] = []
    log_batch, down = log._mlflow.client.log_batch, [True]

    def flaky(run_id: str, metrics: list = (), **kw: Any) -> None:
        if down[0] and metrics and metrics[-1].step == 4:  # the server goes away in the middle of a flush
            down[0] = False
            raise ConnectionError("tracking server went away")
        sent.append(sorted({m.step for m in metrics}))
        log_batch(run_id, metrics=metrics, **kw)

    monkeypatch.setattr(log._mlflow.client, "log_batch", flaky)
    # Flushes after step 5 (steps 1-2 sent, 3-4 refused, 5 not tried) and at close (3..6, again whole steps).
    train(log, range(1, 7), log_every=5)
    assert sent == [[1, 2], [3, 4], [5, 6]]
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert history(client, run.info.run_id, "loss") == [(s, 5.0 / s) for s in range(1, 7)]
    assert read_metrics(run_uri) == [record(s) for s in range(1, 7)]


def test_without_mlflow_uri_only_the_file_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # never imported when not asked for
    train(MetricsLog(str(tmp_path / "run")), range(1, 4))
    assert read_metrics(str(tmp_path / "run")) == [record(s) for s in range(1, 4)]
    train(MetricsLog(str(tmp_path / "other"), enabled=False), range(1, 4))  # ranks > 0
    assert read_metrics(str(tmp_path / "other")) == []


@pytest.mark.parametrize("kind", ["unsupported scheme", "not a directory", "unreachable server",
                                  "refused file store", "mlflow missing"])
def test_an_unusable_tracking_uri_is_one_line_naming_the_key(kind: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    (tmp_path / "a-file").write_text("")
    uri = {"unsupported scheme": "nosuchscheme://host/x",
           "not a directory": f"sqlite:///{tmp_path}/a-file/mlflow.db",
           "unreachable server": f"http://127.0.0.1:{free_port()}",
           "refused file store": f"file://{tmp_path}/mlruns",
           "mlflow missing": f"sqlite:///{tmp_path}/mlflow.db"}[kind]
    if kind == "mlflow missing":
        monkeypatch.setitem(sys.modules, "mlflow", None)
    hint = {"refused file store": "MLFLOW_ALLOW_FILE_STORE", "mlflow missing": "not installed"}.get(kind, "")
    for attempt in (lambda: check_mlflow(uri, EXPERIMENT),  # the driver, before training starts
                    lambda: MetricsLog(str(tmp_path / "run"), mlflow_uri=uri, experiment=EXPERIMENT)):  # rank 0
        with pytest.raises(InputError) as err:
            attempt()
        message = str(err.value)
        assert message.startswith(f"{MLFLOW_KEY}={uri!r}"), message
        assert "\n" not in message and len(message) < 500, message
        assert hint in message, message


def test_the_job_config_key_reaches_the_loop(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = load_train_mllm_config([f"data={tmp_path}/tokens", f"output={tmp_path}/runs/vtok-a", f"{MLFLOW_KEY}={uri}",
                                  "tracking.experiment=mine", "storage_options.key=AKIAXXXXXXXXXXXXXXXX",
                                  "train.steps=7"])
    spec = loop_spec(cfg)
    assert (spec.mlflow_uri, spec.experiment, spec.run_name) == (uri, "mine", "vtok-a")
    assert spec.params["train.steps"] == 7 and spec.params[MLFLOW_KEY] == uri
    assert not [k for k in spec.params if k.startswith("storage_options")], "no credentials in MLflow parameters"
    assert loop_spec(load_train_mllm_config([f"data={tmp_path}/t", f"output={tmp_path}/r"])).mlflow_uri is None
