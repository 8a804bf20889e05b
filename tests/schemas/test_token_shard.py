from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from schemas.npy import from_npy, to_npy
from schemas.token_shard import (
    META_FINGERPRINT,
    column_to_tensors,
    shard_metadata,
    tensors_to_arrow,
    token_schema,
    validate_table,
)


def _table(n: int = 3, t: int = 4, s: int = 4, d: int = 8, fingerprint: str = "f" * 64) -> pa.Table:
    rng = np.random.default_rng(0)
    schema = token_schema(["frame_tokens"]).with_metadata(
        shard_metadata(fingerprint, {"grid": int(s**0.5), "residual_stride": 1}, "0.1.0")
    )
    cols = {
        "sample_key": [f"k{i}" for i in range(n)],
        "source_uri": [f"/v/{i}.mp4" for i in range(n)],
        "caption": [None] + ["a red circle"] * (n - 1),
        "clip_start_s": [0.0] * n,
        "clip_end_s": [2.0] * n,
        "source_fps": [8.0] * n,
        "frame_indices": [list(range(t))] * n,
        "height": [64] * n,
        "width": [64] * n,
    }
    arrays = [pa.array(cols[f.name], f.type) for f in schema if f.name in cols]
    arrays.append(tensors_to_arrow([rng.standard_normal((s, d), dtype=np.float32) for _ in range(n)], 2))
    arrays.append(tensors_to_arrow([rng.standard_normal((t - 1, d), dtype=np.float32) for _ in range(n)], 2))
    arrays.append(tensors_to_arrow([rng.standard_normal((t, s, d), dtype=np.float32) for _ in range(n)], 3))
    return pa.Table.from_arrays(arrays, schema=schema)


def test_nested_lists_roundtrip_exactly_with_ragged_shapes() -> None:
    rng = np.random.default_rng(1)
    tensors = [rng.standard_normal(shape, dtype=np.float32) for shape in [(3, 5), (0, 5), (7, 5), (1, 5)]]
    column = tensors_to_arrow(tensors, 2)
    assert column.type == pa.list_(pa.list_(pa.float32()))
    back = column_to_tensors(column, 2)
    for a, b in zip(tensors[:1] + tensors[2:], back[:1] + back[2:]):
        assert a.shape == b.shape and a.tobytes() == b.tobytes()
    assert back[1].shape[0] == 0
    # What any reader sees: plain nested lists of the exact float32 values.
    assert np.array(column[0].as_py(), np.float32).tobytes() == tensors[0].tobytes()


def test_three_d_tensors_roundtrip() -> None:
    a = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    (back,) = column_to_tensors(tensors_to_arrow([a], 3), 3)
    np.testing.assert_array_equal(a, back)


def test_npy_roundtrip_and_refuses_objects() -> None:
    a = np.arange(6, dtype=np.int64).reshape(2, 3)
    np.testing.assert_array_equal(from_npy(to_npy(a)), a)
    with pytest.raises(ValueError):
        to_npy(np.array([{"x": 1}], dtype=object))


def test_valid_table_passes() -> None:
    assert validate_table(_table(), expected_fingerprint="f" * 64) == []


def test_fingerprint_mismatch_reported() -> None:
    problems = validate_table(_table(fingerprint="a" * 64), expected_fingerprint="b" * 64)
    assert problems == ["tokenizer fingerprint aaaaaaaaaaaa differs from the dataset's bbbbbbbbbbbb"]


def test_missing_metadata_and_column_reported() -> None:
    table = _table().drop_columns(["source_fps"]).replace_schema_metadata({})
    problems = validate_table(table)
    assert "schema version is 'missing', expected '1'" in problems
    assert "tokenizer fingerprint missing from file metadata" in problems
    assert "required column 'source_fps' missing" in problems


def test_wrong_type_and_unexpected_column_reported() -> None:
    table = _table()
    table = table.set_column(table.schema.get_field_index("height"), "height", pa.array([1.0] * 3))
    table = table.append_column("extra", pa.array([1, 2, 3]))
    problems = validate_table(table)
    assert "column 'height' has type double, expected int32" in problems
    assert "unexpected column 'extra'" in problems


def test_duplicate_keys_and_wrong_token_counts_reported() -> None:
    good = _table(n=2)
    bad = _table(n=2, s=9, t=4)
    table = pa.concat_tables([good, bad.replace_schema_metadata(good.schema.metadata)])
    problems = validate_table(table)
    assert "2 duplicate sample_key values" in problems
    assert any("key_tokens has 9 tokens, expected S=4" in p for p in problems)


def test_residual_count_must_match_frames_and_stride() -> None:
    table = _table(n=1, t=4)
    meta = dict(table.schema.metadata)
    meta[b"vtok.tokenizer_config"] = b'{"grid": 2, "residual_stride": 2}'
    problems = validate_table(table.replace_schema_metadata(meta))
    assert problems == ["k0: residual_features has 3 rows, expected R=1 for T=4 and stride 2"]


def test_unknown_optional_column_refused() -> None:
    with pytest.raises(ValueError, match="unknown optional token columns"):
        token_schema(["nope"])


def test_metadata_keys() -> None:
    meta = shard_metadata("abc", {"grid": 4}, "0.1.0")
    assert meta[META_FINGERPRINT] == b"abc"


def _with_targets(table: pa.Table, lowres: list[np.ndarray], latents: list[np.ndarray]) -> pa.Table:
    schema = token_schema(["frame_tokens", "latents", "frames_lowres"]).with_metadata(table.schema.metadata)
    table = table.append_column(schema.field("latents"), tensors_to_arrow(latents, 4))
    table = table.append_column(schema.field("frames_lowres"), tensors_to_arrow(lowres, 4, pa.uint8()))
    return table.cast(schema)


def test_uint8_frames_and_float_latents_roundtrip_exactly_in_their_own_dtypes() -> None:
    rng = np.random.default_rng(2)
    frames = [rng.integers(0, 256, (t, 8, 8, 3), dtype=np.uint8) for t in (4, 1, 6)]
    column = tensors_to_arrow(frames, 4, pa.uint8())
    assert column.type == token_schema(["frames_lowres"]).field("frames_lowres").type
    back = column_to_tensors(column, 4)
    assert [b.dtype for b in back] == [np.uint8] * 3
    assert all(a.shape == b.shape and a.tobytes() == b.tobytes() for a, b in zip(frames, back))
    latents = [rng.standard_normal((4, 2, 3, 3), dtype=np.float32)]
    (got,) = column_to_tensors(tensors_to_arrow(latents, 4), 4)
    assert got.dtype == np.float32 and got.tobytes() == latents[0].tobytes()
    # What any reader sees: nested lists of the exact values.
    assert np.array(column[2].as_py(), np.uint8).tobytes() == frames[2].tobytes()


def test_targets_are_checked_against_the_frame_count_and_the_manifest() -> None:
    rng = np.random.default_rng(3)
    lowres = [rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8) for _ in range(3)]
    latents = [rng.standard_normal((4, 2, 2, 2), dtype=np.float32) for _ in range(3)]
    expected = {"frames_lowres": [8, 8, 3], "latents": [4, 2, 2, 2]}
    assert validate_table(_with_targets(_table(), lowres, latents), expected_targets=expected) == []
    assert validate_table(_with_targets(_table(), lowres, latents)) == []  # no manifest record: self-consistent
    lowres[1], latents[2] = lowres[1][:3], latents[2][:, :1]
    problems = validate_table(_with_targets(_table(), lowres, latents), expected_targets=expected)
    assert problems == ["k1: frames_lowres has shape [3, 8, 8, 3], expected [4, 8, 8, 3] (T = its frame count)",
                        "k2: latents has shape [4, 1, 2, 2], expected [4, 2, 2, 2]"]
    assert validate_table(_table(), expected_targets={"latents": [4, 2, 2, 2]}) == [
        f"k{i}: latents missing (the dataset records it with shape [4, 2, 2, 2])" for i in range(3)]
    problems = validate_table(_with_targets(_table(), lowres[:1] * 3, latents[:1] * 3), expected_targets={})
    assert problems[:2] == ["k0: frames_lowres present but the dataset was made without it",
                            "k0: latents present but the dataset was made without it"]
