"""`vtok eval scan` on runs of tiny untrained MLLM checkpoints (real VTokLM files, real save_checkpoint, real Ray
Data evaluation of 4 held-out clips): each (checkpoint, suite) evaluated once across scans, two scans at once,
a scan SIGKILLed mid-evaluation, a failing checkpoint given up after max_attempts; local and on S3 (moto).

The checkpoints "trained" on held-out clips 4-23 (their feature statistics, and the sample keys their data.json
names), so the first 4 clips, which the scans evaluate, are held out from them as `vtok eval` requires.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from jobs.cli import main
from pipelines.evaluate.scan import INTERRUPTED, ScanConfig, ScanSummary, attempts_uri, run_scan
from schemas.checkpoint import DATA, TRAINABLE, step_dir_name
from tests.ray_nodes import stop_process_tree

LIMIT = 4
"""Held-out clips each evaluation reads."""
CATEGORIES = 6
"""TV-Align's five categories and "overall": the understanding rows of one commit."""
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def tiny_mllm(heldout_tokens: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What each checkpoint holds: a saved untrained VTokLM of the data's widths and its data.json record."""
    import pyarrow as pa

    from pipelines.train.data import check_manifest
    from vtok.dataset import read_shard_samples, shard_uris
    from vtok.eval.questions import template_texts
    from vtok.models.feature_stats import FeatureStats
    from vtok.models.mllm import VTokLM
    from vtok.models.mllm_config import MLLMConfig
    from vtok.models.text import train_word_tokenizer
    from vtok.models.tiny_llm import save_tiny_llm
    from vtok.training.batching import collate_tokens

    root = tmp_path_factory.mktemp("scan-mllm")
    rows = read_shard_samples(shard_uris(str(heldout_tokens))[0])[LIMIT:]
    tokenizer = train_word_tokenizer([*template_texts(), *(r["caption"] for r in rows)], root / "text")
    save_tiny_llm(root / "llm", vocab_size=len(tokenizer), seed=0)
    stats = FeatureStats().update(collate_tokens(rows, columns=["key_tokens", "residual_features"])).finish()
    folder = VTokLM(MLLMConfig(llm_mode="frozen"), tokenizer, stats, root / "llm").save_pretrained(root / "saved")
    trained_on = root / "train_keys.parquet"
    pq.write_table(pa.table({"sample_key": [str(r["sample_key"]) for r in rows]}), trained_on)
    manifest = check_manifest(str(heldout_tokens), None)
    return {"folder": folder, "data": {"data": str(trained_on), "fingerprint": manifest["fingerprint"]}}


def add_checkpoints(mllm: dict[str, Any], run: str, *steps: int) -> list[str]:
    """Complete checkpoints `steps` of the run (written with the trainer's save_checkpoint); their names."""
    from vtok.training.checkpoint import save_checkpoint

    folder: Path = mllm["folder"]
    for step in steps:
        save_checkpoint(run, step, json_files={DATA: mllm["data"]},
                        files={p.name: p for p in folder.iterdir() if p.is_file()},
                        dirs={p.name: p for p in folder.iterdir() if p.is_dir()})
    return [step_dir_name(s) for s in steps]


def scan_args(run: str, data: Path, *extra: str) -> list[str]:
    # Half a CPU per model actor: two scans' actors and a read task fit the 2-CPU test Ray at once.
    return [f"run={run}", f"data={data}", "suites=[tv_align]", "metrics=[understanding]", f"limit={LIMIT}",
            "batch_size=4", "num_cpus=0.5", *extra]


def scan(run: str, data: Path, *extra: str) -> ScanSummary:
    from jobs.eval_scan import load_scan_config

    cfg: ScanConfig = load_scan_config(scan_args(run, data, *extra))
    return run_scan(cfg, echo=lambda line: None)


def results(run: Path) -> dict[str, list[dict]]:
    """Committed results files of a local run: name -> rows."""
    folder = run / "eval" / "results"
    return {p.name: pq.read_table(p).to_pylist() for p in sorted(folder.glob("*.parquet"))}


def pairs(*names: str) -> list[tuple[str, str]]:
    return [(n, "tv_align") for n in names]


def _together(*scans: Any) -> list[ScanSummary]:
    """Each of `scans` (callables) in its own thread, released at once; their summaries."""
    barrier = threading.Barrier(len(scans))
    out: list[Any] = [None] * len(scans)

    def work(i: int) -> None:
        barrier.wait()
        try:
            out[i] = scans[i]()
        except BaseException as err:  # noqa: BLE001 - asserted below
            out[i] = err

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(scans))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(o, ScanSummary) for o in out), out
    return out


def test_two_scans_at_once_then_a_rescan_then_a_new_checkpoint(ray_local, tiny_mllm, heldout_tokens: Path,
                                                               tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    names = add_checkpoints(tiny_mllm, str(run), 10, 20, 30)
    # A checkpoint being written (no marker yet) is not evaluated.
    torn = run / "checkpoints" / step_dir_name(40)
    torn.mkdir()
    (torn / TRAINABLE).write_bytes(b"half")
    started = time.perf_counter()
    a, b = _together(lambda: scan(str(run), heldout_tokens), lambda: scan(str(run), heldout_tokens))
    both_s = time.perf_counter() - started
    # Each pair evaluated by exactly one of them; the other skipped it (leased, or committed by then).
    assert sorted(a.evaluated + b.evaluated) == pairs(*names) and not set(a.evaluated) & set(b.evaluated)
    for one, other in ((a, b), (b, a)):
        skipped = set(one.done) | {(c, s) for c, s, _ in one.leased}
        assert skipped == set(other.evaluated), (one, other)
        assert not (one.failed or one.gave_up or one.deferred) and one.incomplete == [step_dir_name(40)]
    found = results(run)
    assert sorted(found) == [f"{n}__tv_align.parquet" for n in names]
    for name, rows in found.items():
        assert len(rows) == CATEGORIES and {r["metric"] for r in rows} == {"understanding"}
        assert {r["n"] for r in rows if r["category"] != "overall"} == {LIMIT}, name
    assert not list((run / "eval" / "leases").glob("*.json"))  # released
    for name in names:
        record = json.loads(Path(attempts_uri(str(run), name, "tv_align")).read_text())
        assert (record["attempts"], record["status"]) == (1, "done"), record

    again = scan(str(run), heldout_tokens)
    assert again.evaluated == [] and again.done == pairs(*names)
    assert results(run) == found  # nothing rewritten

    # Two new checkpoints; max_checkpoints=1 evaluates the older, leaves the newer for the next scan.
    add_checkpoints(tiny_mllm, str(run), 50, 60)
    assert main(["eval", "scan", *scan_args(str(run), heldout_tokens, "max_checkpoints=1"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"{step_dir_name(50)} tv_align  evaluated" in out
    assert f"{step_dir_name(60)} tv_align  left for the next scan (max_checkpoints=1)" in out
    assert f"{names[0]} tv_align  skipped (has results)" in out
    assert "1 evaluated, 3 skipped (has results), 1 left for the next scan" in out
    assert sorted(results(run)) == [f"{n}__tv_align.parquet" for n in [*names, step_dir_name(50)]]
    with capsys.disabled():
        print(f"\nmeasured two scans at once of 3 checkpoints {both_s:.1f} s, rescan {again.seconds:.2f} s")


def test_on_s3_a_scan_killed_mid_evaluation_is_redone_once_its_lease_expires(
        ray_local, tiny_mllm, heldout_tokens: Path, s3_bucket: str, tmp_path: Path) -> None:
    import fsspec

    from pipelines.evaluate.lease import lease_uri, read_lease
    from pipelines.evaluate.results import committed_results

    run = f"s3://{s3_bucket}/runs/vtok"
    (name,) = add_checkpoints(tiny_mllm, run, 10)
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    # The killed scan joins the session's Ray, and finds the moto server through AWS_ENDPOINT_URL as Ray's
    # workers do (tests/conftest.py).
    address = ray_local.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "jobs.cli", "eval", "scan", *scan_args(run, heldout_tokens, "lease_seconds=3"),
           f"ray.address={address}", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    attempts = attempts_uri(run, name, "tv_align")
    deadline = time.monotonic() + 180
    # The attempt is recorded after the lease is taken, right before the evaluation starts.
    while time.monotonic() < deadline and not fs.exists(attempts):
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        time.sleep(0.1)
    stop_process_tree(proc, tmp_path / "no-ray-of-its-own", signal.SIGKILL)
    assert committed_results(run) == {}  # killed before committing: nothing half-written
    lease = read_lease(lease_uri(run, name, "tv_align"))
    assert lease is not None and lease.pid == proc.pid and lease.attempt == 1  # the dead scan's, left behind
    time.sleep(max(0.0, lease.expires_at - time.time()) + 0.1)
    rerun = scan(run, heldout_tokens)
    assert rerun.evaluated == pairs(name) and rerun.leased == []
    assert list(committed_results(run)) == [(name, "tv_align")]
    table = pq.read_table(fs.open(f"{s3_bucket}/runs/vtok/eval/results/{name}__tv_align.parquet"))
    assert table.num_rows == CATEGORIES and set(table.column("checkpoint").to_pylist()) == {name}
    record = json.loads(fs.cat_file(attempts))
    assert (record["attempts"], record["status"], record["last_error"]) == (2, "done", INTERRUPTED)
    assert read_lease(lease_uri(run, name, "tv_align")) is None


def test_a_failing_checkpoint_is_given_up_after_max_attempts(tiny_mllm, heldout_tokens: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    (bad,) = add_checkpoints(tiny_mllm, str(run), 10)
    config = run / "checkpoints" / bad / "config.json"
    # Same size, so the checkpoint still looks complete; its config no longer parses.
    config.write_bytes(b"#" * config.stat().st_size)
    args = ("max_attempts=2",)
    first = scan(str(run), heldout_tokens, *args)
    ((checkpoint, suite, attempt, error),) = first.failed
    assert (checkpoint, suite, attempt) == (bad, "tv_align", 1) and first.evaluated == []
    assert f"checkpoint={run}/checkpoints/{bad}: cannot read its config.json" in error and "\n" not in error
    second = scan(str(run), heldout_tokens, *args)
    assert [f[:3] for f in second.failed] == [(bad, "tv_align", 2)] and second.gave_up == []
    assert main(["eval", "scan", *scan_args(str(run), heldout_tokens, *args), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"{bad} tv_align  gave up (2 attempts: {error})" in out and "scan of" in out and "1 gave up" in out
    record = json.loads(Path(attempts_uri(str(run), bad, "tv_align")).read_text())
    assert (record["attempts"], record["status"], record["last_error"]) == (2, "failed", error)
    assert results(run) == {} and not list((run / "eval" / "leases").glob("*.json"))
    # Given up is final until someone deletes the attempts record: a higher max_attempts tries again.
    assert scan(str(run), heldout_tokens, "max_attempts=3").failed[0][2] == 3


def test_nothing_to_evaluate_and_bad_input(heldout_tokens: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "fresh"
    (run / "checkpoints").mkdir(parents=True)
    assert main(["eval", "scan", *scan_args(str(run), heldout_tokens), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"{run}: no complete checkpoint yet; nothing to evaluate" in out
    assert f"scan of {run}: nothing to evaluate" in out
    cases = [
        ([f"run={tmp_path}/nosuch", f"data={heldout_tokens}"], f"run={tmp_path}/nosuch: no such run folder"),
        ([f"run={run}", f"data={tmp_path}/nodata"], f"{tmp_path}/nodata"),
        ([f"run={run}", f"data={heldout_tokens}", "max_attempts=0"], "max_attempts must be >= 1, got 0"),
        ([f"run={run}", f"data={heldout_tokens}", "checkpoint=x"], "config key 'checkpoint' cannot be set"),
        ([f"data={heldout_tokens}"], "run must be set"),
    ]
    for args, message in cases:
        assert main(["eval", "scan", *args]) == 2, args
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, (args, err)


def test_error_line_is_one_line_naming_the_innermost_cause() -> None:
    from pipelines.evaluate.scan import error_line
    from vtok.errors import InputError

    assert error_line(InputError("checkpoint=x: cannot read its config.json\nmore")) == (
        "checkpoint=x: cannot read its config.json")
    wrapped = RuntimeError("ray::MapBatches(TVAlignModels)() (pid=1, ip=127.0.0.1)\nTraceback (most recent call "
                           "last):\n  File \"x.py\", line 1, in f\nsafetensors_rust.SafetensorError: Error while "
                           "deserializing header: HeaderTooLarge")
    assert error_line(wrapped) == ("RuntimeError: safetensors_rust.SafetensorError: Error while deserializing "
                                   "header: HeaderTooLarge")
    assert error_line(KeyError("trainable")) == "KeyError: 'trainable'"
    assert error_line(RuntimeError()) == "RuntimeError"
