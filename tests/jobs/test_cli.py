from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from jobs.cli import main
from jobs.config import ConfigError
from jobs.tokenize import load_tokenize_config


def test_shipped_defaults_load_with_overrides() -> None:
    cfg = load_tokenize_config(["input=/in", "output=/out", "decode.fps=2", "encode.num_gpus=1", "tokenizer.grid=2"])
    assert cfg.input == "/in" and cfg.decode.fps == 2.0 and cfg.encode.num_gpus == 1.0 and cfg.tokenizer.grid == 2
    assert cfg.sink.rows_per_shard == 256 and cfg.ray.address is None


@pytest.mark.parametrize(
    "override,message",
    [
        ("decode.nope=1", "unknown config key 'decode.nope'"),
        ("bogus=1", "unknown config key 'bogus'"),
        ("decode.fps=fast", "bad value for config key 'decode.fps'"),
        ("encode.num_actors=0", "encode.num_actors must be >= 1, got 0"),
        ("sink.mode=append", "sink.mode must be resume or overwrite"),
        ("format=zip", "format must be one of"),
    ],
)
def test_bad_keys_and_values_are_named(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_tokenize_config(["input=/in", "output=/out", override])


def test_a_mistyped_key_suggests_the_nearest() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'decode.fsp' \(did you mean 'decode.fps'\?\)"):
        load_tokenize_config(["input=/in", "output=/out", "decode.fsp=2"])


def test_keys_the_pipeline_sets_are_not_user_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'decode.size' cannot be set: the frame size is the encoder's"):
        load_tokenize_config(["input=/in", "output=/out", "decode.size=64"])
    yaml = tmp_path / "mine.yaml"
    yaml.write_text("decode:\n  size: 64\n")
    with pytest.raises(ConfigError, match="'decode.size' in .*mine.yaml cannot be set"):
        load_tokenize_config(["input=/in", "output=/out"], str(yaml))


def test_vtok_config_lists_every_key_with_default_and_doc(capsys: pytest.CaptureFixture[str]) -> None:
    from dataclasses import fields

    from jobs.tokenize import TokenizeJobConfig

    assert main(["config", "tokenize"]) == 0
    lines = capsys.readouterr().out.splitlines()
    keys = {line.split()[0]: line for line in lines}
    assert "decode.size" not in keys and "tokenizer.storage_options" not in keys
    assert keys["decode.fps"].split()[1] == "4.0" and "frames per second" in keys["decode.fps"]
    assert keys["decode.threads"].split()[1] == "1"
    assert keys["input"].split()[1] == "(required)"
    # Every top-level section is there, and every line has a docstring.
    assert {k.split(".")[0] for k in keys} == {f.name for f in fields(TokenizeJobConfig)}
    assert all(len(line.split()) > 2 for line in lines)
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", "tokenize", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "decode.max_frames" in proc.stdout and "config keys" in proc.stdout


def test_the_shipped_yaml_holds_only_what_a_job_must_be_told() -> None:
    from omegaconf import OmegaConf

    from jobs.config import default_config_path

    assert set(OmegaConf.load(default_config_path("tokenize")).keys()) == {"input", "output"}


def test_missing_input_is_named() -> None:
    with pytest.raises(ConfigError, match="input"):
        load_tokenize_config(["output=/out"])


def test_cli_rejects_unknown_key_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "never"
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "tokenize", f"input={tmp_path}", f"output={out}", "decode.fsp=2"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert "unknown config key 'decode.fsp'" in proc.stderr
    assert not out.exists()


def test_a_missing_input_fails_before_ray_starts(tmp_path: Path) -> None:
    ray_dir = tmp_path / "ray"
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "tokenize", f"input={tmp_path / 'nope'}", f"output={tmp_path / 'out'}",
         f"ray.temp_dir={ray_dir}"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"vtok tokenize: error: {tmp_path / 'nope'}: does not exist"
    assert not ray_dir.exists() and not (tmp_path / "out").exists()


def test_synth_tokenize_inspect(ray_local, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus, tokens = tmp_path / "corpus", tmp_path / "tokens"
    assert main(["synth", str(corpus), "--num-videos", "3", "--seed", "1", "--width", "64", "--height", "64",
                 "--num-frames", "12"]) == 0
    assert len(list((corpus / "videos").glob("*.mp4"))) == 3
    assert main(["tokenize", f"input={corpus}/manifest.jsonl", f"output={tokens}", "decode.fps=4",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "videos in          3" in out and "clips out          3" in out
    # 12 frames at 8 fps = 1.5 s -> 6 frames at 4 fps: S + R = 16 + 5.
    assert "VTok S+R = 16 + 5.0 = 21.0; frame sampling T*S = 96.0" in out
    assert main(["inspect", str(tokens)]) == 0
    out = capsys.readouterr().out
    assert "schema version   1" in out and "rows             3" in out and "complete         True" in out


def test_inspect_of_a_missing_dataset_fails_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(tmp_path / "nothing")]) == 2
    assert "no manifest.json" in capsys.readouterr().err
