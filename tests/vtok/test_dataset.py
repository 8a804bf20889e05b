"""Reading token datasets back: vtok's readers, and third-party readers that never import vtok."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipelines.tokenize.pipeline import TokenizeConfig, run_tokenize
from pipelines.tokenize.sink import SinkConfig
from vtok.dataset import read_manifest, read_shard, shard_uris, table_tensors, validate_dataset
from vtok.video import DecodeConfig


@pytest.fixture(scope="module")
def datasets(ray_local, shapes_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for fmt in ("parquet", "webdataset"):
        path = tmp_path_factory.mktemp(fmt)
        run_tokenize(
            TokenizeConfig(input=str(shapes_corpus / "manifest.jsonl"), output=str(path), format=fmt,
                           decode=DecodeConfig(fps=4.0, max_frames=8), sink=SinkConfig(rows_per_shard=4)),
            progress=False,
        )
        out[fmt] = path
    return out


def _parquet_truth(path: Path) -> dict[str, dict[str, np.ndarray]]:
    truth = {}
    for uri in shard_uris(str(path)):
        table = read_shard(uri)
        tensors = table_tensors(table)
        for i, key in enumerate(table.column("sample_key").to_pylist()):
            truth[key] = {name: tensors[name][i] for name in ("key_tokens", "residual_features", "frame_tokens")}
    return truth


def _run_without_vtok(script: str) -> io.BytesIO:
    guard = "\nimport sys\nassert not [m for m in sys.modules if m.split('.')[0] in ('vtok', 'schemas', 'pipelines')]\n"
    proc = subprocess.run([sys.executable, "-c", script + guard], capture_output=True, cwd="/")
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    return io.BytesIO(proc.stdout)


def test_webdataset_and_parquet_hold_the_same_tokens(datasets: dict[str, Path]) -> None:
    from vtok.loader import TokenIterable

    truth = _parquet_truth(datasets["parquet"])
    samples = list(TokenIterable(str(datasets["webdataset"])))
    assert sorted(s["sample_key"] for s in samples) == sorted(truth)
    for s in samples:
        assert s["key_tokens"].numpy().tobytes() == truth[s["sample_key"]]["key_tokens"].tobytes()
        assert s["residual_features"].numpy().tobytes() == truth[s["sample_key"]]["residual_features"].tobytes()
        assert s["frame_tokens"].shape == truth[s["sample_key"]]["frame_tokens"].shape
        assert s["schema_version"] == "1" and len(s["tokenizer_fingerprint"]) == 64


def test_token_iterable_splits_shards_across_dataloader_workers(datasets: dict[str, Path]) -> None:
    import torch.utils.data

    from vtok.loader import TokenIterable

    loader = torch.utils.data.DataLoader(TokenIterable(str(datasets["webdataset"])), batch_size=None, num_workers=2)
    keys = [s["sample_key"] for s in loader]
    assert sorted(keys) == sorted(_parquet_truth(datasets["parquet"])) and len(keys) == 6


def test_read_tokens_returns_a_ray_dataset(datasets: dict[str, Path]) -> None:
    import vtok

    ds = vtok.read_tokens(str(datasets["parquet"]))
    rows = ds.take_all()
    assert len(rows) == 6
    truth = _parquet_truth(datasets["parquet"])
    for row in rows:
        key = np.stack(row["key_tokens"]).astype(np.float32)
        assert key.tobytes() == truth[row["sample_key"]]["key_tokens"].tobytes()
    wds = vtok.read_tokens(str(datasets["webdataset"])).take_all()
    assert len(wds) == 6 and np.stack(wds[0]["key_tokens"]).astype(np.float32).shape == (16, 64)


def test_huggingface_datasets_reads_parquet_shards_exactly(datasets: dict[str, Path]) -> None:
    files = shard_uris(str(datasets["parquet"]))
    out = _run_without_vtok(f"""
import numpy as np, sys, datasets
ds = datasets.load_dataset("parquet", data_files={files!r}, split="train")
ds = ds.sort("sample_key")
np.save(sys.stdout.buffer, np.stack([np.array(r, dtype=np.float32) for r in ds["key_tokens"]]))
np.save(sys.stdout.buffer, np.concatenate([np.array(r, dtype=np.float32).reshape(-1) for r in ds["frame_tokens"]]))
""")
    truth = _parquet_truth(datasets["parquet"])
    keys = sorted(truth)
    assert np.load(out).tobytes() == np.stack([truth[k]["key_tokens"] for k in keys]).tobytes()
    assert np.load(out).tobytes() == np.concatenate([truth[k]["frame_tokens"].reshape(-1) for k in keys]).tobytes()


def test_webdataset_package_reads_token_tars_exactly(datasets: dict[str, Path]) -> None:
    files = shard_uris(str(datasets["webdataset"]))
    out = _run_without_vtok(f"""
import io, json, sys
import numpy as np, webdataset as wds
def npy(data):
    return np.load(io.BytesIO(data), allow_pickle=False)
keys, key_tokens, residual = [], [], []
for s in wds.WebDataset({files!r}, shardshuffle=False):
    meta = json.loads(s["json"])
    keys.append(meta["sample_key"])
    key_tokens.append(npy(s["key.npy"]))
    residual.append(npy(s["residual.npy"]))
order = np.argsort(keys)
np.save(sys.stdout.buffer, np.stack([key_tokens[i] for i in order]))
np.save(sys.stdout.buffer, np.stack([residual[i] for i in order]))
""")
    truth = _parquet_truth(datasets["parquet"])
    keys = sorted(truth)
    assert np.load(out).tobytes() == np.stack([truth[k]["key_tokens"] for k in keys]).tobytes()
    assert np.load(out).tobytes() == np.stack([truth[k]["residual_features"] for k in keys]).tobytes()


def test_validate_passes_both_formats_and_catches_a_missing_shard(datasets: dict[str, Path]) -> None:
    for path in datasets.values():
        problems, counts = validate_dataset(str(path))
        assert problems == [] and counts["rows"] == 6 and counts["shards"] == 2


def test_validate_cli_exit_codes(datasets: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    from jobs.cli import main

    copy = tmp_path / "copy"
    shutil.copytree(datasets["webdataset"], copy)
    assert main(["validate", str(copy)]) == 0
    (copy / "shards" / "part-00001.tar").unlink()
    assert main(["validate", str(copy)]) == 1
    assert validate_dataset(str(copy))[0][0] == "shards/part-00001.tar: missing (listed in the manifest)"


def test_large_shards_are_cut_by_bytes(ray_local, shapes_corpus: Path, tmp_path: Path) -> None:
    run_tokenize(
        TokenizeConfig(input=str(shapes_corpus / "manifest.jsonl"), output=str(tmp_path),
                       decode=DecodeConfig(fps=4.0, max_frames=8),
                       sink=SinkConfig(rows_per_shard=6, max_shard_bytes=150_000)),
        progress=False,
    )
    manifest = read_manifest(str(tmp_path))
    assert all(s["bytes"] <= 150_000 for s in manifest["shards"]) and len(manifest["shards"]) > 1
    assert [s["file"] for s in manifest["shards"]][0] == "shards/part-00000-000.parquet"
    assert sum(s["rows"] for s in manifest["shards"]) == 6
    assert validate_dataset(str(tmp_path))[0] == []


def test_describe_dataset_and_single_shards(datasets: dict[str, Path]) -> None:
    from vtok.dataset import describe

    whole = describe(str(datasets["webdataset"]))
    assert whole["rows"] == 6 and whole["shards"] == 2 and whole["frame_counts"] == {"8": 6}
    tar = describe(shard_uris(str(datasets["webdataset"]))[0])
    parquet = describe(shard_uris(str(datasets["parquet"]))[0])
    assert tar["rows"] == parquet["rows"] == 4
    assert tar["fingerprint"] == parquet["fingerprint"] == whole["fingerprint"]
    assert tar["tokenizer"]["grid"] == parquet["tokenizer"]["grid"] == 4
