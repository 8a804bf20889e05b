from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vtok.tokenizer import GPhi, VTokTokenizer
from vtok.tokenizer_spec import TokenizerConfig, TokenizerSpec, read_encoder_spec


def test_spec_agrees_with_the_loaded_tokenizer(tiny_clip_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    save_file(GPhi(64, 32, 48).state_dict(), tmp_path / "g_phi.safetensors")
    cfg = TokenizerConfig(encoder=str(tiny_clip_dir), g_phi=str(tmp_path / "g_phi.safetensors"), dtype="float32")
    spec = TokenizerSpec.load(cfg, "float32")
    tok = VTokTokenizer(cfg)
    assert spec.fingerprint() == tok.fingerprint and len(spec.fingerprint()) == 64
    assert spec.describe() == tok.describe()
    desc = spec.describe()
    assert (desc["image_size"], desc["patch_size"], desc["hidden_size"], desc["g_phi"]) == (64, 8, 64, [48, 32])
    assert desc["mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    assert "transformers_version" not in desc["model_config"]
    # The compute dtype changes the tokens, so it changes the fingerprint.
    assert TokenizerSpec.load(cfg, "bfloat16").fingerprint() != spec.fingerprint()


def test_full_clip_checkpoint_reads_its_vision_tower(tmp_path: Path) -> None:
    from transformers import CLIPConfig, CLIPModel

    vision = dict(image_size=32, patch_size=8, hidden_size=48, intermediate_size=96, num_hidden_layers=1,
                  num_attention_heads=4)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)
    CLIPModel(CLIPConfig(vision_config=vision, text_config=text)).save_pretrained(tmp_path / "clip")
    spec = read_encoder_spec(tmp_path / "clip")
    assert (spec.model_type, spec.image_size, spec.patch_size, spec.hidden_size) == ("clip_vision_model", 32, 8, 48)
    tok = VTokTokenizer(TokenizerConfig(encoder=str(tmp_path / "clip"), grid=2))
    assert tok.image_size == 32 and tok.fingerprint == tok.spec.fingerprint()


def test_sizes_left_out_as_defaults_come_from_transformers(tiny_clip_dir: Path, tmp_path: Path) -> None:
    import shutil

    shutil.copytree(tiny_clip_dir, tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    # save_pretrained omits a value equal to the class default (CLIPVisionConfig: patch_size 32).
    del saved["patch_size"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(saved))
    assert read_encoder_spec(tmp_path / "m").patch_size == 32


def test_missing_weights_and_config_name_the_directory(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty: no config.json"):
        read_encoder_spec(tmp_path / "empty")
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text(json.dumps({"model_type": "clip_vision_model",
                                                                     "image_size": 64, "patch_size": 8,
                                                                     "hidden_size": 64}))
    with pytest.raises(FileNotFoundError, match="noweights: no weight files"):
        read_encoder_spec(tmp_path / "noweights")


def test_grid_larger_than_the_patch_grid_is_refused(tiny_clip_dir: Path) -> None:
    with pytest.raises(ValueError, match="tokenizer.grid 9 exceeds the encoder's 8x8 patches"):
        TokenizerSpec.load(TokenizerConfig(encoder=str(tiny_clip_dir), grid=9), "float32")


def test_the_pipeline_driver_imports_neither_torch_nor_transformers(tiny_clip_dir: Path) -> None:
    code = (
        "import sys\n"
        "import jobs.cli, jobs.tokenize, pipelines.tokenize.pipeline\n"
        "jobs.cli.build_parser()  # every subcommand registered, the training ones too\n"
        "from vtok.tokenizer_spec import TokenizerConfig, TokenizerSpec\n"
        f"TokenizerSpec.load(TokenizerConfig(encoder={str(tiny_clip_dir)!r}), 'float32').fingerprint()\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'av', 'decord') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_writing_the_run_report_imports_neither_torch_nor_transformers(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from pipelines.tokenize.report import write_report\n"
        "from pipelines.tokenize.pipeline import RunStats, TokenizeConfig, TokenizeSummary\n"
        "manifest = {'tokenizer': {'residual_stride': 1}, 'shards': [], 'num_shards_planned': 1, 'complete': True,\n"
        "            'schema_version': '1', 'vtok_version': '0', 'format': 'parquet', 'quarantine': []}\n"
        f"summary = TokenizeSummary(output={str(tmp_path)!r}, fingerprint='f' * 64, videos_in=1, clips_out=1,\n"
        "    quarantined=0, errors={}, shards_written=1, shards_skipped=0, key_tokens_per_clip=16,\n"
        "    mean_residual_tokens_per_clip=7.0, mean_frame_tokens_per_clip=128.0, wall_time_s=1.0, videos_per_s=1.0,\n"
        "    manifest=manifest, stats=RunStats(decode_s=[0.1], encode_s=[0.1], frames_per_clip=[8]))\n"
        "write_report(summary, TokenizeConfig(input='/in', output='/out'))\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'av', 'decord') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])
    assert (tmp_path / "report.json").is_file() and (tmp_path / "report.html").is_file()
