"""Readers that feed a training loop: one row shape for both formats, padded batches, DDP-split iteration."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.utils.data

import vtok
from pipelines.tokenize.pipeline import TokenizeConfig, run_tokenize
from pipelines.tokenize.sink import SinkConfig
from schemas.token_shard import REQUIRED_FIELDS
from vtok.dataset import read_shard, shard_uris, table_tensors, validate_dataset
from vtok.loader import TokenIterable
from vtok.video import DecodeConfig

FORMATS = ("parquet", "webdataset")
# Clip ends per manifest row (None: the whole 2 s video): at 4 fps, T = 8, 4 or 1 frames, so R = 7, 3 or 0.
CLIP_ENDS = (None, 1.0, None, 0.25, None, 1.0)


@pytest.fixture(scope="module")
def datasets(ray_local, shapes_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The six shapes videos, clipped to three lengths, tokenized into both formats in shards of two."""
    root = tmp_path_factory.mktemp("readers")
    rows = [json.loads(line) for line in (shapes_corpus / "manifest.jsonl").read_text().splitlines()]
    for row, end in zip(rows, CLIP_ENDS):
        row["uri"] = str(shapes_corpus / row["uri"])
        if end is not None:
            row["clip_end_s"] = end
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = {}
    for fmt in FORMATS:
        out[fmt] = root / fmt
        run_tokenize(
            TokenizeConfig(input=str(manifest), output=str(out[fmt]), format=fmt,
                           decode=DecodeConfig(fps=4.0, max_frames=8), sink=SinkConfig(rows_per_shard=2)),
            progress=False,
        )
    return out


@pytest.fixture(scope="module")
def truth(datasets: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """Each clip's stored values, read straight from the Parquet shards with pyarrow."""
    out: dict[str, dict[str, Any]] = {}
    for uri in shard_uris(str(datasets["parquet"])):
        table = read_shard(uri)
        tensors = table_tensors(table)
        for i, row in enumerate(table.to_pylist()):
            out[row["sample_key"]] = row | {name: tensors[name][i] for name in tensors}
    assert sorted(len(t["frame_indices"]) for t in out.values()) == [1, 4, 4, 8, 8, 8]
    return out


def _deep_equal(a: Any, b: Any) -> bool:
    """Equal values and equal containers: an ndarray never equals a list here, nor float32 a float64."""
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        if a.dtype == object:
            return a.shape == b.shape and all(_deep_equal(x, y) for x, y in zip(a, b))
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_deep_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_deep_equal(a[k], b[k]) for k in a)
    return a == b


# --- read_tokens: one shape of row for both formats -------------------------------------------------------

def test_read_tokens_gives_the_same_columns_types_and_values_for_both_formats(datasets: dict[str, Path]) -> None:
    parquet, wds = (vtok.read_tokens(str(datasets[fmt])) for fmt in FORMATS)
    expected = [f.name for f in REQUIRED_FIELDS] + ["frame_tokens", "attributes"]
    assert parquet.schema().names == wds.schema().names == expected
    assert parquet.schema().types == wds.schema().types

    rows = {fmt: sorted(ds.take_all(), key=lambda r: r["sample_key"]) for fmt, ds in zip(FORMATS, (parquet, wds))}
    assert len(rows["parquet"]) == 6
    for p, w in zip(rows["parquet"], rows["webdataset"]):
        assert _deep_equal(p, w), p["sample_key"]
    assert isinstance(rows["webdataset"][0]["key_tokens"], list)  # as Parquet rows have always come

    batches = {fmt: ds.sort("sample_key").take_batch(6) for fmt, ds in zip(FORMATS, (parquet, wds))}
    assert _deep_equal(batches["parquet"], batches["webdataset"])


def test_webdataset_rows_hold_the_stored_tensors_exactly(datasets: dict[str, Path], truth: dict[str, Any]) -> None:
    for row in vtok.read_tokens(str(datasets["webdataset"])).take_all():
        stored = truth[row["sample_key"]]
        assert np.asarray(row["key_tokens"], np.float32).tobytes() == stored["key_tokens"].tobytes()
        r = np.asarray(row["residual_features"], np.float32).reshape(-1, 64)
        assert r.tobytes() == stored["residual_features"].tobytes()
        assert row["frame_indices"] == stored["frame_indices"] and row["caption"] == stored["caption"]


# --- collate_tokens -------------------------------------------------------------------------------------

def _check_collated(batch: dict[str, Any], truth: dict[str, Any]) -> list[int]:
    """Every value of a collated batch against the stored clip; returns the batch's frame counts."""
    keys = batch["sample_key"]
    assert isinstance(keys, list) and all(isinstance(k, str) for k in keys)
    assert batch["caption"] == [truth[k]["caption"] for k in keys]
    frames = [len(truth[k]["frame_indices"]) for k in keys]
    b, t_max, r_max = len(keys), max(frames), max(frames) - 1
    assert batch["key_tokens"].dtype == torch.float32 and batch["key_tokens"].shape == (b, 16, 64)
    assert batch["residual_features"].dtype == torch.float32 and batch["residual_features"].shape == (b, r_max, 64)
    assert batch["frame_tokens"].dtype == torch.float32 and batch["frame_tokens"].shape == (b, t_max, 16, 64)
    assert batch["frame_indices"].dtype == torch.int64 and batch["frame_indices"].shape == (b, t_max)
    assert batch["residual_mask"].dtype == batch["frame_mask"].dtype == torch.bool
    assert batch["clip_end_s"].tolist() == [truth[k]["clip_end_s"] for k in keys]
    assert batch["height"].dtype == torch.int64 and batch["height"].tolist() == [64] * b
    for i, (key, t) in enumerate(zip(keys, frames)):
        stored, r = truth[key], t - 1
        assert batch["key_tokens"][i].numpy().tobytes() == stored["key_tokens"].tobytes()
        assert batch["residual_features"][i, :r].numpy().tobytes() == stored["residual_features"].tobytes()
        assert batch["frame_tokens"][i, :t].numpy().tobytes() == stored["frame_tokens"].tobytes()
        assert not batch["residual_features"][i, r:].any() and not batch["frame_tokens"][i, t:].any()
        assert batch["residual_mask"][i].tolist() == [True] * r + [False] * (r_max - r)
        assert batch["frame_mask"][i].tolist() == [True] * t + [False] * (t_max - t)
        assert batch["frame_indices"][i].tolist() == stored["frame_indices"] + [-1] * (t_max - t)
    return frames


@pytest.mark.parametrize("fmt", FORMATS)
def test_iter_torch_batches_with_collate_tokens(fmt: str, datasets: dict[str, Path], truth: dict[str, Any]) -> None:
    ds = vtok.read_tokens(str(datasets[fmt]))
    batches = list(ds.iter_torch_batches(collate_fn=vtok.collate_tokens, batch_size=4))
    frames = [_check_collated(batch, truth) for batch in batches]
    assert sorted(k for batch in batches for k in batch["sample_key"]) == sorted(truth)
    assert any(len(set(f)) > 1 for f in frames)  # some batch did pad clips of different T


@pytest.mark.parametrize("fmt", FORMATS)
def test_dataloader_with_collate_tokens(fmt: str, datasets: dict[str, Path], truth: dict[str, Any]) -> None:
    loader = torch.utils.data.DataLoader(TokenIterable(str(datasets[fmt])), batch_size=4,
                                         collate_fn=vtok.collate_tokens)
    batches = list(loader)
    frames = [_check_collated(batch, truth) for batch in batches]
    assert [len(f) for f in frames] == [4, 2] and any(len(set(f)) > 1 for f in frames)
    assert batches[0]["schema_version"] == ["1"] * 4


def test_ray_and_dataloader_batches_of_the_same_rows_are_equal(datasets: dict[str, Path]) -> None:
    keys = sorted(vtok.read_tokens(str(datasets["parquet"])).take_all(), key=lambda r: r["sample_key"])
    ray_batch = vtok.read_tokens(str(datasets["webdataset"])).sort("sample_key").take_batch(6)
    samples = sorted(TokenIterable(str(datasets["parquet"])), key=lambda s: s["sample_key"])
    a, b = vtok.collate_tokens(ray_batch), vtok.collate_tokens(samples)
    assert a["sample_key"] == b["sample_key"] == [r["sample_key"] for r in keys]
    for name, value in a.items():
        if isinstance(value, torch.Tensor):
            assert value.dtype == b[name].dtype and torch.equal(value, b[name]), name
        else:
            assert value == b[name], name


def test_collate_tokens_columns_and_empty_residuals() -> None:
    rows = [{"sample_key": "a", "key_tokens": np.ones((4, 2), np.float32), "residual_features": np.zeros((0, 2), np.float32),
             "frame_indices": [0], "frame_tokens": np.ones((1, 4, 2), np.float32)},
            {"sample_key": "b", "key_tokens": np.ones((4, 2), np.float32), "residual_features": [],
             "frame_indices": [0], "frame_tokens": np.ones((1, 4, 2), np.float32)}]
    batch = vtok.collate_tokens(rows, columns=["key_tokens", "residual_features"])
    assert set(batch) == {"sample_key", "key_tokens", "residual_features", "residual_mask"}
    assert batch["residual_features"].shape == (2, 0, 2) and batch["residual_mask"].shape == (2, 0)
    rows[1]["key_tokens"] = np.ones((9, 2), np.float32)
    with pytest.raises(AssertionError, match="key_tokens: one shape per batch"):
        vtok.collate_tokens(rows)


def test_the_readme_training_loop_runs_on_both_formats(datasets: dict[str, Path]) -> None:
    for fmt in FORMATS:
        uri = str(datasets[fmt])
        # --- the README's loop, verbatim ---
        model = torch.nn.TransformerEncoderLayer(d_model=64, nhead=4, batch_first=True)  # D = 64 here
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        ds = vtok.read_tokens(uri)
        for batch in ds.iter_torch_batches(collate_fn=vtok.collate_tokens, batch_size=4):
            key, res = batch["key_tokens"], batch["residual_features"]  # [B, S, D], [B, R_max, D]
            tokens = torch.cat([key, res], dim=1)  # [B, S + R_max, D]: VTok's S + R tokens per clip
            real = torch.cat([torch.ones(key.shape[:2], dtype=torch.bool), batch["residual_mask"]], dim=1)
            out = model(tokens, src_key_padding_mask=~real)  # padded residual steps are ignored
            loss = out[real].pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        # --- end of the loop ---
        assert torch.isfinite(loss)


# --- TokenIterable: both formats, seeded epochs, every sample once across ranks x workers ---------------

def _keys(ds: torch.utils.data.IterableDataset, workers: int = 0) -> list[str]:
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers)
    return [s["sample_key"] for s in loader]


@pytest.mark.parametrize(("world_size", "workers", "seed"), [(2, 2, None), (2, 2, 3), (3, 0, 3), (1, 2, None)])
def test_every_sample_once_across_ranks_and_workers(
    datasets: dict[str, Path], truth: dict[str, Any], world_size: int, workers: int, seed: int | None
) -> None:
    # 3 shards: 2 ranks x 2 workers = 4 readers split samples by position; 3 readers split the shards.
    assert len(shard_uris(str(datasets["webdataset"]))) == 3
    for fmt in FORMATS:
        per_rank = []
        for rank in range(world_size):
            ds = TokenIterable(str(datasets[fmt]), seed=seed, rank=rank, world_size=world_size)
            ds.set_epoch(1)
            per_rank.append(_keys(ds, workers))
        everything = [k for keys in per_rank for k in keys]
        assert sorted(everything) == sorted(truth), (fmt, per_rank)
        assert all(per_rank), per_rank  # every rank got work


def test_seeded_epochs_shuffle_reproducibly(datasets: dict[str, Path]) -> None:
    uri = str(datasets["parquet"])
    stable = _keys(TokenIterable(uri))
    assert stable == sorted(stable)  # no seed: the dataset's own order (shards hold sorted keys)

    def epoch_order(seed: int, epoch: int) -> list[str]:
        ds = TokenIterable(uri, seed=seed)
        ds.set_epoch(epoch)
        return _keys(ds)

    orders = [epoch_order(0, epoch) for epoch in range(4)]
    assert all(sorted(order) == stable for order in orders)
    # 3 shards of 2 give only 48 orders, so two epochs may draw the same one (seed 0 does for epochs 0 and 1).
    assert orders[1] != orders[2] and len({tuple(o) for o in orders}) >= 3 and stable not in orders
    assert epoch_order(0, 2) == orders[2] and epoch_order(0, 1) == orders[1]
    assert epoch_order(1, 1) != orders[1]


def test_parquet_and_webdataset_give_the_same_samples(datasets: dict[str, Path]) -> None:
    parquet, wds = (TokenIterable(str(datasets[fmt]), seed=7) for fmt in FORMATS)
    parquet.set_epoch(2)
    wds.set_epoch(2)
    a, b = list(parquet), list(wds)
    assert [s["sample_key"] for s in a] == [s["sample_key"] for s in b]  # same seed, same order too
    for x, y in zip(a, b):
        assert x.keys() == y.keys(), x["sample_key"]
        for name, value in x.items():
            if isinstance(value, torch.Tensor):
                assert value.dtype == y[name].dtype and value.shape == y[name].shape, name
                assert value.numpy().tobytes() == y[name].numpy().tobytes(), name
            else:
                assert value == y[name], name
    assert isinstance(a[0]["key_tokens"], torch.Tensor) and len(a[0]["tokenizer_fingerprint"]) == 64
    assert sorted(tuple(s["residual_features"].shape) for s in a)[0] == (0, 64)  # the T=1 clip, in both formats


def test_token_iterable_rank_checks() -> None:
    from vtok.loader import _distributed

    assert _distributed(None, None) == (0, 1)
    assert _distributed(1, 2) == (1, 2)
    with pytest.raises(ValueError, match="rank 2 is not in 0..1"):
        _distributed(2, 2)


# --- validate_dataset follows schemas.token_shard.SCHEMA_VERSION ----------------------------------------

def test_validate_compares_the_manifest_with_the_schema_version_constant(
    datasets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import schemas.token_shard

    copy = tmp_path / "copy"
    shutil.copytree(datasets["webdataset"], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    assert validate_dataset(str(copy))[0] == []
    monkeypatch.setattr(schemas.token_shard, "SCHEMA_VERSION", "2")
    problems = validate_dataset(str(copy))[0]
    assert "manifest schema version '1' is not '2'" in problems
    (copy / "manifest.json").write_text(json.dumps(manifest | {"schema_version": "2"}))
    assert not [p for p in validate_dataset(str(copy))[0] if p.startswith("manifest schema version")]


def test_collate_tokens_pads_the_decoder_targets_in_their_dtypes() -> None:
    rng = np.random.default_rng(0)
    lowres = [rng.integers(0, 256, (t, 4, 4, 3), dtype=np.uint8) for t in (3, 1)]
    latents = [rng.standard_normal((2, 1, 2, 2), dtype=np.float32) for _ in range(2)]
    rows = [{"sample_key": k, "frames_lowres": f, "latents": z.tolist() if k == "b" else z}  # lists, as Ray rows
            for k, f, z in zip("ab", lowres, latents)]
    batch = vtok.collate_tokens(rows)
    assert batch["frames_lowres"].dtype == torch.uint8 and batch["frames_lowres"].shape == (2, 3, 4, 4, 3)
    assert batch["frames_lowres_mask"].tolist() == [[True] * 3, [True, False, False]]
    assert batch["frames_lowres"][0].numpy().tobytes() == lowres[0].tobytes()
    assert batch["frames_lowres"][1, :1].numpy().tobytes() == lowres[1].tobytes() and not batch["frames_lowres"][1, 1:].any()
    assert batch["latents"].dtype == torch.float32 and batch["latents"].shape == (2, 2, 1, 2, 2)
    assert batch["latents"].numpy().tobytes() == np.stack(latents).tobytes() and batch["latents_mask"].all()
