"""Decoder targets in the tokenize pass: frames_lowres and VAE latents written, read back exactly, checked, and
part of the dataset's identity; bad target settings refused before any work."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.utils.data

import vtok
from jobs.cli import main
from pipelines.tokenize.clips import SourceConfig
from pipelines.tokenize.manifest import DatasetMismatchError
from pipelines.tokenize.pipeline import TokenizeConfig, TokenizeSummary, run_tokenize
from pipelines.tokenize.sink import SinkConfig
from pipelines.tokenize.targets import TargetsConfig, pick_frames
from vtok.dataset import describe, read_manifest, shard_uris, validate_dataset
from vtok.loader import TokenIterable
from vtok.models.decoder_tiny import save_tiny_wan_vae
from vtok.video import DecodeConfig, decode_clip, resize_center_crop

FORMATS = ("parquet", "webdataset")
DECODE = DecodeConfig(fps=4.0, max_frames=8)  # the corpus' 2 s videos: T = 8 frames of 64 x 64 (tiny CLIP)
SIDE, VAE_SIZE, VAE_FRAMES = 16, 32, 5
PICKED = [0, 2, 4, 5, 7]  # 5 of the 8 sampled frames, evenly
LATENT_SHAPE = (4, 2, 4, 4)  # tiny Wan VAE: 4 channels, 1 + (5 - 1) / 4 steps, 32 / 8 a side


def _cfg(output: Path, fmt: str = "parquet", limit: int | None = 4, **targets: Any) -> TokenizeConfig:
    return TokenizeConfig(input="", output=str(output), format=fmt, decode=DECODE, source=SourceConfig(limit=limit),
                          sink=SinkConfig(rows_per_shard=2), targets=TargetsConfig(**targets))


def _run(cfg: TokenizeConfig, corpus: Path) -> TokenizeSummary:
    cfg.input = str(corpus / "manifest.jsonl")
    return run_tokenize(cfg, progress=False)


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_wan_vae(tmp_path_factory.mktemp("vae") / "tiny-wan-vae", seed=0, compression=8)


@pytest.fixture(scope="module")
def s3_vae(s3_endpoint: str, vae_dir: Path) -> str:
    """The same VAE directory on S3 (moto), as a cluster would name it."""
    import boto3
    import fsspec

    boto3.client("s3").create_bucket(Bucket="vtok-targets-vae")
    fsspec.filesystem("s3").put(str(vae_dir) + "/", "vtok-targets-vae/wan/", recursive=True)
    return "s3://vtok-targets-vae/wan"


@pytest.fixture(scope="module")
def made(ray_local, shapes_corpus: Path, vae_dir: Path, s3_vae: str, tmp_path_factory: pytest.TempPathFactory
         ) -> dict[str, Path]:
    """4 clips with both targets, in both formats (the WebDataset run reads its VAE from s3://), and 1 clip without."""
    root = tmp_path_factory.mktemp("targets")
    vaes = {"parquet": str(vae_dir), "webdataset": s3_vae}
    out = {fmt: root / fmt for fmt in FORMATS}
    for fmt in FORMATS:
        _run(_cfg(out[fmt], fmt, lowres_side=SIDE, vae=vaes[fmt], vae_size=VAE_SIZE, vae_frames=VAE_FRAMES),
             shapes_corpus)
    out["plain"] = root / "plain"
    _run(_cfg(out["plain"], limit=1), shapes_corpus)
    return out


@pytest.fixture(scope="module")
def truth(made: dict[str, Path], vae_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    """Each clip's targets made here, independently: vtok.video's decoder, the same resize, the VAE run directly."""
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan.from_pretrained(vae_dir).eval()
    mean = torch.tensor(vae.config.latents_mean).view(-1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(-1, 1, 1, 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the encoder actor runs (encode.num_cpus=1)
    out: dict[str, dict[str, np.ndarray]] = {}
    try:
        for sample in TokenIterable(str(made["parquet"])):
            frames = decode_clip(sample["source_uri"], DecodeConfig(fps=4.0, max_frames=8, size=64)).frames
            assert frames.shape == (8, 64, 64, 3)
            picked = np.stack([resize_center_crop(frames[i], VAE_SIZE) for i in PICKED])
            x = torch.from_numpy(picked).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0
            with torch.inference_mode():
                mode = vae.encode(x).latent_dist.mode()[0]
            out[sample["sample_key"]] = {"frames_lowres": np.stack([resize_center_crop(f, SIDE) for f in frames]),
                                         "latents": ((mode - mean) / std).numpy()}
    finally:
        torch.set_num_threads(threads)
    assert len(out) == 4
    return out


def _check(key: str, lowres: Any, latents: Any, truth: dict[str, dict[str, np.ndarray]]) -> None:
    lowres, latents = np.asarray(lowres), np.asarray(latents)
    assert lowres.dtype == np.uint8 and lowres.shape == (8, SIDE, SIDE, 3), key
    assert latents.dtype == np.float32 and latents.shape == LATENT_SHAPE, key
    assert lowres.tobytes() == truth[key]["frames_lowres"].tobytes(), key
    assert latents.tobytes() == truth[key]["latents"].tobytes(), key


# --- written and read back exactly -------------------------------------------------------------------------

def test_the_vae_frames_are_picked_evenly_from_the_sampled_frames() -> None:
    assert pick_frames(8, 5).tolist() == PICKED
    assert pick_frames(5, 5).tolist() == [0, 1, 2, 3, 4]  # decode.num_frames = vae_frames: exactly the sampled
    assert pick_frames(2, 5).tolist() == [0, 0, 1, 1, 1]  # a short clip repeats frames


@pytest.mark.parametrize("fmt", FORMATS)
def test_torch_readers_give_the_targets_exactly(fmt: str, made: dict[str, Path], truth: dict[str, Any]) -> None:
    samples = list(TokenIterable(str(made[fmt])))
    assert sorted(s["sample_key"] for s in samples) == sorted(truth)
    for s in samples:
        assert s["frames_lowres"].dtype == torch.uint8 and s["latents"].dtype == torch.float32
        _check(s["sample_key"], s["frames_lowres"].numpy(), s["latents"].numpy(), truth)
    loader = torch.utils.data.DataLoader(TokenIterable(str(made[fmt])), batch_size=3, collate_fn=vtok.collate_tokens)
    for batch in loader:
        assert batch["frames_lowres"].shape[1:] == (8, SIDE, SIDE, 3) and batch["frames_lowres_mask"].all()
        assert batch["latents"].shape[1:] == LATENT_SHAPE and batch["latents_mask"].all()
        for i, key in enumerate(batch["sample_key"]):
            _check(key, batch["frames_lowres"][i].numpy(), batch["latents"][i].numpy(), truth)


def test_read_tokens_gives_both_formats_the_same_target_columns(made: dict[str, Path], truth: dict[str, Any]) -> None:
    parquet, wds = (vtok.read_tokens(str(made[fmt])) for fmt in FORMATS)
    assert parquet.schema().names == wds.schema().names and parquet.schema().types == wds.schema().types
    assert {"frames_lowres", "latents"} <= set(parquet.schema().names)
    for ds in (parquet, wds):
        for row in ds.take_all():
            _check(row["sample_key"], np.asarray(row["frames_lowres"], np.uint8),
                   np.asarray(row["latents"], np.float32), truth)
        for batch in ds.iter_torch_batches(collate_fn=vtok.collate_tokens, batch_size=4):
            assert batch["frames_lowres"].dtype == torch.uint8 and batch["latents"].dtype == torch.float32
            for i, key in enumerate(batch["sample_key"]):
                _check(key, batch["frames_lowres"][i].numpy(), batch["latents"][i].numpy(), truth)


def _run_without_vtok(script: str) -> io.BytesIO:
    guard = "\nassert not [m for m in sys.modules if m.split('.')[0] in ('vtok', 'schemas', 'pipelines')]\n"
    proc = subprocess.run([sys.executable, "-c", "import sys\n" + script + guard], capture_output=True, cwd="/")
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    return io.BytesIO(proc.stdout)


def test_pyarrow_and_webdataset_recover_the_targets_without_vtok(made: dict[str, Path], truth: dict[str, Any]) -> None:
    parquet = _run_without_vtok(f"""
import numpy as np, pyarrow.parquet as pq
rows = sorted((r for f in {shard_uris(str(made["parquet"]))!r} for r in pq.read_table(f).to_pylist()),
              key=lambda r: r["sample_key"])
np.save(sys.stdout.buffer, np.stack([np.array(r["frames_lowres"], dtype=np.uint8) for r in rows]))
np.save(sys.stdout.buffer, np.stack([np.array(r["latents"], dtype=np.float32) for r in rows]))
""")
    tars = _run_without_vtok(f"""
import io, json
import numpy as np, webdataset as wds
def npy(data):
    return np.load(io.BytesIO(data), allow_pickle=False)
found = {{}}
for s in wds.WebDataset({shard_uris(str(made["webdataset"]))!r}, shardshuffle=False):
    found[json.loads(s["json"])["sample_key"]] = (npy(s["frames_lowres.npy"]), npy(s["latents.npy"]))
np.save(sys.stdout.buffer, np.stack([found[k][0] for k in sorted(found)]))
np.save(sys.stdout.buffer, np.stack([found[k][1] for k in sorted(found)]))
""")
    keys = sorted(truth)
    for out in (parquet, tars):
        lowres, latents = np.load(out), np.load(out)
        assert lowres.dtype == np.uint8 and lowres.tobytes() == np.stack([truth[k]["frames_lowres"] for k in keys]).tobytes()
        assert latents.dtype == np.float32 and latents.tobytes() == np.stack([truth[k]["latents"] for k in keys]).tobytes()


def test_validate_and_inspect_know_the_targets(made: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    for fmt in FORMATS:
        assert validate_dataset(str(made[fmt]))[0] == []
        assert read_manifest(str(made[fmt]))["targets"] == {"frames_lowres": [SIDE, SIDE, 3],
                                                            "latents": list(LATENT_SHAPE)}
        assert describe(shard_uris(str(made[fmt]))[0])["targets"] == read_manifest(str(made[fmt]))["targets"]
    assert read_manifest(str(made["plain"]))["targets"] == {}
    assert main(["inspect", str(made["parquet"])]) == 0
    out = capsys.readouterr().out
    assert f"frames_lowres    [T, {SIDE}, {SIDE}, 3] uint8 (targets.lowres_side={SIDE})" in out
    assert f"latents          {list(LATENT_SHAPE)} float32 (targets.vae=AutoencoderKLWan:" in out
    assert f"{VAE_FRAMES} frames at {VAE_SIZE} px)" in out
    assert main(["inspect", shard_uris(str(made["plain"]))[0]]) == 0
    assert "targets          none" in capsys.readouterr().out


def test_validate_catches_a_shard_whose_targets_disagree_with_the_manifest(made: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(made["webdataset"], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["targets"]["frames_lowres"] = [8, 8, 3]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    problems = validate_dataset(str(copy))[0]
    assert len(problems) == 4 and all("expected [8, 8, 8, 3]" in p for p in problems), problems


# --- identity: a target is part of what a dataset is -------------------------------------------------------

def test_targets_off_leave_the_identity_as_it_was(made: dict[str, Path]) -> None:
    identity = read_manifest(str(made["plain"]))["identity"]
    assert not [k for k in identity if k.startswith("targets.")]
    # The VAE is named by its class and weights, not its location: the s3:// and the local run agree.
    assert read_manifest(str(made["parquet"]))["identity"] == read_manifest(str(made["webdataset"]))["identity"]


@pytest.mark.parametrize(
    ("base", "targets", "message"),
    [
        ("plain", dict(lowres_side=SIDE), r"targets\.lowres_side=None, this run has targets\.lowres_side=16;"),
        ("plain", dict(vae="LOCAL", vae_size=VAE_SIZE, vae_frames=VAE_FRAMES),
         r"targets\.vae=None, this run has targets\.vae='AutoencoderKLWan:[0-9a-f]{16}';"),
        ("parquet", dict(), r"targets\.lowres_side=16, this run has targets\.lowres_side=None;"),
        ("parquet", dict(lowres_side=8, vae="LOCAL", vae_size=VAE_SIZE, vae_frames=VAE_FRAMES),
         r"targets\.lowres_side=16, this run has targets\.lowres_side=8;"),
        ("parquet", dict(lowres_side=SIDE, vae="LOCAL", vae_size=16, vae_frames=VAE_FRAMES),
         r"targets\.vae_size=32, this run has targets\.vae_size=16;"),
        ("parquet", dict(lowres_side=SIDE, vae="OTHER", vae_size=VAE_SIZE, vae_frames=VAE_FRAMES),
         r"targets\.vae='AutoencoderKLWan:[0-9a-f]{16}', this run has targets\.vae='AutoencoderKLWan:[0-9a-f]{16}';"),
    ],
)
def test_resuming_with_other_targets_is_refused_naming_the_key_and_both_values(
    base: str, targets: dict[str, Any], message: str, made: dict[str, Path], shapes_corpus: Path, vae_dir: Path,
    tmp_path: Path,
) -> None:
    out = tmp_path / "tokens"
    shutil.copytree(made[base], out)
    before = {p.name: p.read_bytes() for p in (out / "shards").iterdir()}
    if targets.get("vae") == "LOCAL":
        targets["vae"] = str(vae_dir)
    elif targets.get("vae") == "OTHER":  # the same class and config, other weights
        targets["vae"] = str(save_tiny_wan_vae(tmp_path / "other-vae", seed=1, compression=8))
    with pytest.raises(DatasetMismatchError, match=message):
        _run(_cfg(out, limit=1 if base == "plain" else 4, **targets), shapes_corpus)
    assert {p.name: p.read_bytes() for p in (out / "shards").iterdir()} == before


def test_the_same_targets_resume_and_the_cli_refusal_is_one_line(
    made: dict[str, Path], shapes_corpus: Path, s3_vae: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tokens"
    shutil.copytree(made["parquet"], out)
    # Made with the local VAE, resumed naming the same VAE on s3://: the same dataset, nothing to do.
    summary = _run(_cfg(out, lowres_side=SIDE, vae=s3_vae, vae_size=VAE_SIZE, vae_frames=VAE_FRAMES), shapes_corpus)
    assert summary.shards_written == 0 and summary.shards_skipped == 2
    code = main(["tokenize", f"input={shapes_corpus / 'manifest.jsonl'}", f"output={out}", "decode.fps=4",
                 "decode.max_frames=8", "sink.rows_per_shard=2", "source.limit=4", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().count("\n") == 0 and "Traceback" not in err
    assert "targets.lowres_side=16, this run has targets.lowres_side=None" in err


# --- bad target settings: one line naming the key (and the path), exit 2, before any work ------------------

def _tiny_image_vae(path: Path) -> Path:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(block_out_channels=(8,), norm_num_groups=8, latent_channels=4).save_pretrained(path)
    return path


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["targets.vae=VAE", "targets.vae_frames=8"], "targets.vae_frames=8: VAE (AutoencoderKLWan) takes 1 + 4k frames"),
        (["targets.vae=VAE", "targets.vae_size=60"], "targets.vae_size=60: VAE (AutoencoderKLWan) takes sides divisible"),
        (["targets.vae=VAE", "targets.vae_size=128"], "targets.vae_size=128 exceeds the frame size 64"),
        (["targets.vae=CLIP"], "targets.vae=CLIP: config.json names no diffusers class"),
        (["targets.vae=IMAGE_VAE"], "targets.vae=IMAGE_VAE: is a diffusers AutoencoderKL, expected a video VAE"),
        (["targets.vae=MISSING"], "targets.vae=MISSING: no such directory"),
        (["targets.vae=VAE", "targets.vae_dtype=float16"], "targets.vae_dtype must be one of"),
        (["targets.lowres_side=128"], "targets.lowres_side=128 exceeds the frame size 64"),
        (["targets.lowres_side=-1"], "targets.lowres_side must be >= 0"),
        (["targets.lowres=16"], "unknown config key 'targets.lowres' (did you mean 'targets.lowres_side'?)"),
    ],
)
def test_bad_target_settings_are_refused_before_any_work(
    overrides: list[str], message: str, ray_local, shapes_corpus: Path, vae_dir: Path, tiny_clip_dir: Path,
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    paths = {"VAE": str(vae_dir), "CLIP": str(tiny_clip_dir), "IMAGE_VAE": str(_tiny_image_vae(tmp_path / "kl")),
             "MISSING": str(tmp_path / "nowhere")}
    for name, path in paths.items():
        overrides = [o.replace(f"={name}", f"={path}") for o in overrides]
        message = message.replace(f"={name}:", f"={path}:").replace(f": {name} (", f": {path} (")
    out = tmp_path / "tokens"
    code = main(["tokenize", f"input={shapes_corpus / 'manifest.jsonl'}", f"output={out}", *overrides, "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert message in err, err
    assert not out.exists() or not any(out.iterdir())  # nothing written: refused before the dataset was bound
