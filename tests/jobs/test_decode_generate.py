"""`vtok decode` and `vtok generate` with the session's trained decoder: playable mp4s, the index, the tokens, and
one-line refusals of bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from jobs.cli import main
from tests.conftest import DECODER_SIDE

# The tests of the session's trained models (vtok_run, baseline_run, decoder_run): one pytest-xdist worker
# trains each model once.
pytestmark = pytest.mark.xdist_group("trained")

FRAMES = 8


def read_mp4(path: Path | str) -> np.ndarray:
    """Every frame of a video file, decoded with PyAV: uint8 [T, H, W, 3]."""
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.fixture(scope="module")
def mllm_run(decoder_tokens: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run with one complete MLLM checkpoint, untrained (generation only has to run), of the data's widths."""
    from vtok.dataset import read_shard_samples, shard_uris
    from vtok.models.feature_stats import FeatureStats
    from vtok.models.mllm import VTokLM
    from vtok.models.mllm_config import MLLMConfig
    from vtok.models.text import train_word_tokenizer
    from vtok.models.tiny_llm import save_tiny_llm
    from vtok.training.batching import collate_tokens
    from vtok.training.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("mllm")
    rows = read_shard_samples(shard_uris(str(decoder_tokens))[0])[:16]
    tokenizer = train_word_tokenizer([r["caption"] for r in rows], root / "text")
    save_tiny_llm(root / "llm", vocab_size=len(tokenizer), seed=0)
    stats = FeatureStats().update(collate_tokens(rows, columns=["key_tokens", "residual_features"])).finish()
    folder = VTokLM(MLLMConfig(llm_mode="frozen"), tokenizer, stats, root / "llm").save_pretrained(root / "saved")
    run = root / "run"
    save_checkpoint(str(run), 1, files={p.name: p for p in folder.iterdir() if p.is_file()},
                    dirs={p.name: p for p in folder.iterdir() if p.is_dir()})
    return run


def test_decode_writes_one_playable_mp4_per_clip_and_an_index(decoder_run, decoder_tokens: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    run, _ = decoder_run
    out = tmp_path / "videos"
    assert main(["decode", f"data={decoder_tokens}", f"decoder={run}", f"out={out}", "limit=3", "steps=8",
                 "upscale=2"]) == 0
    assert "wrote 3 videos" in capsys.readouterr().out
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert len(index) == 3 and len({r["sample_key"] for r in index}) == 3
    for row in index:
        assert Path(row["path"]).name == f"{row['sample_key']}.mp4" and row["caption"] and row["source_uri"]
        frames = read_mp4(row["path"])
        assert frames.shape == (FRAMES, 2 * DECODER_SIDE, 2 * DECODER_SIDE, 3), frames.shape
        assert (row["frames"], row["height"], row["width"]) == (FRAMES, 2 * DECODER_SIDE, 2 * DECODER_SIDE)


def test_decode_rerun_skips_whole_videos_and_finishes_the_rest(decoder_run, decoder_tokens: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    run, _ = decoder_run
    out = tmp_path / "videos"
    args = ["decode", f"data={decoder_tokens}", f"decoder={run}", f"out={out}", "limit=4", "steps=2"]
    assert main(args) == 0
    assert "wrote 4 videos" in capsys.readouterr().out
    first = (out / "index.jsonl").read_text()
    paths = [Path(json.loads(line)["path"]) for line in first.splitlines()]
    frames = {p.name: read_mp4(p) for p in paths}
    untouched = [(p.stat().st_ino, p.stat().st_mtime_ns) for p in (paths[0], paths[3])]
    # What a kill leaves: a video not written yet, one cut short under its own name (as a writer that does not
    # rename would leave it), a temporary file, and no index (it is written last).
    paths[1].unlink()
    whole = paths[2].read_bytes()
    paths[2].write_bytes(whole[: len(whole) // 2])
    (out / ".tmp-killed.mp4").write_bytes(whole[:100])
    (out / "index.jsonl").unlink()
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "wrote 2 videos" in printed and "skipped 2 already there" in printed, printed
    assert (out / "index.jsonl").read_text() == first  # the same rows, in the dataset's order
    assert [(p.stat().st_ino, p.stat().st_mtime_ns) for p in (paths[0], paths[3])] == untouched
    for p in paths:
        assert np.array_equal(read_mp4(p), frames[p.name]), p.name
    assert sorted(p.name for p in out.iterdir()) == sorted([*frames, "index.jsonl", "run.json"])
    # All there: nothing decoded. Other sampling settings would mix two decoders' videos in one folder: refused.
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "wrote 0 videos" in printed and "skipped 4 already there" in printed, printed
    assert (out / "index.jsonl").read_text() == first
    err = _refused([*args, "seed=1"], capsys)
    assert "seed=0" in err and "seed=1" in err and str(out) in err


def test_generate_writes_a_video_and_the_tokens_in_the_shard_format(mllm_run: Path, decoder_run, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import pyarrow.parquet as pq

    from vtok.training.batching import collate_tokens

    run, _ = decoder_run
    video, tokens = tmp_path / "red.mp4", tmp_path / "tokens.parquet"
    assert main(["generate", f"mllm={mllm_run}", f"decoder={run}", "prompt=one object: a large red circle.",
                 f"out={video}", "steps=4", "--tokens-out", str(tokens)]) == 0
    assert str(video) in capsys.readouterr().out
    assert read_mp4(video).shape == (FRAMES, DECODER_SIDE, DECODER_SIDE, 3)
    table = pq.read_table(tokens)
    assert table.column_names == ["sample_key", "caption", "key_tokens", "residual_features"]
    batch = collate_tokens(table.to_pylist())
    assert tuple(batch["key_tokens"].shape) == (1, 16, 64) and batch["residual_features"].shape[-1] == 64
    # One prompt a line, empty lines skipped: a folder of videos and an index.
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a small blue square.\n\n  a large green triangle moving left.\n")
    out = tmp_path / "many"
    assert main(["generate", f"mllm={mllm_run}", f"decoder={run}", f"prompts={prompts}", f"out={out}",
                 "steps=2"]) == 0
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert [r["caption"] for r in index] == ["a small blue square.", "a large green triangle moving left."]
    assert all(read_mp4(r["path"]).shape[0] == FRAMES for r in index)


def test_generate_writes_to_s3(mllm_run: Path, decoder_run, s3_bucket: str, tmp_path: Path) -> None:
    import fsspec

    run, _ = decoder_run
    out = f"s3://{s3_bucket}/videos/red.mp4"
    assert main(["generate", f"mllm={mllm_run}", f"decoder={run}", "prompt=a red circle.", f"out={out}", "steps=2",
                 "--tokens-out", f"s3://{s3_bucket}/videos/red.parquet"]) == 0
    fs = fsspec.filesystem("s3")
    local = tmp_path / "red.mp4"
    fs.get_file(f"{s3_bucket}/videos/red.mp4", str(local))
    assert read_mp4(local).shape == (FRAMES, DECODER_SIDE, DECODER_SIDE, 3)
    assert fs.exists(f"{s3_bucket}/videos/red.parquet")


# ---- bad input: one line, exit code 2, no traceback


def _refused(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_bad_inputs_are_named(mllm_run: Path, decoder_run, decoder_tokens: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    from vtok.training.checkpoint import save_checkpoint

    run, _ = decoder_run
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    err = _refused(["generate", f"mllm={mllm_run}", f"decoder={run}", f"prompts={empty}", f"out={tmp_path}/g"], capsys)
    assert f"prompts={empty}: the file holds no prompts" in err
    # A checkpoint folder without its complete marker (a crash mid-save), named directly or as a run's only one.
    latest = sorted((run / "checkpoints").iterdir())[-1]
    half = tmp_path / "half" / "checkpoints" / "step_00000009"
    shutil.copytree(latest, half)
    (half / "complete").unlink()
    err = _refused(["decode", f"data={decoder_tokens}", f"decoder={half}", f"out={tmp_path}/d"], capsys)
    assert f"decoder={half}: not a complete checkpoint" in err
    err = _refused(["generate", f"mllm={tmp_path / 'half'}", f"decoder={run}", "prompt=a red circle.",
                    f"out={tmp_path}/g.mp4"], capsys)
    assert "the run has no complete checkpoint" in err
    half_mllm = tmp_path / "half_mllm" / "checkpoints" / "step_00000001"
    shutil.copytree(mllm_run / "checkpoints" / "step_00000001", half_mllm)
    (half_mllm / "complete").unlink()
    err = _refused(["generate", f"mllm={half_mllm}", f"decoder={run}", "prompt=a red circle.",
                    f"out={tmp_path}/g.mp4"], capsys)
    assert f"mllm={half_mllm}: not a complete checkpoint" in err
    # A decoder whose adapter reads tokens of another width than the data's (its config, complete marker and all).
    config = json.loads((latest / "config.json").read_text())
    config["decoder"]["token_dim"] = 32
    narrow = save_checkpoint(str(tmp_path / "narrow"), 1, json_files={"config.json": config})
    err = _refused(["decode", f"data={decoder_tokens}", f"decoder={narrow}", f"out={tmp_path}/d"], capsys)
    assert "token_dim=32, but the tokens of" in err
    err = _refused(["generate", f"mllm={mllm_run}", f"decoder={narrow}", "prompt=a red circle.",
                    f"out={tmp_path}/g.mp4"], capsys)
    assert "generates tokens D=64 wide" in err and "reads D=32" in err
    assert "neither" in _refused(["generate", f"mllm={mllm_run}", f"decoder={run}", f"out={tmp_path}/g.mp4"], capsys)
