"""tokenizer.residual_grid = 2 through the sinks, the readers, the validators and every token count.

The datasets are written in-process by the real ShardWriter and manifest code (no Ray), except one
`run_tokenize` job with residual_grid=2 that goes through the whole pipeline.
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from jobs.commands import cmd_inspect
from pipelines.evaluate.checks import MLLMCheckpoint, token_budget
from pipelines.tokenize.manifest import DatasetMismatchError, write_manifest
from pipelines.tokenize.pipeline import TokenizeConfig, TokenizeSummary, run_tokenize
from pipelines.tokenize.report import build_report
from pipelines.tokenize.report_page import render_html
from pipelines.tokenize.sink import ShardWriter, SinkConfig
from schemas.npy import to_npy
from schemas.token_shard import SCHEMA_VERSION, shard_metadata, validate_table
from schemas.webdataset import validate_samples
from vtok.dataset import read_manifest, read_shard_samples, shard_uris, validate_dataset
from vtok.shapes import ShapesConfig, generate
from vtok.tokenizer import ClipTokens, VTokTokenizer
from vtok.tokenizer_spec import TokenizerConfig
from vtok.training.batching import collate_tokens
from vtok.video import DecodeConfig, decode_clip

R_GRID, T, D = 2, 6, 64
IDENTITY = {"decode.fps": 8.0, "test": "residual_grid"}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def clips(tiny_clip_dir: Path) -> tuple[VTokTokenizer, list[ClipTokens]]:
    """Three moving clips of T=6 frames (one cut to 3) through a residual_grid=2 tokenizer."""
    tok = VTokTokenizer(TokenizerConfig(encoder=str(tiny_clip_dir), residual_grid=R_GRID))
    cfg = ShapesConfig(width=64, height=64, num_frames=T, fps=8.0)
    frames = [generate(5, i, cfg, static=False).frames for i in range(3)]
    return tok, tok.encode([frames[0], frames[1], frames[2][:3]])


def _row(i: int, t: ClipTokens) -> dict[str, Any]:
    """An encoded row as the encode stage hands it to the sink (tensors as .npy bytes)."""
    return {"sample_key": f"k{i:04d}", "source_uri": f"/videos/{i}.mp4", "caption": f"clip {i}", "clip_start_s": 0.0,
            "clip_end_s": 1.0, "source_fps": 8.0, "height": 64, "width": 64, "attributes": "",
            "frame_indices": to_npy(np.arange(t.frame_tokens.shape[0], dtype=np.int64)), "residual_tokens": b"",
            "error_reason": "", "error_message": "", "key_tokens": to_npy(t.key_tokens),
            "residual_features": to_npy(t.residual_features), "frame_tokens": to_npy(t.frame_tokens)}


def _dataset(out: Path, fmt: str, tok: VTokTokenizer, tokens: list[ClipTokens]) -> Path:
    """A committed one-shard dataset written by the sink and the manifest code the pipeline uses."""
    describe, fingerprint = tok.describe(), tok.fingerprint
    rows = [_row(i, t) for i, t in enumerate(tokens)]
    meta = shard_metadata(fingerprint, describe, "test", IDENTITY)
    writer = ShardWriter(str(out), 0, [r["sample_key"] for r in rows], meta, SinkConfig(), None, fmt)
    for row in rows:
        writer.add(row)
    writer.commit()
    write_manifest(str(out), {"schema_version": SCHEMA_VERSION, "fingerprint": fingerprint, "format": fmt,
                              "tokenizer": describe, "identity": IDENTITY, "targets": {}, "vtok_version": "test",
                              "num_shards": 1})
    return out


@pytest.mark.parametrize("fmt", ["parquet", "webdataset"])
def test_r2_round_trips_exactly_and_readers_without_vtok_recover_the_grid(
    clips: tuple[VTokTokenizer, list[ClipTokens]], tmp_path: Path, fmt: str
) -> None:
    tok, tokens = clips
    out = _dataset(tmp_path / fmt, fmt, tok, tokens)
    problems, counts = validate_dataset(str(out))
    assert problems == [] and counts["rows"] == 3
    manifest = read_manifest(str(out))
    assert manifest["tokenizer"]["residual_grid"] == R_GRID
    (shard,) = shard_uris(str(out))
    samples = read_shard_samples(shard)
    for sample, t in zip(samples, tokens):
        assert sample["residual_features"].shape == (R_GRID * R_GRID * (t.frame_tokens.shape[0] - 1), D)
        for name in ("key_tokens", "residual_features", "frame_tokens"):
            assert sample[name].tobytes() == getattr(t, name).tobytes(), name
    # Without vtok: r from the manifest (and the Parquet footer), then reshape(R, r, r, D) of the stored rows.
    r = manifest["tokenizer"]["residual_grid"]
    if fmt == "parquet":
        table = pq.read_table(shard)
        assert json.loads(table.schema.metadata[b"vtok.tokenizer_config"])["residual_grid"] == r
        stored = [np.array(table.column("residual_features")[i].as_py(), np.float32) for i in range(3)]
    else:
        with tarfile.open(shard) as tar:
            stored = [np.load(io.BytesIO(tar.extractfile(f"k{i:04d}.residual.npy").read()), allow_pickle=False)
                      for i in range(3)]
    for rows, t in zip(stored, tokens):
        steps = t.frame_tokens.shape[0] - 1
        grid = rows.reshape(steps, r, r, D)
        assert grid.tobytes() == t.residual_features.tobytes()
        # Cell (i, j) of step k is row k*r*r + i*r + j.
        assert grid[steps - 1, 1, 0].tobytes() == rows[(steps - 1) * 4 + 2].tobytes()
    # Batched, the residual slots are the r*r*R rows padded to the longest clip.
    batch = collate_tokens(samples)
    assert tuple(batch["residual_features"].shape) == (3, 4 * (T - 1), D)
    assert batch["residual_mask"].sum(1).tolist() == [4 * (T - 1), 4 * (T - 1), 4 * 2]


def test_validators_count_r_r_rows_per_step(clips: tuple[VTokTokenizer, list[ClipTokens]], tmp_path: Path) -> None:
    tok, tokens = clips
    table = pq.read_table(shard_uris(str(_dataset(tmp_path / "p", "parquet", tok, tokens)))[0])
    assert validate_table(table, expected_fingerprint=tok.fingerprint) == []
    # The same rows labelled as r = 1 data: 4x too many residual rows.
    as_r1 = table.replace_schema_metadata(shard_metadata(tok.fingerprint, {**tok.describe(), "residual_grid": 1}, "t"))
    assert validate_table(as_r1)[0] == "k0000: residual_features has 20 rows, expected R=5 for T=6 and stride 1"
    samples = [{"sample_key": f"k{i}", "key_tokens": t.key_tokens, "residual_features": t.residual_features,
                "source_uri": "x", "frame_indices": list(range(t.frame_tokens.shape[0]))} for i, t in enumerate(tokens)]
    assert validate_samples(samples, 4, 1, residual_grid=2) == []
    one = [{**s, "residual_features": s["residual_features"][::4]} for s in samples]
    assert validate_samples(one, 4, 1, residual_grid=2)[0] == "k0: residual_features has 5 rows, expected r*r*R=4*5=20"
    assert validate_samples(one, 4, 1) == []


def test_token_counts_in_inspect_the_summary_and_the_eval_budget(
    clips: tuple[VTokTokenizer, list[ClipTokens]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tok, tokens = clips
    out = _dataset(tmp_path / "d", "parquet", tok, tokens[:2])  # both T = 6: R = 5
    tar = shard_uris(str(_dataset(tmp_path / "w", "webdataset", tok, tokens[:2])))[0]
    # The dataset, one Parquet shard by its footer, one tar by its rows.
    for uri in (str(out), shard_uris(str(out))[0], tar):
        assert cmd_inspect(argparse.Namespace(uri=uri)) == 0
        lines = {line[:16].strip(): line[17:].strip() for line in capsys.readouterr().out.splitlines()}
        assert lines["residual R"] == "mean 5.0 (T from 6 to 6 frames, stride 1, r*r=4 tokens each " \
                                      "(tokenizer.residual_grid=2))"
        assert lines["tokens per clip"] == "VTok S+r*r*R = 16 + 4*5.0 = 36.0; frame sampling T*S = 96.0"
    summary = TokenizeSummary(output="o", fingerprint="f" * 64, videos_in=2, clips_out=2, quarantined=0, errors={},
                              shards_written=1, shards_skipped=0, key_tokens_per_clip=16,
                              mean_residual_tokens_per_clip=20.0, mean_frame_tokens_per_clip=96.0, wall_time_s=1.0,
                              videos_per_s=2.0, residual_grid=2)
    assert "tokens per clip    VTok S+r*r*R = 16 + 4*5.0 = 36.0; frame sampling T*S = 96.0" in summary.lines()
    manifest = read_manifest(str(out))

    def ckpt(tokens: str, frames: int | None = None) -> MLLMCheckpoint:
        return MLLMCheckpoint(key="checkpoint", given="run", uri="run/checkpoints/step_1", run="run", name="step_1",
                              step=1, record={"mllm": {"tokens": tokens, "frames": frames}}, data={})

    assert token_budget(ckpt("vtok"), manifest) == 16 + 4 * 5
    assert token_budget(ckpt("vtok"), {**manifest, "tokenizer": {**manifest["tokenizer"], "residual_grid": None}}) == 21
    assert token_budget(ckpt("frame_sampling", 2), manifest) == 32 and token_budget(ckpt("frame_sampling"), manifest) == 96


def test_tokenize_job_with_residual_grid_2(ray_local: Any, shapes_corpus: Path, tmp_path: Path) -> None:
    """The whole pipeline, WebDataset out: 6 videos, 8 sampled frames each, 2x2 residual grids."""
    def cfg(residual_grid: int) -> TokenizeConfig:
        return TokenizeConfig(input=str(shapes_corpus / "manifest.jsonl"), output=str(tmp_path / "tok"),
                              format="webdataset", decode=DecodeConfig(fps=4.0, max_frames=8),
                              tokenizer=TokenizerConfig(residual_grid=residual_grid))

    summary = run_tokenize(cfg(2), progress=False)
    assert summary.clips_out == 6 and summary.mean_residual_tokens_per_clip == 4 * 7
    assert "tokens per clip    VTok S+r*r*R = 16 + 4*7.0 = 44.0; frame sampling T*S = 128.0" in summary.lines()
    problems, _ = validate_dataset(str(tmp_path / "tok"))
    assert problems == []
    report = build_report(summary, cfg(2))
    assert report["tokens"]["residual_grid"] == 2 and report["tokens"]["vtok_per_clip"]["mean"] == 44.0
    assert report["tokens"]["dataset_mean_vtok_per_clip"] == 44.0
    page = render_html(report)
    assert "Tokens per clip: VTok S+r*r*R vs frame sampling T*S" in page and "r*r = 4 residual tokens" in page
    sample = read_shard_samples(shard_uris(str(tmp_path / "tok"))[0])[0]
    tok = VTokTokenizer(TokenizerConfig(residual_grid=2))
    (expected,) = tok.encode([decode_clip(sample["source_uri"], DecodeConfig(fps=4.0, max_frames=8, size=64)).frames])
    assert sample["residual_features"].shape == (28, 64)
    assert sample["residual_features"].tobytes() == expected.residual_features.tobytes()
    # Resuming into it with the default r = 1 is refused, naming the setting.
    with pytest.raises(DatasetMismatchError, match=r"tokenizer\.residual_grid: 2 vs '\(unset\)'"):
        run_tokenize(cfg(1), progress=False)
