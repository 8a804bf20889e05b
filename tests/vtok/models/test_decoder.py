"""The token -> video decoder: a tiny WanTransformer3DModel (built and saved the diffusers way) on CPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from vtok.models.decoder import FILES, VTokDecoder
from vtok.models.decoder_adapter import conditioning
from vtok.models.decoder_config import DecoderConfig, DiTSizes
from vtok.models.decoder_tiny import save_tiny_wan, save_tiny_wan_vae
from vtok.models.decoder_video import (
    decode_latents,
    encode_latents,
    frames_to_pixels,
    load_vae,
    pixels_to_frames,
)
from vtok.training.losses import flow_matching_loss, flow_matching_pair, logit_normal_sigmas

S, D, T, SIDE = 4, 16, 4, 16
"""Key tokens per clip, token width, frames and side of the toy clips."""
COLOURS = torch.tensor([[220, 30, 30], [30, 200, 40], [40, 60, 220], [230, 220, 40]], dtype=torch.uint8)
"""Solid colours of the overfitting clips."""


# Tiny matrices: one intra-op thread is faster than two on a busy 2-core machine (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_wan(tmp_path_factory.mktemp("tiny_wan"), seed=0)


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_wan_vae(tmp_path_factory.mktemp("tiny_wan_vae"), seed=0)


def _cfg(**kw: Any) -> DecoderConfig:
    return DecoderConfig(**{"token_dim": D, "num_key": S, "num_frames": T, "height": SIDE, "width": SIDE, **kw})


def _batch(lengths: list[int], seed: int = 0, frames: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """A collate_tokens-shaped batch: key tokens, residual features padded to max(lengths), frame tokens, frames."""
    g = torch.Generator().manual_seed(seed)
    b, r = len(lengths), max(lengths)
    mask = torch.arange(r)[None, :] < torch.tensor(lengths)[:, None]
    res = torch.randn(b, r, D, generator=g) * mask[..., None]
    if frames is None:
        frames = torch.randint(0, 256, (b, T, SIDE, SIDE, 3), generator=g, dtype=torch.uint8)
    return {"key_tokens": torch.randn(b, S, D, generator=g), "residual_features": res, "residual_mask": mask,
            "frame_tokens": torch.randn(b, T, S, D, generator=g), "frame_mask": torch.ones(b, T, dtype=torch.bool),
            "frames_lowres": frames}


def _train(model: VTokDecoder, batch: dict[str, torch.Tensor], steps: int, lr: float = 5e-3) -> list[float]:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(1)
    model.train()
    history = []
    for _ in range(steps):
        out = model(batch, generator=gen)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        history.append(float(out["loss"].detach()))
    model.eval()
    return history


def _probe(model: VTokDecoder, batch: dict[str, torch.Tensor], rows: slice = slice(None)) -> torch.Tensor:
    """The conditional velocity at a fixed noisy input: [B, C, F, H, W] (`rows`: of the first 4 fixed inputs)."""
    g = torch.Generator().manual_seed(7)
    b = batch["key_tokens"].shape[0]
    x = torch.randn(4, int(model.transformer.config.in_channels), T, SIDE, SIDE, generator=g)[rows][:b]
    with torch.no_grad():
        states, mask = model.adapter(model.conditioning(batch))
        return model.transformer_forward(x, torch.full((b,), 600.0), states, mask)


def test_config_is_torch_free_and_checks_keys() -> None:
    code = "import sys, vtok.models.decoder_config; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[3])
    for kw, key in [({"transformer_mode": "adapter"}, "model.transformer_mode"), ({"space": "rgb"}, "model.space"),
                    ({"tokens": "x"}, "model.tokens"), ({"cond_dropout": 1.0}, "model.cond_dropout"),
                    ({"frames": 0}, "model.frames"), ({"dit": {"patch_size": [1, 2]}}, "model.dit.patch_size")]:
        with pytest.raises(ValueError, match=key):
            DecoderConfig(**kw)
    assert isinstance(DecoderConfig(dit={"layers": 3}).dit, DiTSizes)


def test_flow_matching_functions() -> None:
    g = torch.Generator().manual_seed(0)
    sigma = logit_normal_sigmas(1000, 0.0, 1.0, 3.0, g)
    assert sigma.shape == (1000,) and float(sigma.min()) > 0 and float(sigma.max()) < 1
    assert float(sigma.mean()) > 0.6  # shift 3 pushes towards noise
    assert torch.equal(sigma, logit_normal_sigmas(1000, 0.0, 1.0, 3.0, torch.Generator().manual_seed(0)))
    x0, noise = torch.randn(2, 3, 4, 8, 8), torch.randn(2, 3, 4, 8, 8)
    x_t, target = flow_matching_pair(x0, noise, torch.tensor([0.0, 1.0]))
    assert torch.equal(x_t[0], x0[0]) and torch.equal(x_t[1], noise[1]) and torch.equal(target, noise - x0)
    pred = target.clone()
    pred[1, :, 3] += 100.0  # a padded frame's error is not counted
    valid = torch.tensor([[True] * 4, [True] * 3 + [False]])
    assert float(flow_matching_loss(pred, target, valid)) == 0.0 and float(flow_matching_loss(pred, target)) > 0


def test_shapes_through_adapter_and_transformer(wan_dir: Path) -> None:
    batch = _batch([3, 1])
    model = VTokDecoder(_cfg(), wan_dir)
    cond = model.conditioning(batch)
    states, mask = model.adapter(cond)
    assert states.shape == (2, S + 3, 32) and mask.tolist() == [[True] * 7, [True] * 5 + [False] * 2]
    assert float(states[1, 5:].detach().abs().sum()) == 0.0  # padded slots are zeroed
    assert _probe(model, batch).shape == (2, 3, T, SIDE, SIDE)
    baseline = VTokDecoder(_cfg(tokens="frame_sampling", frames=2), wan_dir)
    states, mask = baseline.adapter(baseline.conditioning(batch))
    assert states.shape == (2, 2 * S, 32) and bool(mask.all())
    assert conditioning(batch, baseline.cfg).key_time[0].tolist() == [0] * S + [1] * S
    out = baseline(batch)
    assert set(out) == {"loss", "loss_flow", "sigma_mean", "dropped", "tokens"} and int(out["tokens"]) == 4 * S
    assert baseline.sample(batch, steps=2).shape == (2, T, SIDE, SIDE, 3)


@pytest.mark.parametrize("tokens", ["vtok", "frame_sampling"])
def test_every_trainable_parameter_gets_a_gradient(wan_dir: Path, tokens: str) -> None:
    """Even with no residual in the batch and no clip dropped: DDP (the loop's prepare_model) needs it."""
    model = VTokDecoder(_cfg(tokens=tokens, cond_dropout=0.0, transformer_mode="lora"), wan_dir)
    model(_batch([0, 0]))["loss"].backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


def test_padding_does_not_matter(wan_dir: Path) -> None:
    model = VTokDecoder(_cfg(), wan_dir)
    batch = _batch([3, 1])
    alone = {k: v[1:2, : (1 if k.startswith("residual") else None)] for k, v in batch.items()}
    noisy = dict(batch)
    pad = torch.zeros(2, 2, D)
    noisy["residual_features"] = torch.cat([batch["residual_features"], pad], 1)  # R_max 3 -> 5
    noisy["residual_mask"] = torch.cat([batch["residual_mask"], pad[..., 0].bool()], 1)
    noisy["residual_features"][1, 1:] = 1e3 * torch.randn(4, D)  # garbage in clip 1's padding
    ref = _probe(model, batch)
    got = _probe(model, noisy)
    assert torch.allclose(ref, got, atol=1e-5)
    assert torch.allclose(ref[1:], _probe(model, alone, slice(1, 2)), atol=1e-5)  # nor how long the batch's longest clip is


def test_overfits_solid_colours_and_samples_them(wan_dir: Path) -> None:
    frames = COLOURS[:, None, None, None, :].expand(4, T, SIDE, SIDE, 3).contiguous()
    batch = _batch([2, 2, 2, 2], seed=3, frames=frames)
    model = VTokDecoder(_cfg(cond_dropout=0.0))  # from scratch, model.dit's sizes
    history = _train(model, batch, steps=120)
    first, last = sum(history[:10]) / 10, sum(history[-10:]) / 10
    assert last < 0.5 * first, (first, last)
    out = model.sample(batch, steps=10, generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and out.shape == (4, T, SIDE, SIDE, 3)
    mean = out.float().mean((1, 2, 3))  # [4, 3] each clip's mean colour
    err = (mean - COLOURS.float()).abs().max(1).values  # [4] worst channel, in 0..255
    nearest = torch.cdist(mean, COLOURS.float()).argmin(1)
    print(f"sampled mean colours {mean.round().tolist()}, worst channel error {err.tolist()}")
    assert nearest.tolist() == [0, 1, 2, 3] and float(err.max()) < 60, (mean, err)
    again = model.sample(batch, steps=10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # deterministic given the generator


def _transformer_state(model: VTokDecoder) -> dict[str, torch.Tensor]:
    """The transformer's own weights by their diffusers names (peft's base_layer wrappers undone)."""
    return {k.replace(".base_layer.", "."): v.detach().clone()
            for k, v in model.transformer.state_dict().items() if ".lora_" not in k}


@pytest.mark.parametrize("mode", ["frozen", "lora"])
def test_frozen_and_lora_train_only_their_parts(wan_dir: Path, mode: str) -> None:
    model = VTokDecoder(_cfg(transformer_mode=mode), wan_dir)
    trainable = list(model.trainable_state_dict())
    lora = [n for n in trainable if not n.startswith("adapter.")]
    assert all(n.startswith("adapter.") or (mode == "lora" and ".lora_" in n) for n in trainable)
    assert bool(lora) == (mode == "lora")
    before, adapter_before = _transformer_state(model), model.adapter.key_in[1].weight.detach().clone()
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if n in lora}
    _train(model, _batch([2, 1]), steps=3)
    after = _transformer_state(model)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(adapter_before, model.adapter.key_in[1].weight)
    changed = [n for n, p in model.named_parameters() if n in lora and not torch.equal(lora_before[n], p)]
    assert len(changed) > len(lora) // 2 if lora else not changed


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_save_and_from_pretrained_round_trip(wan_dir: Path, tmp_path: Path, mode: str) -> None:
    from diffusers import WanTransformer3DModel

    from vtok.training.checkpoint import load_checkpoint, save_checkpoint

    batch = _batch([3, 2])
    model = VTokDecoder(_cfg(transformer_mode=mode), wan_dir)
    _train(model, batch, steps=2)
    out = model.save_pretrained(tmp_path / "decoder")
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES.values())
    plain = WanTransformer3DModel.from_pretrained(out / FILES["transformer"])  # a plain diffusers directory
    base = _transformer_state(model)
    assert set(plain.state_dict()) == set(base) and all(torch.equal(v, base[k]) for k, v in plain.state_dict().items())
    loaded = VTokDecoder.from_pretrained(out)
    assert torch.equal(_probe(model, batch), _probe(loaded, batch))
    gen = [torch.Generator().manual_seed(5) for _ in range(2)]
    assert torch.equal(model.sample(batch, steps=3, generator=gen[0]), loaded.sample(batch, steps=3, generator=gen[1]))
    # The training loop's checkpoint: all trainable weights in one safetensors file, restored into a fresh model.
    uri = save_checkpoint(str(tmp_path / "run"), 2, tensors={"trainable.safetensors": model.trainable_state_dict()})
    fresh = VTokDecoder(_cfg(transformer_mode=mode), wan_dir)
    fresh.load_trainable_state_dict(load_checkpoint(uri).tensors["trainable.safetensors"])
    assert torch.equal(_probe(model, batch), _probe(fresh, batch))


def test_guidance(wan_dir: Path) -> None:
    model = VTokDecoder(_cfg(), wan_dir)
    batch = _batch([2, 1])
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 3, T, SIDE, SIDE, generator=g), torch.tensor([900.0, 300.0])
    with torch.no_grad():
        torch.nn.init.normal_(model.adapter.null, std=1.0)  # a null sequence unlike the conditional one
        states, mask = model.adapter(model.conditioning(batch))
        cond = model.transformer_forward(x, t, states, mask)
        assert torch.equal(model.velocity(x, t, states, mask, 1.0), cond)
        null_states, null_mask = model.adapter(model.conditioning(batch), drop=torch.ones(2, dtype=torch.bool))
        null = model.transformer_forward(x, t, null_states, null_mask)
        assert not torch.allclose(cond, null)
        assert torch.allclose(model.velocity(x, t, states, mask, 3.0), null + 3.0 * (cond - null), atol=1e-5)
    plain = model.sample(batch, steps=2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(plain, model.sample(batch, steps=2, guidance=1.0, generator=torch.Generator().manual_seed(1)))
    guided = model.sample(batch, steps=2, guidance=4.0, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(plain, guided)


def test_latent_space_decodes_through_the_vae(wan_dir: Path, vae_dir: Path) -> None:
    vae = load_vae(vae_dir)
    frames = torch.randint(0, 256, (2, 5, SIDE, SIDE, 3), dtype=torch.uint8)
    latents = encode_latents(vae, frames)  # [B, 4, 3, 8, 8]
    assert latents.shape == (2, 4, 3, 8, 8)
    assert decode_latents(vae, latents).shape == (2, 5, SIDE, SIDE, 3)
    cfg = _cfg(space="latents", vae=str(vae_dir), num_frames=3, height=8, width=8, dit=DiTSizes(patch_size=[1, 2, 2]))
    model = VTokDecoder(cfg)  # from scratch: channels from the VAE's z_dim
    batch = {**_batch([2, 1]), "latents": latents, "latents_mask": torch.ones(2, 3, dtype=torch.bool)}
    assert torch.isfinite(model(batch)["loss"])
    out = model.sample(batch, steps=2, generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and out.shape == (2, 5, SIDE, SIDE, 3)
    assert torch.equal(pixels_to_frames(frames_to_pixels(frames)), frames)


def test_bad_inputs_are_named(wan_dir: Path, vae_dir: Path) -> None:
    model = VTokDecoder(_cfg(), wan_dir)
    wide = _batch([2, 1])
    wide["key_tokens"] = torch.randn(2, S, D + 1)
    with pytest.raises(ValueError, match="model.token_dim"):
        model(wide)
    bad_res = _batch([2, 1])
    bad_res["residual_features"] = torch.randn(2, 2, D + 2)
    with pytest.raises(ValueError, match="model.residual_dim"):
        model(bad_res)
    with pytest.raises(ValueError, match="model.num_key"):
        model({**_batch([1]), "key_tokens": torch.randn(1, S + 1, D)})
    with pytest.raises(ValueError, match=r"model.transformer=.*'AutoencoderKLWan'"):
        VTokDecoder(_cfg(), vae_dir)
    with pytest.raises(ValueError, match=r"model.vae=.*'WanTransformer3DModel'"):
        load_vae(wan_dir)
    with pytest.raises(ValueError, match=r"model.num_frames/height/width.*patch_size=\[1, 4, 4\]"):
        VTokDecoder(_cfg(height=18), wan_dir)
    odd = _batch([1], frames=torch.zeros(1, T, 18, SIDE, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="frames_lowres are 18x16"):
        model(odd)
    with pytest.raises(ValueError, match=r"size: .*not divisible"):
        model.sample(_batch([1]), steps=1, size=(T, 18, 16))
    with pytest.raises(ValueError, match="model.space=pixels needs frames_lowres"):
        model({k: v for k, v in _batch([1]).items() if k != "frames_lowres"})
    with pytest.raises(ValueError, match="model.tokens=frame_sampling needs frame_tokens"):
        VTokDecoder(_cfg(tokens="frame_sampling"), wan_dir)({k: v for k, v in _batch([1]).items()
                                                             if k != "frame_tokens"})
    with pytest.raises(ValueError, match="model.token_dim and model.num_key"):
        VTokDecoder(DecoderConfig(num_frames=T, height=SIDE, width=SIDE), wan_dir)
