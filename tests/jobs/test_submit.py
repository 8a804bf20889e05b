"""`vtok submit` / `vtok jobs` against a real local Ray head started with `ray start --head`.

The head runs in its own session (process group) with its own temp dir and free ports, and is
stopped by signalling its own `ray start --block` process: never `ray stop`, which would also stop
every other Ray on the machine, the session's in-process `ray_local` included.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from jobs.cli import main
from jobs.submit import build_runtime_env, prepare_submission, project_dir
from tests.ray_nodes import free_port, stop_process_tree

NODE_SECRET = "node-secret-" + "b" * 24
"""The AWS secret in the cluster node's own environment."""
LOCAL_SECRET = "local-secret-" + "a" * 24
"""The AWS secret of the machine that submits; must never be printed nor, by default, sent."""


@dataclass
class LocalHead:
    """A `ray start --head --block` process of this test module."""

    address: str
    """Job API / dashboard URL."""
    temp_dir: str
    """This head's own Ray temp dir."""
    proc: subprocess.Popen[bytes]
    """The blocking `ray start` process; its session holds every process of the head."""


def start_head(num_cpus: int = 2, env_extra: dict[str, str] | None = None) -> LocalHead:
    from ray.job_submission import JobSubmissionClient

    temp_dir = tempfile.mkdtemp(prefix="vtok-head-", dir="/tmp")
    dashboard = free_port()
    bin_dir = Path(sys.executable).parent
    # Jobs run `python`: the venv's bin first on PATH makes that this venv's python, with vtok installed.
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "RAY_USAGE_STATS_ENABLED": "0", **(env_extra or {})}
    env.pop("RAY_ADDRESS", None)
    cmd = [
        str(bin_dir / "ray"), "start", "--head", "--block", f"--port={free_port()}",
        f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1", "--include-dashboard=true",
        f"--num-cpus={num_cpus}", "--num-gpus=0", f"--temp-dir={temp_dir}",
        f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
        "--disable-usage-stats",
    ]
    log = open(Path(temp_dir) / "ray-start.log", "wb")  # noqa: SIM115 - lives as long as the head
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.monotonic() + 90
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"ray start exited: {(Path(temp_dir) / 'ray-start.log').read_text()[-2000:]}")
            try:
                client = JobSubmissionClient(address)
                # A job that runs proves the agent and runtime-env machinery are up, not just the HTTP server.
                job = client.submit_job(entrypoint="python -c 'import vtok'")
                break
            except Exception:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        while not client.get_job_status(job).is_terminal():
            time.sleep(0.3)
        assert str(client.get_job_status(job)) == "SUCCEEDED", client.get_job_logs(job)
    except BaseException:
        stop_process_tree(proc, temp_dir)
        raise
    return LocalHead(address=address, temp_dir=temp_dir, proc=proc)


@pytest.fixture(scope="module")
def head() -> Iterator[LocalHead]:
    node = start_head(env_extra={"AWS_SECRET_ACCESS_KEY": NODE_SECRET})
    yield node
    stop_process_tree(node.proc, node.temp_dir)


@pytest.fixture
def local_secret(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", LOCAL_SECRET)
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    monkeypatch.setenv("VTOK_TEST_SETTING", "on")
    return LOCAL_SECRET


def _client(head: LocalHead):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(head.address)


def _wait(head: LocalHead, job_id: str, timeout_s: float = 120) -> str:
    client = _client(head)
    deadline = time.monotonic() + timeout_s
    while not client.get_job_status(job_id).is_terminal():
        assert time.monotonic() < deadline, client.get_job_logs(job_id)[-3000:]
        time.sleep(0.5)
    return str(client.get_job_status(job_id))


def test_runtime_env_sends_settings_by_value_and_credentials_by_reference() -> None:
    environ = {"AWS_REGION": "eu-west-3", "AWS_ENDPOINT_URL": "http://minio:9000", "AWS_PROFILE": "data",
               "AWS_ACCESS_KEY_ID": "AKIAABCDEFGHIJKLMNOP", "AWS_SECRET_ACCESS_KEY": LOCAL_SECRET,
               "VTOK_LOG": "1", "VTOK_CACHE": "/home/me/.cache/vtok", "HOME": "/home/me", "PATH": "/usr/bin"}
    env = build_runtime_env(project_dir(), environ)
    assert env["env_vars"] == {
        "AWS_REGION": "eu-west-3", "AWS_ENDPOINT_URL": "http://minio:9000", "AWS_PROFILE": "data", "VTOK_LOG": "1",
        "AWS_ACCESS_KEY_ID": "${AWS_ACCESS_KEY_ID}", "AWS_SECRET_ACCESS_KEY": "${AWS_SECRET_ACCESS_KEY}",
    }
    assert LOCAL_SECRET not in json.dumps(env)
    assert env["working_dir"] == str(project_dir()) and ".venv/" in env["excludes"] and ".git/" in env["excludes"]
    forwarded = build_runtime_env(project_dir(), environ, forward_credentials=True, extra_env=["EXTRA=1", "HOME"])
    assert forwarded["env_vars"]["AWS_SECRET_ACCESS_KEY"] == LOCAL_SECRET
    assert forwarded["env_vars"]["EXTRA"] == "1" and forwarded["env_vars"]["HOME"] == "/home/me"


def test_submission_is_validated_and_pointed_at_the_cluster(tmp_path: Path) -> None:
    sub = prepare_submission("tokenize", [f"input={tmp_path}/in", f"output={tmp_path}/out", "--no-progress"])
    assert sub.entrypoint == (f"python -m jobs.cli tokenize ray.address=auto input={tmp_path}/in "
                              f"output={tmp_path}/out --no-progress")
    assert sub.metadata["vtok_job"] == "tokenize"
    # Arguments of jobs without a config pass through, checked by their own parser.
    assert prepare_submission("synth", [str(tmp_path), "--num-videos", "2"]).args == [str(tmp_path), "--num-videos", "2"]


def test_an_eval_submission_is_checked_here_and_pointed_at_the_cluster(tmp_path: Path) -> None:
    from jobs.config import ConfigError

    args = [f"checkpoint={tmp_path}/runs/vtok", f"data={tmp_path}/heldout", "suites=[tv_align,vbench]",
            f"decoder={tmp_path}/runs/decoder", "--no-progress"]
    sub = prepare_submission("eval", args)
    assert sub.args == ["ray.address=auto", *args] and sub.metadata["vtok_job"] == "eval"
    assert sub.entrypoint.startswith("python -m jobs.cli eval ray.address=auto checkpoint=")
    assert "'suites=[tv_align,vbench]'" in sub.entrypoint  # quoted for the job's shell
    for bad, message in [(["checkpoint=runs/vtok", f"data={tmp_path}/heldout"],
                          "config key 'checkpoint': 'runs/vtok' is a relative path"),
                         ([*args[:2], "suites=[tv_align,vbnech]"], "suites: unknown suite 'vbnech'"),
                         ([*args[:2], "suites=[vbench]"], "decoder: not set; vbench needs videos")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            prepare_submission("eval", bad)


@pytest.mark.parametrize(
    "args,message",
    [
        (["tokenize", "input=/in", "output=/out", "decode.fsp=2"], "unknown config key 'decode.fsp'"),
        (["tokenize", "input=/in", "output=/out", "encode.num_actors=0"], "encode.num_actors must be >= 1"),
        (["tokenize", "input=corpus", "output=/out"], "config key 'input': 'corpus' is a relative path"),
        (["nosuchjob", "a=1"], "unknown job 'nosuchjob'"),
    ],
)
def test_bad_job_arguments_fail_before_submission(
    head: LocalHead, args: list[str], message: str, capfd: pytest.CaptureFixture[str]
) -> None:
    before = len(_client(head).list_jobs())
    assert main(["submit", "--address", head.address, *args]) == 2
    assert message in capfd.readouterr().err
    assert len(_client(head).list_jobs()) == before
    # Validation comes before any connection: an unreachable address makes no difference.
    assert main(["submit", "--address", "http://127.0.0.1:9", *args]) == 2


def test_submit_tokenize_follow_status_logs_list(
    head: LocalHead, tmp_path: Path, local_secret: str, capfd: pytest.CaptureFixture[str]
) -> None:
    from vtok.dataset import read_manifest
    from vtok.shapes import ShapesConfig, write_corpus

    manifest = write_corpus(str(tmp_path / "corpus"), 3, seed=1, cfg=ShapesConfig(width=64, height=64, num_frames=12))
    tokens = tmp_path / "tokens"
    rc = main(["submit", "--address", head.address, "--follow", "tokenize", f"input={manifest}",
               f"output={tokens}", "decode.fps=4", "--no-progress"])
    out, err = capfd.readouterr()
    assert rc == 0, out + err
    job_id = out.splitlines()[0].strip()
    assert job_id.startswith("raysubmit_")
    assert "clips out          3" in out and "VTok S+R = 16 + 5.0 = 21.0" in out
    assert f"report             {tokens}/report.html" in out
    assert "by reference to the node's own: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY" in err
    assert read_manifest(str(tokens))["rows"] == 3
    assert json.loads((tokens / "report.json").read_text())["counts"]["clips_out"] == 3

    assert main(["jobs", "status", "--address", head.address, job_id]) == 0
    status = capfd.readouterr().out
    assert "status       SUCCEEDED" in status and "vtok job     tokenize" in status
    assert "AWS_REGION=eu-west-3" in status and "VTOK_TEST_SETTING=on" in status
    assert "AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY}" in status
    assert main(["jobs", "logs", "--address", head.address, job_id]) == 0
    assert "clips out          3" in capfd.readouterr().out
    assert main(["jobs", "list", "--address", head.address]) == 0
    listing = capfd.readouterr().out
    assert job_id in listing and "SUCCEEDED" in listing

    client = _client(head)
    everything = out + err + status + listing + client.get_job_logs(job_id)
    everything += json.dumps(client.get_job_info(job_id).runtime_env)
    assert local_secret not in everything and NODE_SECRET not in everything


def test_credentials_reach_the_job_by_reference_or_forwarded(head: LocalHead, local_secret: str) -> None:
    """Ray expands `${AWS_SECRET_ACCESS_KEY}` from the node's environment; --forward-credentials sends ours."""
    client = _client(head)
    probe = ("python -c \"import hashlib, os; print('secret-sha256', "
             "hashlib.sha256(os.environ.get('AWS_SECRET_ACCESS_KEY', '').encode()).hexdigest())\"")
    by_reference = client.submit_job(entrypoint=probe, runtime_env=build_runtime_env(project_dir()))
    forwarded = client.submit_job(entrypoint=probe,
                                  runtime_env=build_runtime_env(project_dir(), forward_credentials=True))

    def seen(job_id: str) -> str:
        assert _wait(head, job_id) == "SUCCEEDED", client.get_job_logs(job_id)
        logs = client.get_job_logs(job_id)
        assert local_secret not in logs and NODE_SECRET not in logs
        return logs.split("secret-sha256 ")[1].split()[0]

    assert seen(by_reference) == hashlib.sha256(NODE_SECRET.encode()).hexdigest()
    assert seen(forwarded) == hashlib.sha256(local_secret.encode()).hexdigest()


def test_follow_of_a_failing_job_exits_nonzero(head: LocalHead, tmp_path: Path,
                                               capfd: pytest.CaptureFixture[str]) -> None:
    rc = main(["--log-json", "submit", "--address", head.address, "--follow", "tokenize",
               f"input={tmp_path}/missing", f"output={tmp_path}/out", "--no-progress"])
    out, err = capfd.readouterr()
    assert rc == 1, out + err
    assert "missing" in out  # the job's own error message, streamed
    job_id = out.splitlines()[0].strip()
    assert str(_client(head).get_job_status(job_id)) == "FAILED"
    ours = [json.loads(line) for line in err.splitlines() if line.startswith('{"ts"')]
    assert {"level": "INFO", "logger": "jobs.submit"}.items() <= ours[-1].items()
    assert ours[-1]["msg"] == f"job {job_id} finished: FAILED"


def test_stop_a_running_job(head: LocalHead, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    assert main(["submit", "--address", head.address, "synth", str(tmp_path / "big"), "--num-videos", "100000",
                 "--width", "32", "--height", "32", "--num-frames", "8"]) == 0
    job_id = capfd.readouterr().out.splitlines()[0].strip()
    client = _client(head)
    deadline = time.monotonic() + 60
    while str(client.get_job_status(job_id)) != "RUNNING":
        assert time.monotonic() < deadline and not client.get_job_status(job_id).is_terminal()
        time.sleep(0.3)
    assert main(["jobs", "status", "--address", head.address, job_id]) == 0
    assert "status       RUNNING" in capfd.readouterr().out
    assert main(["jobs", "stop", "--address", head.address, job_id]) == 0
    assert f"{job_id}: STOPPED" in capfd.readouterr().out
    assert str(client.get_job_status(job_id)) == "STOPPED"
    # Stopping a finished job is not an error.
    assert main(["jobs", "stop", "--address", head.address, job_id]) == 0
    assert "not running (STOPPED)" in capfd.readouterr().out


def test_unknown_job_id_and_unreachable_cluster_fail_clearly(head: LocalHead,
                                                             capfd: pytest.CaptureFixture[str]) -> None:
    assert main(["jobs", "status", "--address", head.address, "raysubmit_nope"]) == 1
    assert "raysubmit_nope" in capfd.readouterr().err
    assert main(["jobs", "list", "--address", "http://127.0.0.1:9"]) == 1
    assert "cannot reach the Ray Job API at http://127.0.0.1:9" in capfd.readouterr().err


def test_eval_scan_is_submitted_once_per_window(head: LocalHead, tmp_path: Path,
                                                capfd: pytest.CaptureFixture[str]) -> None:
    """A retried `vtok submit eval-scan` within its window starts no second job: Ray refuses the window's id."""
    from datetime import datetime, timezone

    from jobs.submit_scan import scan_submission_id

    # Neither folder exists: the scan's own first check answers on the cluster, which proves the job ran
    # `vtok eval scan` with these keys, and takes a second.
    run, data = tmp_path / "run", tmp_path / "heldout"
    argv = ["submit", "--address", head.address, "eval-scan", f"run={run}", f"data={data}", "suites=[tv_align]",
            "window=1440"]

    def window_id() -> str:
        return scan_submission_id(str(run), str(data), ["tv_align"], datetime.now(timezone.utc), 1440)

    client = _client(head)
    before, expected = len(client.list_jobs()), {window_id()}
    assert main(argv) == 0
    job_id = capfd.readouterr().out.splitlines()[0].strip()
    assert job_id in expected | {window_id()}
    assert client.get_job_info(job_id).entrypoint.startswith(f"python -m jobs.cli eval scan ray.address=auto run={run}")

    # A retried --follow (an Airflow task whose worker died) while the job runs: it follows that job.
    assert main([*argv[:3], "--follow", *argv[3:]]) == 1
    out = capfd.readouterr().out
    assert re.match(rf"already submitted: {job_id} \((PENDING|RUNNING)\)\n", out), out[:300]
    assert f"run={run}: no such run folder" in out  # the job's own log, streamed
    assert str(client.get_job_status(job_id)) == "FAILED"

    # The retry (cron's, an operator's) in the same window, and an explicit --submission-id of a taken id.
    assert main(argv) == 0
    assert capfd.readouterr().out.strip() == f"already submitted: {job_id} (FAILED)"
    assert main(["submit", "--address", head.address, "--submission-id", job_id, "eval-scan", f"run={tmp_path}/r2",
                 f"data={data}"]) == 0
    assert capfd.readouterr().out.strip() == f"already submitted: {job_id} (FAILED)"
    jobs = client.list_jobs()
    assert len(jobs) == before + 1 and [j.submission_id for j in jobs].count(job_id) == 1
