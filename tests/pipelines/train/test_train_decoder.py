"""`vtok train decoder` on real token shards with real Ray Train: learns, reconstructs, checkpoints, resumes, refuses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from jobs.cli import main
from pipelines.train.metrics import read_metrics
from tests.conftest import DECODER_ARGS, DECODER_SIDE, DECODER_STEPS
from vtok.training.checkpoint import list_checkpoints

# The tests of the session's trained models (vtok_run, baseline_run, decoder_run): one pytest-xdist worker
# trains each model once.
pytestmark = pytest.mark.xdist_group("trained")

COLOUR_THRESHOLD = 0.35
"""Held-out reconstructions whose foreground colour is the true one: chance is 1/6 (six colours); measured
0.59-0.69 over 32 clips in four sessions (the sample keys, so the split and the batches, follow the session's
temporary paths)."""


def test_loss_falls_and_metrics_have_every_step(decoder_run) -> None:
    out, _ = decoder_run
    records = read_metrics(str(out))
    assert [r["step"] for r in records] == list(range(1, DECODER_STEPS + 1))
    first = sum(r["loss"] for r in records[:10]) / 10
    last = sum(r["loss"] for r in records[-10:]) / 10
    assert last < 0.3 * first, (first, last)
    assert all(r["lr"] > 0 and r["step_time_s"] > 0 and r["samples_per_s"] > 0 for r in records)


def test_heldout_reconstructions_have_the_true_colour(decoder_run) -> None:
    _, result = decoder_run
    held = result["heldout_reconstruction"]
    print(f"held-out reconstruction colour accuracy {held['color']:.3f} of {int(held['clips'])} clips "
          f"(chance {held['chance']:.3f})")
    assert held["clips"] >= 20
    assert held["color"] >= COLOUR_THRESHOLD, held


def test_each_checkpoint_loads_with_one_call_and_holds_a_diffusers_transformer(decoder_run) -> None:
    from diffusers import WanTransformer3DModel

    from vtok.models.decoder import VTokDecoder

    out, result = decoder_run
    assert [c.step for c in list_checkpoints(str(out)) if c.complete] == [DECODER_STEPS // 2, DECODER_STEPS]
    ckpt = out / "checkpoints" / f"step_{DECODER_STEPS:08d}"
    model = VTokDecoder.from_pretrained(ckpt)
    assert (model.cfg.token_dim, model.cfg.num_key, model.cfg.height, model.cfg.num_frames) == (64, 16, DECODER_SIDE, 8)
    trainable = load_file(str(ckpt / "trainable.safetensors"))
    assert trainable and all(model.trainable_state_dict()[k].equal(v) for k, v in trainable.items())
    transformer = WanTransformer3DModel.from_pretrained(str(ckpt / "decoder"))
    assert all(v.equal(model.transformer.state_dict()[k]) for k, v in transformer.state_dict().items())
    config = json.loads((ckpt / "config.json").read_text())
    assert config["job"]["data"] and json.loads((ckpt / "data.json").read_text())["fingerprint"]
    assert not list(ckpt.rglob("*.pt")) and not list(ckpt.rglob("*.pkl")) and not list(ckpt.rglob("*.bin"))


def test_report_shows_loss_and_frames_and_vtok_report_summarizes(decoder_run, capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = decoder_run
    page = (out / "report.html").read_text()
    assert "<svg" in page and "Held-out clips" in page
    # 3 clips, 8 frames each of ground truth and of reconstruction.
    assert page.count('src="data:image/png;base64,') == 3 * 2 * 8
    assert main(["report", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"steps              {DECODER_STEPS}" in text and "held-out color" in text


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return [f"data={data}", f"output={out}", *DECODER_ARGS, *extra]


# ---- bad input is refused before training starts, naming the key or URI


def _refused(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["train", "decoder", *args, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_bad_inputs_are_named(decoder_tokens: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vtok.models.decoder_tiny import save_tiny_wan_vae

    copy = tmp_path / "no-targets"
    shutil.copytree(decoder_tokens, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "targets": {}}))
    err = _refused(_args(copy, tmp_path / "r0"), capsys)
    assert "model.space=pixels trains on frames_lowres" in err and "targets.lowres_side=N" in err
    err = _refused(_args(decoder_tokens, tmp_path / "r1", "model.space=latents"), capsys)
    assert "latents, which the shards do not have" in err and "targets.vae=DIR" in err
    vae = save_tiny_wan_vae(tmp_path / "vae")
    err = _refused(_args(decoder_tokens, tmp_path / "r2", f"model.transformer={vae}"), capsys)
    assert f"model.transformer={vae}: a 'AutoencoderKLWan' directory, expected a diffusers WanTransformer3DModel" in err
    err = _refused(_args(decoder_tokens, tmp_path / "r3", "model.space=latents", f"model.vae={tmp_path / 'nothing'}"),
                   capsys)
    assert "model.vae=" in err and "no such directory" in err
    assert "model.token_dim=32, but the tokens of" in _refused(_args(decoder_tokens, tmp_path / "r4",
                                                                     "model.token_dim=32"), capsys)
    assert "model.num_key=4, but" in _refused(_args(decoder_tokens, tmp_path / "r5", "model.num_key=4"), capsys)
    no_frames = {**manifest, "tokenizer": {**manifest["tokenizer"], "frame_tokens": False}}
    (copy / "manifest.json").write_text(json.dumps(no_frames))
    assert "needs frame_tokens" in _refused(_args(copy, tmp_path / "r6", "model.tokens=frame_sampling"), capsys)
    assert "unknown config key 'model.tokenz'" in _refused(_args(decoder_tokens, tmp_path / "r7", "model.tokenz=x"),
                                                           capsys)
    # None of them started a run.
    assert not any((tmp_path / f"r{i}").exists() for i in range(8))
