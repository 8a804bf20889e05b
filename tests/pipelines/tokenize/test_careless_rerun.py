"""What a careless rerun must not do: mix two samplings, destroy an input, end in a traceback, lose the report."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jobs.cli import main
from pipelines.tokenize.manifest import DatasetMismatchError, OutputCollisionError
from pipelines.tokenize.pipeline import TokenizeConfig, run_tokenize
from pipelines.tokenize.sink import SinkConfig
from schemas.token_shard import META_IDENTITY
from vtok.dataset import validate_dataset
from vtok.video import DecodeConfig


def _cfg(input_uri: str | Path, output: str | Path, **kw: object) -> TokenizeConfig:
    base = dict(input=str(input_uri), output=str(output), decode=DecodeConfig(fps=4.0, max_frames=8),
                sink=SinkConfig(rows_per_shard=4))
    base.update(kw)
    return TokenizeConfig(**base)  # type: ignore[arg-type]


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["tokenize", *args, "--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def dataset(ray_local, shapes_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("careless") / "tokens"
    run_tokenize(_cfg(shapes_corpus / "manifest.jsonl", out), progress=False)
    return out


def _copy(dataset: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "tokens"
    shutil.copytree(dataset, copy)
    return copy


# ---- 1. the settings that decide the frames are part of the dataset's identity


def test_resume_with_another_frame_sampling_is_refused_naming_both_values(
    dataset: Path, shapes_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _copy(dataset, tmp_path)
    before = {p.name: p.read_bytes() for p in (out / "shards").iterdir()}
    with pytest.raises(DatasetMismatchError, match=r"decode\.fps=4\.0, this run has decode\.fps=1\.0"):
        run_tokenize(_cfg(shapes_corpus / "manifest.jsonl", out, decode=DecodeConfig(fps=1.0, max_frames=8)),
                     progress=False)
    # From the CLI: one line, exit code 2, the shards untouched.
    code, _, err = _cli(capsys, f"input={shapes_corpus / 'manifest.jsonl'}", f"output={out}", "decode.fps=4",
                        "decode.max_frames=2", "sink.rows_per_shard=4")
    assert code == 2
    assert err.strip().count("\n") == 0 and "decode.max_frames=8, this run has decode.max_frames=2" in err
    assert "Traceback" not in err
    assert {p.name: p.read_bytes() for p in (out / "shards").iterdir()} == before


@pytest.mark.parametrize(
    "override,key",
    [
        ({"decode": DecodeConfig(fps=4.0, max_frames=8, backend="decord")}, "decode.backend"),
        ({"decode": DecodeConfig(fps=4.0, max_frames=8, max_duration_s=60.0)}, "decode.max_duration_s"),
    ],
)
def test_every_row_deciding_setting_is_checked(
    dataset: Path, shapes_corpus: Path, tmp_path: Path, override: dict, key: str
) -> None:
    out = _copy(dataset, tmp_path)
    with pytest.raises(DatasetMismatchError, match=key.replace(".", r"\.")):
        run_tokenize(_cfg(shapes_corpus / "manifest.jsonl", out, **override), progress=False)


def test_settings_that_change_no_row_resume(dataset: Path, shapes_corpus: Path, tmp_path: Path) -> None:
    out = _copy(dataset, tmp_path)
    same = DecodeConfig(fps=4.0, max_frames=8, threads=2, seek="scan", backend="pyav")
    summary = run_tokenize(_cfg(shapes_corpus / "manifest.jsonl", out, decode=same), progress=False)
    assert summary.shards_written == 0 and summary.shards_skipped == 2


def test_validate_flags_a_shard_made_with_other_settings(dataset: Path, tmp_path: Path) -> None:
    out = _copy(dataset, tmp_path)
    assert validate_dataset(str(out))[0] == []
    shard = out / "shards" / "part-00001.parquet"
    table = pq.read_table(shard)
    meta = dict(table.schema.metadata)
    identity = json.loads(meta[META_IDENTITY])
    identity["decode.max_frames"] = 2
    meta[META_IDENTITY] = json.dumps(identity, sort_keys=True).encode()
    pq.write_table(table.replace_schema_metadata(meta), shard)
    # Keep the manifest's bytes and sha256 right, so only the identity can be what is wrong.
    manifest = json.loads((out / "manifest.json").read_text())
    import hashlib

    for entry in manifest["shards"]:
        if entry["file"] == "shards/part-00001.parquet":
            entry["bytes"] = shard.stat().st_size
            entry["sha256"] = hashlib.sha256(shard.read_bytes()).hexdigest()
    (out / "manifest.json").write_text(json.dumps(manifest))
    problems, _ = validate_dataset(str(out))
    assert problems == ["shards/part-00001.parquet: made with other settings than the dataset: "
                        "decode.max_frames: 8 vs 2"]


def test_webdataset_samples_carry_the_identity(ray_local, shapes_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "wds"
    run_tokenize(_cfg(shapes_corpus / "manifest.jsonl", out, format="webdataset"), progress=False)
    assert validate_dataset(str(out))[0] == []
    run = json.loads((out / "_vtok" / "run.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert run["identity"] == manifest["identity"]
    assert manifest["identity"]["decode.fps"] == 4.0 and manifest["identity"]["decode.max_frames"] == 8


# ---- 2. the output never destroys the input or a foreign file


def test_manifest_input_in_the_output_folder_is_refused(
    ray_local, shapes_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "corpus"
    shutil.copytree(shapes_corpus, folder)
    lines = (folder / "manifest.jsonl").read_text()
    (folder / "manifest.json").write_text(lines)
    user_bytes = (folder / "manifest.json").read_bytes()
    code, _, err = _cli(capsys, f"input={folder / 'manifest.json'}", f"output={folder}")
    assert code == 2 and "manifest.json" in err and "Traceback" not in err
    assert (folder / "manifest.json").read_bytes() == user_bytes
    assert not (folder / "_vtok").exists() and not (folder / "shards").exists()


def test_foreign_files_in_the_output_are_never_overwritten(ray_local, shapes_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "theirs"
    (out / "shards").mkdir(parents=True)
    (out / "shards" / "notes.txt").write_text("mine")
    with pytest.raises(OutputCollisionError, match="shards exists and was not written by vtok"):
        run_tokenize(_cfg(shapes_corpus / "manifest.jsonl", out, sink=SinkConfig(mode="overwrite")), progress=False)
    assert (out / "shards" / "notes.txt").read_text() == "mine"


def test_overwrite_deletes_only_what_vtok_wrote(dataset: Path, shapes_corpus: Path, tmp_path: Path) -> None:
    out = _copy(dataset, tmp_path)
    (out / "shards" / "README.txt").write_text("theirs")
    (out / "notes.md").write_text("theirs too")
    run_tokenize(_cfg(shapes_corpus / "manifest.jsonl", out, decode=DecodeConfig(fps=2.0, max_frames=8),
                      sink=SinkConfig(rows_per_shard=4, mode="overwrite")), progress=False)
    assert (out / "shards" / "README.txt").read_text() == "theirs"
    assert (out / "notes.md").read_text() == "theirs too"
    assert json.loads((out / "manifest.json").read_text())["identity"]["decode.fps"] == 2.0


def test_output_that_is_a_file_is_refused(ray_local, shapes_corpus: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "file.bin"
    target.write_bytes(b"keep")
    code, _, err = _cli(capsys, f"input={shapes_corpus / 'manifest.jsonl'}", f"output={target}")
    assert code == 2 and "is an existing file" in err and target.read_bytes() == b"keep"


def test_output_inside_the_input_folder(ray_local, shapes_corpus: Path, tmp_path: Path) -> None:
    folder = tmp_path / "videos"
    shutil.copytree(shapes_corpus / "videos", folder)
    # WebDataset shards there would be listed as raw-video tars by the next run: refused.
    with pytest.raises(OutputCollisionError, match="inside the input folder"):
        run_tokenize(_cfg(folder, folder / "tokens", format="webdataset"), progress=False)
    # Parquet shards are never listed as inputs: nothing collides, and a rerun lists the same videos.
    first = run_tokenize(_cfg(folder, folder / "tokens"), progress=False)
    again = run_tokenize(_cfg(folder, folder / "tokens"), progress=False)
    assert first.clips_out == again.clips_out == 6 and again.shards_skipped == 2


# ---- 8. one line and an exit code, never a traceback


def test_changed_listing_and_format_on_resume_are_one_line(
    dataset: Path, shapes_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _copy(dataset, tmp_path)
    manifest = tmp_path / "fewer.jsonl"
    rows = (shapes_corpus / "manifest.jsonl").read_text().splitlines()
    manifest.write_text("\n".join(json.dumps({**json.loads(r), "uri": str(shapes_corpus / json.loads(r)["uri"])})
                                  for r in rows[1:]) + "\n")
    base = ["decode.fps=4", "decode.max_frames=8", "sink.rows_per_shard=4"]
    code, _, err = _cli(capsys, f"input={manifest}", f"output={out}", *base)
    assert code == 2 and "different input listing" in err and err.count("\n") == 1
    code, _, err = _cli(capsys, f"input={shapes_corpus / 'manifest.jsonl'}", f"output={out}", "format=webdataset",
                        *base)
    assert code == 2 and "format='parquet'" in err and err.count("\n") == 1


def test_an_unexpected_error_is_one_line_unless_debug(
    shapes_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import jobs.tokenize

    def broken(*_: object, **__: object) -> None:
        raise KeyError("boom")

    monkeypatch.setattr(jobs.tokenize, "run", broken)
    code, _, err = _cli(capsys, f"input={shapes_corpus}", f"output={tmp_path / 'o'}")
    assert code == 1 and "internal error: KeyError" in err and "--debug" in err and "Traceback" not in err
    with pytest.raises(KeyError):
        main(["--debug", "tokenize", f"input={shapes_corpus}", f"output={tmp_path / 'o'}"])


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 600 KiB tmpfs: a real full disk (needs root and mount, as on the CI machine; skipped elsewhere)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_is_one_line_with_exit_3(
    ray_local, shapes_corpus: Path, small_tmpfs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (small_tmpfs / "filler").write_bytes(b"\0" * (560 << 10))
    code, _, err = _cli(capsys, f"input={shapes_corpus / 'manifest.jsonl'}", f"output={small_tmpfs / 'tokens'}",
                        "sink.rows_per_shard=2")
    assert code == 3, err
    assert "no space left on the device" in err and "Traceback" not in err and err.count("\n") == 1


def test_read_only_output_is_one_line_with_exit_3(
    ray_local, shapes_corpus: Path, small_tmpfs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    code, _, err = _cli(capsys, f"input={shapes_corpus / 'manifest.jsonl'}", f"output={small_tmpfs / 'tokens'}")
    assert code == 3 and "Read-only file system" in err and err.count("\n") == 1


# ---- 9. files honour the umask


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600)])
def test_written_files_follow_the_umask(ray_local, shapes_corpus: Path, tmp_path: Path, umask: int,
                                        mode: int) -> None:
    old = os.umask(umask)
    try:
        out = tmp_path / "tokens"
        run_tokenize(_cfg(shapes_corpus / "manifest.jsonl", out), progress=False)
    finally:
        os.umask(old)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) >= 5
    assert {p.relative_to(out).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in files} == {
        p.relative_to(out).as_posix(): mode for p in files
    }


# ---- 10. the report of the work is kept; all-bad runs fail


def test_a_resume_with_nothing_to_do_keeps_the_report_of_the_work(
    ray_local, shapes_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tokens"
    args = [f"input={shapes_corpus / 'manifest.jsonl'}", f"output={out}", "decode.max_frames=8"]
    assert _cli(capsys, *args)[0] == 0
    first = json.loads((out / "report.json").read_text())
    assert _cli(capsys, *args)[0] == 0
    second = json.loads((out / "report.json").read_text())
    assert [r["clips"] for r in second["runs"]] == [6, 0]
    assert [r["did_work"] for r in second["runs"]] == [True, False]
    assert second["shown_run"] == 0
    assert second["time"] == first["time"] and second["stages"] == first["stages"]
    assert second["counts"]["clips_this_run"] == 6 and second["counts"]["clips_out"] == 6
    page = (out / "report.html").read_text()
    assert "<h2>Runs</h2>" in page and "nothing to do" in page and "1 (charted)" in page


def test_a_run_whose_every_input_is_bad_exits_4(ray_local, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    for i in range(3):
        (folder / f"junk{i}.mp4").write_bytes(os.urandom(3000))
    out = tmp_path / "tokens"
    code, stdout, err = _cli(capsys, f"input={folder}", f"output={out}")
    assert code == 4 and "every one of the 3 inputs was quarantined (not_a_video 3)" in err
    assert "no clips" in stdout and "0.0x" not in stdout
    report = json.loads((out / "report.json").read_text())
    assert report["tokens"]["dataset_reduction"] is None
    assert "0.0x fewer" not in (out / "report.html").read_text()
    main(["report", str(out)])
    assert "no clips were tokenized" in capsys.readouterr().out


def test_max_quarantined_fraction(ray_local, shapes_corpus: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "mixed"
    shutil.copytree(shapes_corpus / "videos", folder)
    (folder / "junk.mp4").write_bytes(os.urandom(3000))
    args = [f"input={folder}", "decode.max_frames=8"]
    assert _cli(capsys, *args, f"output={tmp_path / 'a'}", "--max-quarantined-fraction", "0.2")[0] == 0
    code, _, err = _cli(capsys, *args, f"output={tmp_path / 'b'}", "--max-quarantined-fraction", "0.1")
    assert code == 4 and "1 of 7 inputs quarantined (14.3%" in err


# ---- 7. nothing skipped without a count


def test_skipped_files_are_counted_in_the_summary_and_the_report(
    ray_local, shapes_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "videos"
    shutil.copytree(shapes_corpus / "videos", folder)
    (folder / "clip.gif").write_bytes(b"GIF89a")
    (folder / "notes.txt").write_text("not a video")
    os.symlink(shapes_corpus / "videos", folder / "linked")
    out = tmp_path / "tokens"
    code, stdout, _ = _cli(capsys, f"input={folder}", f"output={out}", "decode.max_frames=8")
    assert code == 0
    assert "skipped            3: .gif 1, .txt 1, directory symlink 1" in stdout
    assert "clips out          6" in stdout
    report = json.loads((out / "report.json").read_text())
    assert report["skipped"]["by_label"] == {".gif": 1, ".txt": 1, "directory symlink": 1}
    assert any(u.endswith("clip.gif") for u in report["skipped"]["examples"])
    assert "The listing skipped 3 file(s)" in (out / "report.html").read_text()
