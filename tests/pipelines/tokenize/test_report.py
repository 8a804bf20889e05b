"""The run report: report.json agrees with the manifest and the quarantine; report.html shows the charts."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jobs.cli import main
from jobs.tokenize import load_tokenize_config, run
from pipelines.tokenize.report import read_report
from vtok.dataset import read_manifest
from vtok.secrets import REDACTED, redact

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@pytest.fixture(scope="module")
def with_errors(tmp_path_factory: pytest.TempPathFactory, shapes_corpus: Path) -> Path:
    """Three good videos, an empty file and a file that is not a video."""
    folder = tmp_path_factory.mktemp("mixed")
    for p in sorted((shapes_corpus / "videos").glob("*.mp4"))[:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "garbage.mp4").write_bytes(b"this is not a video" * 100)
    return folder


@pytest.fixture(scope="module")
def first_run(ray_local, with_errors: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("report") / "tokens"
    # Credentials in storage_options must never reach the report (local paths ignore these options).
    cfg = load_tokenize_config([
        f"input={with_errors}", f"output={out}", "decode.fps=4", "sink.rows_per_shard=2",
        f"storage_options={{key: AKIAABCDEFGHIJKLMNOP, secret: '{SECRET}', endpoint_url: 'http://minio:9000'}}",
    ])
    return out, run(cfg, progress=False)


def test_counts_match_the_manifest_and_errors_match_the_quarantine(first_run) -> None:
    out, summary = first_run
    report = json.loads((out / "report.json").read_text())
    manifest = read_manifest(str(out))
    c = report["counts"]
    assert c["clips_out"] == manifest["rows"] == 3 and c["videos_in"] == 5
    assert c["quarantined"] == manifest["quarantined"] == 2
    assert c["clips_this_run"] == 5 and c["encoded_this_run"] == 3 and c["quarantined_this_run"] == 2
    assert c["shards_planned"] == c["shards_committed"] == c["shards_written"] == 3 and c["complete"]
    # A shard whose inputs all failed is committed with a quarantine file and no token file.
    assert c["shard_files"] == len(manifest["shards"])
    quarantine = [r for f in sorted((out / "quarantine").iterdir()) for r in pq.read_table(f).to_pylist()]
    assert report["errors"]["by_reason"] == dict(Counter(r["reason"] for r in quarantine)) == {
        "not_a_video": 1, "zero_bytes": 1}
    samples = report["errors"]["samples"]
    assert samples["zero_bytes"][0]["source_uri"].endswith("empty.mp4")
    assert samples["not_a_video"][0]["source_uri"].endswith("garbage.mp4")
    assert report["bytes"]["dataset_shard_bytes"] == sum(s["bytes"] for s in manifest["shards"])
    assert report["bytes"]["written_this_run"] == report["bytes"]["dataset_shard_bytes"]
    assert report["fingerprint"] == manifest["fingerprint"] == summary.fingerprint


def test_tokens_stages_and_timeline(first_run) -> None:
    out, summary = first_run
    report = read_report(str(out))
    t = report["tokens"]
    # 16 frames at 8 fps = 2 s -> 8 frames at 4 fps: S + R = 16 + 7 and T * S = 128 for every clip.
    assert t["histogram"] == {"vtok": [[23, 3]], "frame_sampling": [[128, 3]]}
    assert t["vtok_per_clip"]["mean"] == t["dataset_mean_vtok_per_clip"] == 23.0
    assert t["dataset_mean_frame_sampling_per_clip"] == 128.0 and t["vtok_total_this_run"] == 69
    st = report["stages"]
    assert st["decode"]["clips"] == 5 and st["encode"]["clips"] == 3 and st["write"]["shards"] == 3
    for name in ("decode", "encode", "write"):
        assert st[name]["busy_s"] > 0 and st[name]["clips_per_busy_s"] > 0
    assert st["encode"]["per_clip_s"]["count"] == 3
    assert report["time"]["wall_s"] == pytest.approx(summary.wall_time_s)
    timeline = report["throughput"]["timeline"]
    assert timeline[-1][1] == 5 and all(a[0] <= b[0] and a[1] <= b[1] for a, b in zip(timeline, timeline[1:]))
    assert report["sizing"]["decode_cpus_per_encoder"] > 0


def test_config_is_kept_with_credentials_redacted(first_run) -> None:
    out, _ = first_run
    text = (out / "report.json").read_text()
    config = json.loads(text)["config"]
    assert config["input"].endswith("mixed0") and config["decode"]["fps"] == 4.0
    assert config["tokenizer"]["frame_tokens"] is True
    assert config["storage_options"] == {"key": REDACTED, "secret": REDACTED, "endpoint_url": "http://minio:9000"}
    html = (out / "report.html").read_text()
    for doc in (text, html):
        assert SECRET not in doc and "AKIAABCDEFGHIJKLMNOP" not in doc


def test_html_is_self_contained_with_the_charts(first_run) -> None:
    out, _ = first_run
    html = (out / "report.html").read_text()
    assert html.count("<svg") == 4  # throughput over time, stage busy time, tokens per clip, errors
    for title in ("Throughput over time", "busy time per stage", "VTok S+R vs frame sampling T*S",
                  "Errors by reason", "not_a_video", "zero_bytes"):
        assert title in html
    # No scripts and nothing fetched from elsewhere: it opens offline, from a bucket or an attachment.
    # Images are inline (data: URIs) and links point at the dataset's own files, relative to the page.
    assert "<script" not in html
    assert all(src.startswith("data:image/png;base64,") for src in re.findall(r'src="([^"]*)"', html))
    assert all(href.startswith("shards/") for href in re.findall(r'href="([^"]*)"', html))


def test_the_page_lists_shards_encoder_command_and_environment(first_run) -> None:
    import shlex

    out, _ = first_run
    report = read_report(str(out))
    manifest = read_manifest(str(out))
    assert report["shard_files"] == [{k: f[k] for k in ("file", "rows", "bytes")} for f in manifest["shards"]]
    html = (out / "report.html").read_text()
    for f in manifest["shards"]:
        assert f'<a href="{f["file"]}">' in html
    assert report["encoder"].startswith("the built-in tiny CLIP (model_type clip_vision_model, hidden_size 64")
    assert {"ray", "pyarrow", "torch"} <= set(report["environment"]["versions"])
    assert report["environment"]["machine"]["cpus"] >= 1
    # The command reproduces the config: loaded back, it is the same job (credentials stay redacted).
    words = shlex.split(report["command"])
    assert words[:2] == ["vtok", "tokenize"] and "sink.rows_per_shard=2" in words and "decode.fps=4.0" not in words
    again = load_tokenize_config([w for w in words[2:] if not w.startswith("storage_options=")])
    assert again.input == str(out.parents[1] / "mixed0") or again.input.endswith("mixed0")
    assert again.output == str(out) and again.sink.rows_per_shard == 2
    assert SECRET not in report["command"]
    # Key frames of the first clips, inline: 3 good clips of 64x64 (the tiny CLIP's input size).
    assert len(report["key_frames"]) == 3 and html.count('src="data:image/png;base64,') == 3


def test_count_axes_have_integer_ticks() -> None:
    from pipelines.report_html import nice_ticks

    assert nice_ticks(0, 3, integer=True) == [0, 1, 2, 3]
    assert nice_ticks(0, 7, integer=True) == [0, 2, 4, 6, 8]
    assert all(float(t).is_integer() for t in nice_ticks(0, 13, integer=True))
    assert nice_ticks(0, 2.2) == [0, 0.5, 1.0, 1.5, 2.0, 2.5]


def test_png_data_uri_is_a_real_png() -> None:
    import base64
    import io

    import av
    import numpy as np

    from pipelines.report_html import png_data_uri

    image = np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    data = base64.b64decode(png_data_uri(image).split(",", 1)[1])
    with av.open(io.BytesIO(data), format="png_pipe") as container:
        frame = next(container.decode(video=0))
    assert np.array_equal(frame.to_ndarray(format="rgb24"), image)


def test_rerun_with_nothing_to_do_keeps_the_working_run(first_run, with_errors: Path, tmp_path: Path) -> None:
    import shutil

    # A copy, so the other tests keep the first run's report.
    out = tmp_path / "tokens"
    shutil.copytree(first_run[0], out)
    cfg = load_tokenize_config([f"input={with_errors}", f"output={out}", "decode.fps=4", "sink.rows_per_shard=2"])
    run(cfg, progress=False)
    report = read_report(str(out / "report.json"))
    c = report["counts"]
    # Dataset-wide counts are current; the charted run is the first one, which did the work.
    assert c["clips_out"] == 3 and c["quarantined"] == 2 and c["clips_this_run"] == 5 and c["shards_written"] == 3
    assert [r["clips"] for r in report["runs"]] == [5, 0] and report["shown_run"] == 0
    assert report["errors"]["by_reason"] == {"not_a_video": 1, "zero_bytes": 1}
    assert "no clips were tokenized in this run" not in (out / "report.html").read_text()


def test_vtok_report_prints_a_summary(first_run, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out, _ = first_run
    assert main(["report", str(out)]) == 0
    text = capsys.readouterr().out
    assert "clips              3 out of 5 inputs, 2 quarantined" in text
    assert "errors             not_a_video 1, zero_bytes 1" in text
    assert "VTok S+R mean 23.0; frame sampling T*S mean 128.0; 5.6x fewer" in text
    assert "decode CPUs keep one encoder busy" in text
    assert main(["report", str(tmp_path)]) == 2
    assert "no report.json" in capsys.readouterr().err


def test_report_goes_to_object_storage(ray_local, with_errors: Path, s3_bucket: str) -> None:
    import fsspec

    out = f"s3://{s3_bucket}/tokens"
    run(load_tokenize_config([f"input={with_errors}", f"output={out}", "decode.fps=4"]), progress=False)
    fs = fsspec.filesystem("s3")
    assert fs.exists(f"{s3_bucket}/tokens/report.html")
    report = read_report(out)
    assert report["counts"]["clips_out"] == 3 and report["errors"]["by_reason"] == {"not_a_video": 1, "zero_bytes": 1}


def test_redact() -> None:
    value = {
        "storage_options": {"key": "AKIAABCDEFGHIJKLMNOP", "secret": "x", "token": "", "anon": False,
                            "client_kwargs": {"aws_secret_access_key": "y", "region_name": "eu-west-3"}},
        "endpoint": "https://user:pass@minio:9000/bucket",
        "notes": ["AKIAABCDEFGHIJKLMNOP in a list"],
        "password": "hunter2",
        "frame_tokens": True,
        "key_tokens_per_clip": 16,
        "nested": {"session_token": "z", "grid": 4},
    }
    assert redact(value) == {
        "storage_options": {"key": REDACTED, "secret": REDACTED, "token": "", "anon": False,
                            "client_kwargs": {"aws_secret_access_key": REDACTED, "region_name": "eu-west-3"}},
        "endpoint": f"https://{REDACTED}@minio:9000/bucket",
        "notes": [f"{REDACTED} in a list"],
        "password": REDACTED,
        "frame_tokens": True,
        "key_tokens_per_clip": 16,
        "nested": {"session_token": REDACTED, "grid": 4},
    }
