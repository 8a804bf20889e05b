"""The WebDataset token layout: tars round-trip through iter_tar, and validation checks every sample."""

from __future__ import annotations

import io
import tarfile
from typing import Any

import numpy as np

from schemas.token_shard import column_to_tensors, token_schema
from schemas.webdataset import (
    IDENTITY_FIELD,
    iter_tar,
    sample_members,
    samples_to_table,
    tar_member_info,
    validate_samples,
)


def _sample(i: int, s: int = 4, t: int = 4, d: int = 8) -> dict[str, Any]:
    rng = np.random.default_rng(i)
    return {
        "sample_key": f"k{i:04d}",
        "source_uri": f"/v/{i}.mp4",
        "caption": "a red circle",
        "frame_indices": list(range(t)),
        "key_tokens": rng.standard_normal((s, d), dtype=np.float32),
        "residual_features": rng.standard_normal((t - 1, d), dtype=np.float32),
        IDENTITY_FIELD: "a" * 64,
    }


def _tar(samples: list[dict[str, Any]]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for sample in samples:
            for name, data in sample_members(sample):
                tar.addfile(tar_member_info(name, len(data)), io.BytesIO(data))
    buf.seek(0)
    return buf


def test_a_tar_round_trips_with_schema_column_names() -> None:
    samples = [_sample(i) for i in range(3)]
    back = list(iter_tar(_tar(samples)))
    assert [s["sample_key"] for s in back] == ["k0000", "k0001", "k0002"]
    for ours, theirs in zip(samples, back):
        assert set(theirs) == set(ours)
        assert theirs["key_tokens"].tobytes() == ours["key_tokens"].tobytes()
        assert theirs["residual_features"].tobytes() == ours["residual_features"].tobytes()
    assert validate_samples(back, grid=2, stride=1, identity_sha256="a" * 64) == []


def test_every_sample_is_checked_after_a_bad_one() -> None:
    samples = [_sample(i) for i in range(4)]
    del samples[0]["residual_features"]  # bad first sample: a column missing
    samples[2]["key_tokens"] = samples[2]["key_tokens"][:3]  # bad third sample: S=3, not grid*grid=4
    problems = validate_samples(list(iter_tar(_tar(samples))), grid=2, stride=1, identity_sha256="a" * 64)
    assert problems == ["k0000: residual_features missing",
                        "k0002: key_tokens has 3 tokens, expected S=4"]


def test_an_identity_mismatch_does_not_hide_shape_problems() -> None:
    samples = [_sample(i) for i in range(2)]
    samples[1]["residual_features"] = samples[1]["residual_features"][:1]
    problems = validate_samples(list(iter_tar(_tar(samples))), grid=2, stride=1, identity_sha256="b" * 64)
    assert len(problems) == 2 and problems[0].startswith("samples made with other settings")
    assert problems[1] == "k0001: residual_features has 1 rows, expected R=3"


def test_samples_become_a_schema_v1_table_typed_as_parquet() -> None:
    samples = [_sample(i) | {"clip_start_s": 0.0, "clip_end_s": 1.0, "source_fps": 8.0, "height": 64, "width": 64,
                             "attributes": None} for i in range(3)]
    table = samples_to_table(list(iter_tar(_tar(samples))))
    assert table.schema.equals(token_schema([]))  # no optional value anywhere: no optional column
    samples[1]["frame_tokens"] = np.ones((4, 4, 8), np.float32)  # only one sample has it: nulls elsewhere
    samples[2]["attributes"] = '{"count": 1}'
    table = samples_to_table(list(iter_tar(_tar(samples))))
    assert table.schema.equals(token_schema(["frame_tokens", "attributes"]))
    assert table.column("attributes").to_pylist() == [None, None, '{"count": 1}']
    frames = column_to_tensors(table.column("frame_tokens"), 3)
    assert frames[0] is None and frames[2] is None and frames[1].tobytes() == samples[1]["frame_tokens"].tobytes()
    keys = column_to_tensors(table.column("key_tokens"), 2)
    assert all(k.tobytes() == s["key_tokens"].tobytes() for k, s in zip(keys, samples))


def test_targets_round_trip_in_their_dtypes_and_are_validated() -> None:
    rng = np.random.default_rng(5)
    samples = [_sample(i) | {"clip_start_s": 0.0, "clip_end_s": 1.0, "source_fps": 8.0, "height": 64, "width": 64,
                             "frames_lowres": rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8),
                             "latents": rng.standard_normal((4, 2, 2, 2), dtype=np.float32)} for i in range(2)]
    tar = _tar(samples)
    with tarfile.open(fileobj=io.BytesIO(tar.getvalue())) as t:
        names = t.getnames()
    assert "k0000.frames_lowres.npy" in names and "k0000.latents.npy" in names
    back = list(iter_tar(tar))
    for ours, theirs in zip(samples, back):
        for column, dtype in (("frames_lowres", np.uint8), ("latents", np.float32)):
            assert theirs[column].dtype == dtype and theirs[column].tobytes() == ours[column].tobytes()
    table = samples_to_table(back)
    assert table.schema.equals(token_schema(["latents", "frames_lowres"]))
    lowres = column_to_tensors(table.column("frames_lowres"), 4)
    assert lowres[1].dtype == np.uint8 and lowres[1].tobytes() == samples[1]["frames_lowres"].tobytes()
    expected = {"frames_lowres": [8, 8, 3], "latents": [4, 2, 2, 2]}
    assert validate_samples(back, grid=2, stride=1, expected_targets=expected) == []
    back[1]["frames_lowres"] = back[1]["frames_lowres"][:, :4, :4]
    assert validate_samples(back, grid=2, stride=1, expected_targets=expected) == [
        "k0001: frames_lowres has shape [4, 4, 4, 3], expected [4, 8, 8, 3] (T = its frame count)"]
