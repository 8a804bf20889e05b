"""Interrupted training resumes to what an uninterrupted run gives: the MLLM after a SIGKILL of its driver and
after a worker fault on S3 (bit-exact weights), the decoder in adapter mode after a SIGKILL.

These runs need only the session's token shards, not its trained models: under pytest-xdist they form a group
of their own (`resume`), so they run beside the tests of the trained models instead of after them."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from jobs.train import load_train_decoder_config, load_train_mllm_config, run_mllm
from pipelines.train.decoder import run_train_decoder
from pipelines.train.metrics import read_metrics
from pipelines.train.mllm import run_train_mllm
from tests.conftest import DECODER_ARGS
from tests.conftest import mllm_args as _args
from tests.ray_nodes import stop_process_tree
from vtok.training.checkpoint import latest_complete, list_checkpoints

pytestmark = pytest.mark.xdist_group("resume")

REPO = Path(__file__).resolve().parents[3]


def _decoder_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [f"data={data}", f"output={out}", *DECODER_ARGS, *extra]


ONE = ["train.steps=16", "checkpoint.every_steps=4", "scaling.num_workers=1"]
"""The resume tests' run: one worker, one seed, so an interrupted run must end with the very same weights."""


@pytest.fixture(scope="module")
def straight_run(ray_local, training_tokens: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ONE uninterrupted, tracked in MLflow (SQLite); the weights every interrupted run must end with."""
    out = tmp_path_factory.mktemp("mllm") / "straight"
    db = out.parent / "mlflow.db"
    run_train_mllm(load_train_mllm_config(_args(training_tokens, out, *ONE, f"tracking.mlflow_uri=sqlite:///{db}")),
                   progress=False)
    return out


def _final_weights_equal(a: Path | str, b: Path | str) -> bool:
    from vtok.training.checkpoint import load_checkpoint

    x = load_checkpoint(f"{a}/checkpoints/step_00000016").tensors["trainable.safetensors"]
    y = load_checkpoint(f"{b}/checkpoints/step_00000016").tensors["trainable.safetensors"]
    return x.keys() == y.keys() and all(x[k].equal(y[k]) for k in x)


def test_the_uninterrupted_run_is_tracked_in_mlflow(straight_run: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{straight_run.parent / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("vtok").experiment_id])
    logged = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss"))
    assert logged == [(r["step"], pytest.approx(r["loss"])) for r in read_metrics(str(straight_run))]
    assert [s for s, _ in logged] == list(range(1, 17)) and run.data.params["train.steps"] == "16"


def test_sigkill_of_the_driver_then_rerun_resumes_to_the_weights_of_an_uninterrupted_run(
    ray_local, training_tokens: Path, straight_run: Path, tmp_path: Path
) -> None:
    import tempfile

    out = tmp_path / "killed"
    ray_tmp = tempfile.mkdtemp(prefix="vtok-ray-", dir="/tmp")  # Ray's socket paths must stay short
    cmd = [sys.executable, "-m", "jobs.cli", "train", "mllm", *_args(training_tokens, out, *ONE),
           f"ray.temp_dir={ray_tmp}", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (out / "checkpoints" / "step_00000008" / "complete").exists():
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        time.sleep(0.2)
    stop_process_tree(proc, ray_tmp, signal.SIGKILL)
    done = latest_complete(str(out)).step
    assert 8 <= done < 16, done
    # The same command again (in this process, on the test session's Ray, to save a Ray start-up).
    assert run_train_mllm(load_train_mllm_config(_args(training_tokens, out, *ONE)), progress=False)["resumed"]
    assert [r["step"] for r in read_metrics(str(out))] == list(range(1, 17))
    assert latest_complete(str(out)).step == 16
    assert _final_weights_equal(straight_run, out)


def test_a_worker_fault_on_s3_recovers_to_the_weights_of_an_uninterrupted_run(
    ray_local, training_tokens: Path, straight_run: Path, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fsspec

    from pipelines.train.loop import FAULT_ENV

    out = f"s3://{s3_bucket}/runs/mllm"
    monkeypatch.setenv(FAULT_ENV, "7")  # rank 0 raises once before step 7; VTOK_* variables reach the workers
    run_mllm(load_train_mllm_config(_args(training_tokens, out, *ONE, "checkpoint.keep_last=2")), progress=False)
    fs = fsspec.filesystem("s3")
    assert fs.exists(f"{s3_bucket}/runs/mllm/.fault-injected-7")
    assert [c.step for c in list_checkpoints(out) if c.complete] == [12, 16]
    assert [r["step"] for r in read_metrics(out)] == list(range(1, 17))  # steps 5-6 ran twice, logged once
    assert fs.exists(f"{s3_bucket}/runs/mllm/report.html")
    assert _final_weights_equal(straight_run, out)


def test_adapter_mode_sigkill_of_the_driver_then_rerun_resumes_and_leaves_the_transformer_unchanged(
    ray_local, decoder_tokens: Path, tmp_path: Path
) -> None:
    """WAN2.2 adapter mode on a saved transformer (model.transformer_mode=frozen), the driver killed mid-run."""
    from vtok.models.decoder_tiny import save_tiny_wan

    wan = save_tiny_wan(tmp_path / "wan", seed=3)
    out = tmp_path / "frozen"
    steps = ["train.steps=16", "checkpoint.every_steps=2", f"model.transformer={wan}", "model.transformer_mode=frozen",
             "samples.clips=0", "samples.check_clips=0"]
    # The killed driver joins the session's Ray (no Ray of its own to start); its Ray Train actors die with it.
    address = ray_local.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "jobs.cli", "train", "decoder", *_decoder_args(decoder_tokens, out, *steps),
           f"ray.address={address}", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (out / "checkpoints" / "step_00000004" / "complete").exists():
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        time.sleep(0.2)
    stop_process_tree(proc, tmp_path / "no-ray-of-its-own", signal.SIGKILL)
    done = latest_complete(str(out)).step
    assert 4 <= done < 16, done  # 12 steps to spare: a loaded machine may run a few before the kill lands
    # The same command again, in this process: it resumes at the next step and ends at train.steps.
    cfg = load_train_decoder_config(_decoder_args(decoder_tokens, out, *steps))
    assert run_train_decoder(cfg, progress=False)["resumed"]
    assert [r["step"] for r in read_metrics(str(out))] == list(range(1, 17))
    final = out / "checkpoints" / "step_00000016"
    assert latest_complete(str(out)).step == 16
    # Adapter mode: every weight of the transformer is what the saved directory holds; the adapter trained.
    before = load_file(str(wan / "diffusion_pytorch_model.safetensors"))
    after = load_file(str(final / "decoder" / "diffusion_pytorch_model.safetensors"))
    assert before.keys() == after.keys() and all(before[k].equal(after[k]) for k in before)
    trained = load_file(str(final / "trainable.safetensors"))
    assert trained and all(k.startswith("adapter.") for k in trained)
    first = load_file(str(out / "checkpoints" / "step_00000004" / "trainable.safetensors")) if (
        out / "checkpoints" / "step_00000004").exists() else None
    assert first is None or not all(first[k].equal(trained[k]) for k in trained)
