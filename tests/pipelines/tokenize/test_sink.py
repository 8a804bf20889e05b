from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.tokenize.manifest import CommitRecord
from pipelines.tokenize.sink import ShardWriter, SinkConfig, build_token_table, parquet_bytes
from schemas.npy import from_npy, to_npy
from schemas.token_shard import column_to_tensors, shard_metadata


def _records(n: int, t: int = 8, s: int = 16, d: int = 64) -> list[dict]:
    rng = np.random.default_rng(0)
    return [
        {
            "sample_key": f"clip-{i:03d}", "source_uri": f"/videos/{i}.mp4", "caption": None, "clip_start_s": 0.0,
            "clip_end_s": 2.0, "source_fps": 24.0, "frame_indices": list(range(0, 6 * t, 6)), "height": 64,
            "width": 64, "attributes": None,
            "key_tokens": rng.standard_normal((s, d), dtype=np.float32),
            "residual_features": rng.standard_normal((t - 1, d), dtype=np.float32),
            "residual_tokens": None,
            "frame_tokens": rng.standard_normal((t, s, d), dtype=np.float32),
        }
        for i in range(n)
    ]


def test_tensor_columns_are_byte_stream_split_and_round_trip_exactly() -> None:
    records = _records(12)
    table = build_token_table(records, shard_metadata("f" * 64, {"grid": 4, "residual_stride": 1}, "0"))
    data = parquet_bytes(table, "zstd")
    meta = pq.ParquetFile(io.BytesIO(data)).metadata.row_group(0)
    encodings = {meta.column(i).path_in_schema: meta.column(i).encodings for i in range(meta.num_columns)}
    for leaf in ("key_tokens.list.element.list.element", "frame_tokens.list.element.list.element.list.element"):
        assert "BYTE_STREAM_SPLIT" in encodings[leaf] and "RLE_DICTIONARY" not in encodings[leaf]
    assert "RLE_DICTIONARY" in encodings["source_uri"]  # non-tensor columns keep their dictionaries
    back = pq.read_table(io.BytesIO(data))
    for column, ndim in (("key_tokens", 2), ("residual_features", 2), ("frame_tokens", 3)):
        for got, want in zip(column_to_tensors(back[column], ndim), (r[column] for r in records)):
            assert got.tobytes() == want.tobytes()
    # The same table with pyarrow's defaults (dictionary on every column) is larger.
    plain = io.BytesIO()
    pq.write_table(table, plain, compression="zstd")
    assert len(data) < 0.9 * len(plain.getvalue())


def test_quarantine_style_tables_without_tensors_still_write() -> None:
    table = pa.table({"sample_key": ["a", "b"], "clip_start_s": [0.0, None]})
    assert pq.read_table(io.BytesIO(parquet_bytes(table, "zstd"))).to_pylist() == table.to_pylist()


def _row(i: int, t: int = 8, d: int = 64, error: str = "") -> dict:
    rng = np.random.default_rng(i)
    tensors = {
        "key_tokens": rng.standard_normal((16, d), dtype=np.float32),
        "residual_features": rng.standard_normal((t - 1, d), dtype=np.float32),
        "frame_tokens": rng.standard_normal((t, 16, d), dtype=np.float32),
    }
    return {
        "sample_key": f"{i:06d}", "source_uri": f"/videos/{i}.mp4", "caption": "", "clip_start_s": -1.0,
        "clip_end_s": -1.0, "source_fps": 24.0, "height": 64, "width": 64, "attributes": "",
        "frame_indices": to_npy(np.arange(t, dtype=np.int64)), "residual_tokens": b"",
        "error_reason": error, "error_message": "bad bytes" if error else "",
        **{k: b"" if error else to_npy(v) for k, v in tensors.items()},
    }


def _write(out: Path, rows: list[dict], fmt: str = "parquet", **sink: int) -> CommitRecord:
    metadata = shard_metadata("f" * 64, {"grid": 4, "residual_stride": 1}, "0")
    writer = ShardWriter(str(out), 3, [r["sample_key"] for r in rows], metadata, SinkConfig(**sink), None, fmt)
    for row in rows:
        writer.add(row)
    return writer.commit()


def test_shard_streams_in_row_groups_with_the_same_rows_and_bytes_every_time(tmp_path: Path) -> None:
    rows = [_row(i) for i in range(40)]
    record = _write(tmp_path / "a", rows, row_group_bytes=200_000)
    again = _write(tmp_path / "b", rows, row_group_bytes=200_000)
    path = tmp_path / "a" / "shards" / "part-00003.parquet"
    data = path.read_bytes()
    assert record.files == again.files == [
        {"file": "shards/part-00003.parquet", "rows": 40, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    ]
    # ~40 KB a row against a 200 KB budget: row groups of 4 rows, all the driver ever held of this shard.
    meta = pq.ParquetFile(path).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [4] * 10
    table = pq.read_table(path)
    assert table["sample_key"].to_pylist() == [r["sample_key"] for r in rows]
    for got, row in zip(column_to_tensors(table["frame_tokens"], 3), rows):
        assert got.tobytes() == from_npy(row["frame_tokens"]).tobytes()
    assert record.frame_counts == {"8": 40} and record.rows == 40
    assert sorted(p.name for p in (tmp_path / "a" / "shards").iterdir()) == ["part-00003.parquet"]  # no spool left


@pytest.mark.parametrize("fmt", ["parquet", "webdataset"])
def test_parts_are_cut_before_they_pass_max_shard_bytes(tmp_path: Path, fmt: str) -> None:
    rows = [_row(i) for i in range(30)]
    record = _write(tmp_path, rows, fmt, max_shard_bytes=400_000, row_group_bytes=100_000)
    suffix = "parquet" if fmt == "parquet" else "tar"
    assert [f["file"] for f in record.files][:2] == [f"shards/part-00003-000.{suffix}", f"shards/part-00003-001.{suffix}"]
    assert all(f["bytes"] <= 400_000 for f in record.files) and len(record.files) >= 3
    assert sum(f["rows"] for f in record.files) == 30
    for f in record.files:
        assert (tmp_path / f["file"]).stat().st_size == f["bytes"]


def test_failed_clips_go_to_quarantine_and_a_single_oversized_clip_gets_its_own_part(tmp_path: Path) -> None:
    rows = [_row(0), _row(1, error="not_a_video"), _row(2, t=64)]
    record = _write(tmp_path, rows, max_shard_bytes=300_000)
    assert record.rows == 2 and record.quarantine_rows == 1 and record.errors == {"not_a_video": 1}
    assert [f["rows"] for f in record.files] == [1, 1]  # the 64-frame clip alone is over 300 KB
    quarantine = pq.read_table(tmp_path / "quarantine" / "part-00003.parquet").to_pylist()
    assert quarantine == [{"sample_key": "000001", "source_uri": "/videos/1.mp4", "clip_start_s": None,
                           "clip_end_s": None, "reason": "not_a_video", "message": "bad bytes"}]


def test_an_aborted_shard_leaves_no_files(tmp_path: Path) -> None:
    metadata = shard_metadata("f" * 64, {"grid": 4, "residual_stride": 1}, "0")
    writer = ShardWriter(str(tmp_path), 0, ["000000", "000001", "000002"], metadata, SinkConfig(row_group_bytes=1))
    writer.add(_row(0))
    writer.add(_row(1))
    assert not writer.complete
    writer.abort()
    assert list((tmp_path / "shards").iterdir()) == []


def test_decoder_targets_are_written_in_their_dtypes_and_round_trip_exactly() -> None:
    rng = np.random.default_rng(1)
    records = _records(3)
    for r in records:
        r["frames_lowres"] = rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
        r["latents"] = rng.standard_normal((4, 2, 4, 4), dtype=np.float32)
    table = build_token_table(records, shard_metadata("f" * 64, {"grid": 4, "residual_stride": 1}, "0"))
    assert table.schema.field("frames_lowres").type == pa.list_(pa.list_(pa.list_(pa.list_(pa.uint8()))))
    data = parquet_bytes(table, "zstd")
    meta = pq.ParquetFile(io.BytesIO(data)).metadata.row_group(0)
    encodings = {meta.column(i).path_in_schema: meta.column(i).encodings for i in range(meta.num_columns)}
    assert "BYTE_STREAM_SPLIT" in encodings["latents.list.element.list.element.list.element.list.element"]
    back = pq.read_table(io.BytesIO(data))
    for column in ("frames_lowres", "latents"):
        for got, want in zip(column_to_tensors(back[column], 4), (r[column] for r in records)):
            assert got.dtype == want.dtype and got.tobytes() == want.tobytes()
    assert "latents" not in build_token_table(_records(1), {}).schema.names  # off: no column at all
