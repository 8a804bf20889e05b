"""Nothing lost: every bad input quarantined with its reason, SIGKILL + resume, determinism across workers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.tokenize.clips import SourceConfig
from pipelines.tokenize.pipeline import DecodeStageConfig, TokenizeConfig, run_tokenize
from pipelines.tokenize.sink import SinkConfig
from pipelines.tokenize.stages.encode import EncodeConfig
from tests.ray_nodes import stop_process_tree
from vtok.dataset import read_manifest, validate_dataset
from vtok.media import write_audio_only, write_mp4
from vtok.shapes import ShapesConfig, generate, write_corpus
from vtok.video import DecodeConfig

REPO = Path(__file__).resolve().parents[3]


def _quarantine(out: Path) -> dict[str, dict]:
    folder = out / "quarantine"
    rows = [r for f in sorted(folder.iterdir()) for r in pq.read_table(f).to_pylist()] if folder.exists() else []
    return {Path(r["source_uri"]).name + (f"@{r['clip_start_s']}" if r["clip_start_s"] else ""): r for r in rows}


@pytest.fixture(scope="module")
def broken_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three good videos and one input for every quarantine reason, listed in a manifest."""
    root = tmp_path_factory.mktemp("broken")
    small = ShapesConfig(width=64, height=64, num_frames=16, fps=8.0)
    entries = []
    for i in range(3):
        write_mp4(root / f"good{i}.mp4", generate(11, i, small).frames, small.fps)
        entries.append({"uri": f"good{i}.mp4", "caption": f"good {i}"})
    good = (root / "good0.mp4").read_bytes()
    (root / "empty.mp4").write_bytes(b"")
    (root / "garbage.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    (root / "truncated.mp4").write_bytes(good[: len(good) // 2])
    write_audio_only(root / "audio_only.mp4")
    write_mp4(root / "av1.mp4", generate(11, 5, small).frames, small.fps, codec="libsvtav1")
    big = ShapesConfig(width=256, height=256, num_frames=8, fps=8.0)
    write_mp4(root / "too_big.mp4", generate(11, 6, big).frames, big.fps)
    (root / "__vtok_crash__.mp4").write_bytes(good)
    (root / "__vtok_hang__.mp4").write_bytes(good)
    for name in ("missing.mp4", "empty.mp4", "garbage.mp4", "truncated.mp4", "audio_only.mp4", "av1.mp4",
                 "too_big.mp4", "__vtok_crash__.mp4", "__vtok_hang__.mp4"):
        entries.append({"uri": name})
    entries.append({"uri": "good1.mp4", "clip_start_s": 30.0, "clip_end_s": 31.0})  # past the end
    (root / "manifest.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    return root


def test_every_bad_input_is_quarantined_with_its_reason(ray_local, broken_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cfg = TokenizeConfig(
        input=str(broken_corpus / "manifest.jsonl"),
        output=str(out),
        # decord: the one backend that has a codec it cannot decode (AV1).
        decode=DecodeConfig(backend="decord", fps=4.0, max_frames=8, max_side=200),
        decode_stage=DecodeStageConfig(timeout_s=4.0, batch_size=2),
        sink=SinkConfig(rows_per_shard=5),
    )
    summary = run_tokenize(cfg, progress=False)
    assert summary.videos_in == 13 and summary.clips_out == 3 and summary.quarantined == 10
    assert summary.errors == {
        "decoder_crash": 1, "missing": 1, "no_video_stream": 1, "not_a_video": 1, "over_limit": 1,
        "timeout": 1, "truncated": 1, "unsupported_codec": 1, "zero_bytes": 1, "zero_frames": 1,
    }
    q = _quarantine(out)
    expected = {
        "missing.mp4": "missing", "empty.mp4": "zero_bytes", "garbage.mp4": "not_a_video",
        "truncated.mp4": "truncated", "audio_only.mp4": "no_video_stream", "av1.mp4": "unsupported_codec",
        "too_big.mp4": "over_limit", "__vtok_crash__.mp4": "decoder_crash", "__vtok_hang__.mp4": "timeout",
        "good1.mp4@30.0": "zero_frames",
    }
    assert {k: v["reason"] for k, v in q.items()} == expected
    for name, row in q.items():
        assert name.split("@")[0] in row["message"], row
    assert "decode.max_side=200" in q["too_big.mp4"]["message"]
    manifest = read_manifest(str(out))
    assert manifest["rows"] == 3 and manifest["quarantined"] == 10 and validate_dataset(str(out))[0] == []


def _tokenize_cmd(corpus: Path, out: Path, temp_dir: Path) -> list[str]:
    return [
        sys.executable, "-m", "jobs.cli", "tokenize", f"input={corpus}/manifest.jsonl", f"output={out}",
        "decode.fps=4", "decode.max_frames=8", "sink.rows_per_shard=2", "decode_stage.batch_size=1",
        "encode.batch_size=1", "ray.num_cpus=2", f"ray.temp_dir={temp_dir}", "--no-progress",
    ]


def test_sigkill_mid_run_then_resume_equals_an_uninterrupted_run(ray_local, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    write_corpus(str(corpus), 12, seed=3, cfg=ShapesConfig(width=64, height=64, num_frames=16, fps=8.0))
    reference = tmp_path / "reference"
    run_tokenize(
        TokenizeConfig(input=str(corpus / "manifest.jsonl"), output=str(reference),
                       decode=DecodeConfig(fps=4.0, max_frames=8), sink=SinkConfig(rows_per_shard=2)),
        progress=False,
    )
    out = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    ray_tmp = Path(f"/tmp/vtok-kill-{os.getpid()}")
    proc = subprocess.Popen(_tokenize_cmd(corpus, out, ray_tmp), cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    commits = out / "_vtok" / "commits"
    try:
        deadline = time.monotonic() + 180
        # Only *.json: a kill can leave a .tmp-* file of a commit record that was being written.
        while time.monotonic() < deadline and not (commits.exists() and any(commits.glob("*.json"))):
            time.sleep(0.05)
    finally:
        stop_process_tree(proc, ray_tmp, signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    killed_after = len(list(commits.glob("*.json"))) if commits.exists() else 0
    assert 1 <= killed_after < 6, f"the kill came after {killed_after} of 6 shards"
    # What a reader sees of the killed run: no manifest yet, and no half-written shard under a real name.
    assert not (out / "manifest.json").exists()
    for shard in (out / "shards").iterdir():
        assert shard.name.startswith(".tmp-") or shard.read_bytes() == (reference / "shards" / shard.name).read_bytes()

    resumed = subprocess.run(_tokenize_cmd(corpus, out, ray_tmp), cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=300)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{6 - killed_after} written, {killed_after} already committed" in resumed.stdout
    assert validate_dataset(str(out))[0] == []
    names = sorted(p.name for p in (out / "shards").iterdir() if not p.name.startswith(".tmp-"))
    assert names == sorted(p.name for p in (reference / "shards").iterdir())
    for name in names:
        assert (out / "shards" / name).read_bytes() == (reference / "shards" / name).read_bytes()
    keys = [k for f in names for k in pq.read_table(out / "shards" / f).column("sample_key").to_pylist()]
    assert len(keys) == len(set(keys)) == 12


def test_same_bytes_with_one_or_two_decoders_and_encoders(ray_local, shapes_corpus: Path, tmp_path: Path) -> None:
    def run(out: Path, **kw: object) -> list[bytes]:
        run_tokenize(
            TokenizeConfig(input=str(shapes_corpus / "manifest.jsonl"), output=str(out),
                           decode=DecodeConfig(fps=4.0, max_frames=8), sink=SinkConfig(rows_per_shard=4),
                           **kw),  # type: ignore[arg-type]
            progress=False,
        )
        return [p.read_bytes() for p in sorted((out / "shards").iterdir())]

    one = run(tmp_path / "one", decode_stage=DecodeStageConfig(batch_size=6, num_cpus=1),
              encode=EncodeConfig(num_actors=1, batch_size=8))
    two = run(tmp_path / "two", decode_stage=DecodeStageConfig(batch_size=1, num_cpus=0.5),
              encode=EncodeConfig(num_actors=2, num_cpus=0.5, batch_size=3))
    assert len(one) == 2 and one == two


def test_resume_into_another_schema_version_is_refused(ray_local, shapes_corpus: Path, tmp_path: Path) -> None:
    from pipelines.tokenize.manifest import DatasetMismatchError

    out = tmp_path / "ds"
    cfg = TokenizeConfig(input=str(shapes_corpus / "manifest.jsonl"), output=str(out),
                         decode=DecodeConfig(fps=4.0, max_frames=8), source=SourceConfig(limit=1))
    run_tokenize(cfg, progress=False)
    run_file = out / "_vtok" / "run.json"
    run = json.loads(run_file.read_text())
    run["schema_version"] = "0"
    run_file.write_text(json.dumps(run))
    with pytest.raises(DatasetMismatchError, match="schema_version='0'"):
        run_tokenize(cfg, progress=False)
    cfg.sink = SinkConfig(mode="overwrite")
    assert run_tokenize(cfg, progress=False).clips_out == 1
