"""Resource mapping on a real two-node Ray cluster: decode tasks on CPU nodes, encoder actors on GPU nodes.

Both nodes run on this machine (`ray start --head` with 1 CPU, `ray start --address` with 1 CPU and
1 logical GPU), each with its own temp dir, session and ports, so nothing else's Ray is touched.
Without CUDA the encoder that asked for a GPU runs on CPU in bf16, as on a GPU-less dev box.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from jobs.submit import connect, prepare_submission, submit
from tests.ray_nodes import free_port, start_ray_node, stop_process_tree


@dataclass
class LocalCluster:
    """Processes and addresses of a local multi-node Ray cluster of this test module."""

    address: str = ""
    """Job API / dashboard URL of the head."""
    nodes: list[tuple[subprocess.Popen[bytes], str]] = field(default_factory=list)
    """(blocking `ray start` process, its temp dir) per node, head first."""


def _wait_for(what: str, check, timeout_s: float, cluster: LocalCluster) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        for proc, temp_dir in cluster.nodes:
            if proc.poll() is not None:
                raise RuntimeError(f"ray start exited: {(Path(temp_dir) / 'ray-start.log').read_text()[-2000:]}")
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    from ray.util.state import list_nodes

    out = LocalCluster()
    try:
        head_dir = tempfile.mkdtemp(prefix="vtok-head-", dir="/tmp")
        gcs_port, dashboard = free_port(), free_port()
        out.nodes.append((start_ray_node(
            ["--head", f"--port={gcs_port}", f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1",
             "--include-dashboard=true", "--num-cpus=1", "--num-gpus=0", f"--ray-client-server-port={free_port()}"],
            head_dir), head_dir))
        out.address = f"http://127.0.0.1:{dashboard}"
        bootstrap = Path(head_dir) / "ray_current_cluster"
        _wait_for("the head", lambda: bootstrap.is_file() and bootstrap.read_text().strip(), 180, out)
        worker_dir = tempfile.mkdtemp(prefix="vtok-gpu-", dir="/tmp")
        out.nodes.append((start_ray_node(
            [f"--address={bootstrap.read_text().strip()}", "--num-cpus=1", "--num-gpus=1"], worker_dir), worker_dir))
        _wait_for("two alive nodes", lambda: len(list_nodes(address=out.address, filters=[("state", "=", "ALIVE")]))
                  == 2, 180, out)
        yield out
    finally:
        for proc, temp_dir in reversed(out.nodes):
            stop_process_tree(proc, temp_dir)


def test_decode_runs_on_cpu_nodes_and_encoders_on_gpu_nodes(cluster: LocalCluster, tmp_path: Path) -> None:
    from ray.util.state import list_actors, list_nodes, list_tasks

    from vtok.dataset import read_manifest
    from vtok.shapes import ShapesConfig, write_corpus

    manifest = write_corpus(str(tmp_path / "corpus"), 4, seed=3, cfg=ShapesConfig(width=64, height=64, num_frames=12))
    tokens = tmp_path / "tokens"
    client = connect(cluster.address)
    job = submit(client, prepare_submission("tokenize", [
        f"input={manifest}", f"output={tokens}", "encode.num_gpus=1", "encode.num_cpus=1",
        "decode_stage.num_cpus=1", "decode_stage.batch_size=1", "--no-progress",
        # Place the encoder before the first decode task: in the moment before it lands, a decode task
        # could take the GPU node's only CPU (on a real GPU node spare CPUs decode too; here it has one).
    ], extra_env=["RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S=120"]))
    deadline = time.monotonic() + 120
    while not client.get_job_status(job).is_terminal():
        assert time.monotonic() < deadline, client.get_job_logs(job)[-3000:]
        time.sleep(0.5)
    logs = client.get_job_logs(job)
    assert str(client.get_job_status(job)) == "SUCCEEDED", logs[-3000:]
    assert read_manifest(str(tokens))["rows"] == 4
    # A logical GPU without CUDA: the actor ran the GPU dtype on CPU, so the fingerprint says bfloat16.
    assert read_manifest(str(tokens))["tokenizer"]["compute_dtype"] == "bfloat16"

    nodes = list_nodes(address=cluster.address, detail=True)
    gpu_nodes = {n.node_id for n in nodes if n.resources_total.get("GPU", 0) > 0}
    cpu_nodes = {n.node_id for n in nodes if n.resources_total.get("GPU", 0) == 0}
    assert len(gpu_nodes) == 1 and len(cpu_nodes) == 1
    ray_job_id = client.get_job_info(job).job_id
    actors = [a for a in list_actors(address=cluster.address, filters=[("job_id", "=", ray_job_id)], detail=True,
                                     limit=1000)
              if "EncodeStage" in (a.repr_name or "") or "MapWorker" in a.class_name]
    assert actors, "no encoder actor found"
    assert {a.node_id for a in actors} == gpu_nodes, [(a.class_name, a.node_id) for a in actors]
    tasks = [t for t in list_tasks(address=cluster.address, filters=[("job_id", "=", ray_job_id)], detail=True,
                                   limit=10000)
             if "decode_batch" in t.name and t.type == "NORMAL_TASK"]
    assert tasks, "no decode task found"
    assert {t.node_id for t in tasks} == cpu_nodes, [(t.name, t.node_id) for t in tasks]
