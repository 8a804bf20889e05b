from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.tokenize.clips import SourceConfig
from pipelines.tokenize.manifest import DatasetMismatchError
from pipelines.tokenize.pipeline import TokenizeConfig, run_tokenize
from pipelines.tokenize.sink import SinkConfig
from pipelines.tokenize.sources import list_clips
from schemas.token_shard import validate_table
from vtok.dataset import read_manifest, read_shard, shard_uris, table_tensors
from vtok.tokenizer import VTokTokenizer
from vtok.tokenizer_spec import TokenizerConfig
from vtok.video import DecodeConfig, decode_clip


def _cfg(input_uri: str, output: Path, **kw: object) -> TokenizeConfig:
    base = dict(
        input=input_uri,
        output=str(output),
        decode=DecodeConfig(fps=4.0, max_frames=8),
        sink=SinkConfig(rows_per_shard=4),
    )
    base.update(kw)
    return TokenizeConfig(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def first_run(ray_local, shapes_corpus: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("tokens")
    summary = run_tokenize(_cfg(str(shapes_corpus / "manifest.jsonl"), out), progress=False)
    return out, summary


def test_one_valid_row_per_video(first_run, shapes_corpus: Path) -> None:
    out, summary = first_run
    assert summary.videos_in == 6 and summary.clips_out == 6 and summary.quarantined == 0
    assert summary.shards_written == 2 and summary.shards_skipped == 0
    manifest = read_manifest(str(out))
    assert manifest["complete"] and manifest["rows"] == 6 and len(manifest["shards"]) == 2
    assert [s["rows"] for s in manifest["shards"]] == [4, 2]
    captions = {json.loads(line)["caption"] for line in (shapes_corpus / "manifest.jsonl").read_text().splitlines()}
    keys = []
    for uri in shard_uris(str(out)):
        table = read_shard(uri)
        assert validate_table(table, expected_fingerprint=manifest["fingerprint"]) == []
        keys += table.column("sample_key").to_pylist()
        assert set(table.column("caption").to_pylist()) <= captions
        assert all(json.loads(a)["count"] >= 1 for a in table.column("attributes").to_pylist())
    assert keys == sorted(keys) and len(set(keys)) == 6


def test_pipeline_tokens_equal_a_direct_decode_and_encode(first_run, shapes_corpus: Path) -> None:
    out, _ = first_run
    table = read_shard(shard_uris(str(out))[0])
    row = table.slice(0, 1)
    tensors = table_tensors(row)
    uri = row.column("source_uri")[0].as_py()
    tok = VTokTokenizer(TokenizerConfig())
    clip = decode_clip(uri, DecodeConfig(fps=4.0, max_frames=8, size=tok.image_size))
    (expected,) = tok.encode([clip.frames])
    assert row.column("frame_indices")[0].as_py() == clip.frame_indices.tolist()
    assert tensors["key_tokens"][0].tobytes() == expected.key_tokens.tobytes()
    assert tensors["residual_features"][0].tobytes() == expected.residual_features.tobytes()
    assert tensors["frame_tokens"][0].tobytes() == expected.frame_tokens.tobytes()
    # 16 frames at 8 fps = 2 s; 4 fps sampling -> 8 frames: S + R = 16 + 7, baseline T x S = 8 x 16.
    assert tensors["key_tokens"][0].shape == (16, 64)
    assert tensors["residual_features"][0].shape == (7, 64)
    assert tensors["frame_tokens"][0].shape == (8, 16, 64)


def test_same_input_twice_gives_byte_identical_shards(first_run, shapes_corpus: Path, tmp_path: Path) -> None:
    out, _ = first_run
    run_tokenize(_cfg(str(shapes_corpus / "manifest.jsonl"), tmp_path / "again"), progress=False)
    a = sorted((out / "shards").iterdir())
    b = sorted((tmp_path / "again" / "shards").iterdir())
    assert [p.name for p in a] == [p.name for p in b] == ["part-00000.parquet", "part-00001.parquet"]
    for x, y in zip(a, b):
        assert x.read_bytes() == y.read_bytes()


def test_rerun_skips_committed_shards(first_run, shapes_corpus: Path) -> None:
    out, _ = first_run
    before = {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}
    summary = run_tokenize(_cfg(str(shapes_corpus / "manifest.jsonl"), out), progress=False)
    assert summary.shards_written == 0 and summary.shards_skipped == 2 and summary.clips_out == 6
    assert {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()} == before


def test_other_tokenizer_into_same_output_is_refused(first_run, shapes_corpus: Path) -> None:
    out, _ = first_run
    with pytest.raises(DatasetMismatchError, match="fingerprint"):
        run_tokenize(
            _cfg(str(shapes_corpus / "manifest.jsonl"), out, tokenizer=TokenizerConfig(grid=2)), progress=False
        )
    assert read_manifest(str(out))["rows"] == 6


def test_overwrite_mode_replaces_the_dataset(ray_local, shapes_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    run_tokenize(_cfg(str(shapes_corpus / "manifest.jsonl"), out, source=SourceConfig(limit=2)), progress=False)
    summary = run_tokenize(
        _cfg(
            str(shapes_corpus / "manifest.jsonl"), out, tokenizer=TokenizerConfig(grid=2, frame_tokens=False),
            sink=SinkConfig(rows_per_shard=4, mode="overwrite"),
        ),
        progress=False,
    )
    assert summary.clips_out == 6 and summary.key_tokens_per_clip == 4
    table = read_shard(shard_uris(str(out))[0])
    assert "frame_tokens" not in table.column_names
    assert len(table.column("key_tokens")[0].as_py()) == 4


def test_bad_videos_are_quarantined_and_the_rest_written(ray_local, shapes_corpus: Path, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    for p in sorted((shapes_corpus / "videos").iterdir())[:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "garbage.mp4").write_bytes(b"this is not a video" * 100)
    out = tmp_path / "out"
    summary = run_tokenize(_cfg(str(folder), out), progress=False)
    assert summary.videos_in == 5 and summary.clips_out == 3 and summary.quarantined == 2
    assert summary.errors == {"not_a_video": 1, "zero_bytes": 1}
    quarantine = [r for f in sorted((out / "quarantine").iterdir()) for r in pq.read_table(f).to_pylist()]
    by_file = {Path(r["source_uri"]).name: r for r in quarantine}
    assert by_file["empty.mp4"]["reason"] == "zero_bytes"
    assert by_file["garbage.mp4"]["reason"] == "not_a_video"
    assert "garbage.mp4" in by_file["garbage.mp4"]["message"]
    # Folder input: no captions.
    assert sum(read_shard(u).column("caption").null_count for u in shard_uris(str(out))) == 3


def test_shards_read_without_vtok(first_run) -> None:
    """pandas and DuckDB recover every tensor exactly, in a process that never imports vtok."""
    out, _ = first_run
    shard = shard_uris(str(out))[0]
    expected = table_tensors(read_shard(shard))
    script = f"""
import sys, json
import numpy as np, pandas as pd, duckdb
df = pd.read_parquet({shard!r})
key = np.stack([np.stack(r) for r in df["key_tokens"]]).astype(np.float32)
con = duckdb.connect()
rows = con.execute("select sample_key, key_tokens, residual_features from read_parquet('{shard}') order by sample_key").fetchall()
res = [np.array(r[2], dtype=np.float32) for r in rows]
assert not any(m == "vtok" or m.startswith(("vtok.", "schemas", "pipelines")) for m in sys.modules)
np.save(sys.stdout.buffer, key)
np.save(sys.stdout.buffer, np.concatenate(res))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, check=True, cwd="/")
    import io

    buf = io.BytesIO(proc.stdout)
    key = np.load(buf)
    res = np.load(buf)
    assert key.tobytes() == np.stack(expected["key_tokens"]).tobytes()
    assert res.tobytes() == np.concatenate(expected["residual_features"]).tobytes()


def test_listing_is_sorted_and_keys_stable(shapes_corpus: Path) -> None:
    a = list_clips(str(shapes_corpus / "manifest.jsonl"), SourceConfig())
    b = list_clips(str(shapes_corpus / "videos"), SourceConfig())
    assert [i.sample_key for i in a] == [i.sample_key for i in b]
    assert [i.source_uri for i in a] == [i.source_uri for i in b]
    assert all(Path(i.source_uri).is_absolute() for i in a)
    assert a[0].caption and b[0].caption is None
    assert np.all(np.diff([int(k[:8], 16) for k in (i.sample_key for i in a)]) > 0)
