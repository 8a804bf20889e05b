"""The whole pipeline against a real S3 protocol server (moto on loopback), compared with a local run."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import fsspec
import numpy as np
import pytest
import requests

from pipelines.tokenize.clips import SourceConfig
from pipelines.tokenize.pipeline import TokenizeConfig, run_tokenize
from pipelines.tokenize.sink import SinkConfig
from vtok.dataset import read_manifest, read_shard, shard_uris, table_tensors, validate_dataset
from vtok.storage import StorageError
from vtok.video import DecodeConfig

TENSORS = ("key_tokens", "residual_features", "frame_tokens")


def _cfg(input_uri: str, output: str, **kw: object) -> TokenizeConfig:
    base = dict(input=input_uri, output=output, decode=DecodeConfig(fps=4.0, max_frames=8),
                sink=SinkConfig(rows_per_shard=4))
    base.update(kw)
    return TokenizeConfig(**base)  # type: ignore[arg-type]


def _by_video(uri: str) -> dict[str, dict[str, np.ndarray]]:
    """Tokens of a dataset keyed by the video's file name (sample keys differ between local and s3 URIs)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    if uri.rstrip("/").endswith("wds") or read_manifest(uri)["format"] == "webdataset":
        from vtok.dataset import iter_webdataset_shard

        for shard in shard_uris(uri):
            for sample in iter_webdataset_shard(shard):
                out[sample["source_uri"].rsplit("/", 1)[-1].split("#")[-1]] = {t: sample[t] for t in TENSORS}
        return out
    for shard in shard_uris(uri):
        table = read_shard(shard)
        tensors = table_tensors(table)
        for i, src in enumerate(table.column("source_uri").to_pylist()):
            out[src.rsplit("/", 1)[-1].split("#")[-1]] = {t: tensors[t][i] for t in TENSORS}
    return out


@pytest.fixture(scope="module")
def raw_bucket(s3_endpoint: str, shapes_corpus: Path) -> str:
    """s3://BUCKET/raw/plain (mp4s + manifest) and s3://BUCKET/raw/wds (a WebDataset tar of the same videos)."""
    import boto3

    bucket = "vtok-raw-corpus"
    boto3.client("s3").create_bucket(Bucket=bucket)
    fs = fsspec.filesystem("s3")
    fs.put(str(shapes_corpus) + "/", f"{bucket}/raw/plain/", recursive=True)
    buf = io.BytesIO()
    lines = [json.loads(x) for x in (shapes_corpus / "manifest.jsonl").read_text().splitlines()]
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for row in lines:
            name = Path(row["uri"]).name
            stem = name.rsplit(".", 1)[0]
            for member, data in ((name, (shapes_corpus / row["uri"]).read_bytes()),
                                 (f"{stem}.json", json.dumps({"caption": row["caption"]}).encode())):
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    fs.pipe(f"{bucket}/raw/wds/shard-00000.tar", buf.getvalue())
    return bucket


@pytest.fixture(scope="module")
def local_tokens(ray_local, shapes_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("local-tokens")
    run_tokenize(_cfg(str(shapes_corpus / "manifest.jsonl"), str(out)), progress=False)
    return _by_video(str(out))


def _assert_same_tokens(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b) and len(a) == 6
    for name in a:
        for t in TENSORS:
            assert a[name][t].tobytes() == b[name][t].tobytes(), (name, t)


def test_s3_manifest_to_s3_parquet_equals_local(ray_local, raw_bucket: str, local_tokens: dict) -> None:
    out = f"s3://{raw_bucket}/tokens/parquet"
    summary = run_tokenize(_cfg(f"s3://{raw_bucket}/raw/plain/manifest.jsonl", out), progress=False)
    assert summary.clips_out == 6 and summary.quarantined == 0
    _assert_same_tokens(_by_video(out), local_tokens)
    problems, counts = validate_dataset(out)
    assert problems == [] and counts["rows"] == 6
    captions = read_shard(shard_uris(out)[0]).column("caption").to_pylist()
    assert all(c and "object" in c for c in captions)


def test_s3_webdataset_tars_to_s3_webdataset_equals_local(ray_local, raw_bucket: str, local_tokens: dict) -> None:
    out = f"s3://{raw_bucket}/tokens/wds"
    summary = run_tokenize(_cfg(f"s3://{raw_bucket}/raw/wds", out, format="webdataset"), progress=False)
    assert summary.clips_out == 6
    manifest = read_manifest(out)
    assert manifest["format"] == "webdataset" and all(s["file"].endswith(".tar") for s in manifest["shards"])
    _assert_same_tokens(_by_video(out), local_tokens)
    assert validate_dataset(out)[0] == []
    # Captions came from the KEY.json sidecars.
    from vtok.dataset import iter_webdataset_shard

    sample = next(iter(iter_webdataset_shard(shard_uris(out)[0])))
    assert "object" in sample["caption"] and sample["source_uri"].startswith(f"s3://{raw_bucket}/raw/wds/")


def test_s3_folder_of_mp4s(ray_local, raw_bucket: str, local_tokens: dict) -> None:
    out = f"s3://{raw_bucket}/tokens/folder"
    summary = run_tokenize(_cfg(f"s3://{raw_bucket}/raw/plain/videos", out), progress=False)
    assert summary.clips_out == 6
    _assert_same_tokens(_by_video(out), local_tokens)


def test_manifest_with_clip_ranges(ray_local, raw_bucket: str, shapes_corpus: Path) -> None:
    first = sorted((shapes_corpus / "videos").iterdir())[0].name
    csv = "uri,caption,clip_start_s,clip_end_s\n" + "".join(
        f"videos/{first},part {i},{start},{end}\n" for i, (start, end) in enumerate([(0.0, 1.0), (1.0, 2.0)])
    )
    fsspec.filesystem("s3").pipe(f"{raw_bucket}/raw/plain/ranges.csv", csv.encode())
    out = f"s3://{raw_bucket}/tokens/ranges"
    run_tokenize(_cfg(f"s3://{raw_bucket}/raw/plain/ranges.csv", out), progress=False)
    table = read_shard(shard_uris(out)[0]).sort_by("clip_start_s")
    assert table.column("clip_start_s").to_pylist() == [0.0, 1.0]
    assert table.column("clip_end_s").to_pylist() == [1.0, 2.0]
    # 8 fps source, 4 fps sampling: frames 0,2,4,6 then 8,10,12,14.
    assert table.column("frame_indices").to_pylist() == [[0, 2, 4, 6], [8, 10, 12, 14]]
    keys = table.column("sample_key").to_pylist()
    assert len(set(keys)) == 2 and keys[0].endswith("_000000000_000001000")


def test_fixed_length_clip_splitting(ray_local, raw_bucket: str) -> None:
    out = f"s3://{raw_bucket}/tokens/split"
    summary = run_tokenize(
        _cfg(f"s3://{raw_bucket}/raw/plain/videos", out, source=SourceConfig(clip_length_s=1.0)), progress=False
    )
    # Six 2 s videos cut into 1 s clips.
    assert summary.clips_out == 12
    tables = [read_shard(u) for u in shard_uris(out)]
    starts = sorted(x for t in tables for x in t.column("clip_start_s").to_pylist())
    assert starts == [0.0] * 6 + [1.0] * 6


def test_validate_reports_tampering_and_strays(ray_local, raw_bucket: str, shapes_corpus: Path) -> None:
    out = f"s3://{raw_bucket}/tokens/tamper"
    run_tokenize(_cfg(f"s3://{raw_bucket}/raw/plain/manifest.jsonl", out), progress=False)
    fs = fsspec.filesystem("s3")
    first = shard_uris(out)[0]
    data = bytearray(fs.cat(first))
    data[-100] ^= 0xFF
    fs.pipe(first, bytes(data))
    fs.pipe(f"{raw_bucket}/tokens/tamper/shards/part-00099.parquet", b"stray")
    problems, _ = validate_dataset(out)
    assert "shards/part-00000.parquet: sha256 differs from the manifest (corrupted or replaced)" in problems
    assert "shards/part-00099.parquet: stray shard, not in the manifest" in problems


def test_missing_bucket_fails_before_work(ray_local, s3_endpoint: str, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="s3://no-such-bucket-vtok/raw: the bucket does not exist"):
        run_tokenize(_cfg("s3://no-such-bucket-vtok/raw", str(tmp_path / "out")), progress=False)
    assert not (tmp_path / "out").exists()


def test_output_to_missing_bucket_fails_before_work(ray_local, raw_bucket: str, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="s3://no-such-bucket-vtok/tokens"):
        run_tokenize(_cfg(f"s3://{raw_bucket}/raw/plain/manifest.jsonl", "s3://no-such-bucket-vtok/tokens"),
                     progress=False)


def test_wrong_endpoint_fails_before_work(ray_local, raw_bucket: str, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=f"s3://{raw_bucket}/raw/plain: cannot reach the storage endpoint"):
        run_tokenize(_cfg(f"s3://{raw_bucket}/raw/plain", str(tmp_path / "o"), endpoint_url="http://127.0.0.1:9"),
                     progress=False)


def test_bad_credentials_fail_before_work(ray_local, raw_bucket: str, s3_endpoint: str, tmp_path: Path) -> None:
    # Make the server check signatures against its IAM users: the test's keys belong to none.
    requests.post(f"{s3_endpoint}/moto-api/reset-auth", data=b"0", timeout=5)
    try:
        with pytest.raises(StorageError, match=f"s3://{raw_bucket}/raw/plain: access refused"):
            run_tokenize(_cfg(f"s3://{raw_bucket}/raw/plain", str(tmp_path / "o")), progress=False)
    finally:
        requests.post(f"{s3_endpoint}/moto-api/reset-auth", data=b"inf", timeout=5)


def test_model_directory_on_s3(ray_local, raw_bucket: str, tiny_clip_dir: Path) -> None:
    from vtok.tokenizer import VTokTokenizer
    from vtok.tokenizer_spec import TokenizerConfig

    fsspec.filesystem("s3").put(str(tiny_clip_dir) + "/", f"{raw_bucket}/models/tiny-clip/", recursive=True)
    remote = VTokTokenizer(TokenizerConfig(encoder=f"s3://{raw_bucket}/models/tiny-clip"))
    local = VTokTokenizer(TokenizerConfig(encoder=str(tiny_clip_dir)))
    assert remote.fingerprint == local.fingerprint
