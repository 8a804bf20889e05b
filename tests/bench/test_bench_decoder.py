"""bench.decoder: the WAN2.2-5B-like config is 5B-sized, a shrunk realistic contender runs and measures what
it says, the table's ratios, and the refusal without CUDA."""

from __future__ import annotations

import argparse

import pytest

from bench.decoder import WAN22_TI2V_5B, S, run_one, scaled_wan, step_rows


def _args(**over: object) -> argparse.Namespace:
    base = dict(realistic=True, device="cpu", scale=0.02, latent=[2, 8, 8], transformer_mode="frozen",
                checkpointing=False, batch=2, side=16, threads=1, repeats=1, key_tokens=S)
    return argparse.Namespace(**{**base, **over})


def test_the_realistic_dit_has_wan22_ti2v_5b_size() -> None:
    import torch

    from vtok.models.decoder import new_transformer
    from vtok.models.decoder_config import DecoderConfig, DiTSizes

    assert scaled_wan(1.0) == WAN22_TI2V_5B
    cfg = DecoderConfig(space="latents", dit=DiTSizes(**scaled_wan(1.0)), token_dim=1024, num_key=S)
    with torch.device("meta"):  # shapes only: 20 GB of fp32 weights are never allocated
        transformer = new_transformer(cfg)
    params = sum(p.numel() for p in transformer.parameters())
    assert 4.9e9 < params < 5.1e9, params
    assert transformer.config.in_channels == 48 and transformer.config.text_dim == 4096
    assert transformer.blocks[0].attn1.inner_dim == 3072 and len(transformer.blocks) == 30
    with pytest.raises(SystemExit, match="--scale must be in"):
        scaled_wan(0.0)


def test_a_shrunk_realistic_contender_measures_both_conditionings() -> None:
    import torch

    t, threads = 8, torch.get_num_threads()
    try:
        vtok = run_one("vtok", t, _args())
        frames = run_one("frame_sampling", t, _args())
    finally:
        torch.set_num_threads(threads)  # run_one is a child's whole life: it sets the thread count
    assert (vtok["cond_len"], frames["cond_len"]) == (S + t - 1, t * S)
    # The DiT's own input is the same: latents 2 x 8 x 8 patched 1 x 2 x 2.
    assert vtok["video_tokens"] == frames["video_tokens"] == 2 * 4 * 4
    # The same model; VTok also trains the adapter's residual input.
    assert vtok["params"] == frames["params"] and vtok["trainable"] > frames["trainable"]
    assert vtok["step_s"] > 0 and len(vtok["step_s_all"]) == 1
    assert 0 < vtok["flops_per_step"] < frames["flops_per_step"]  # the longer context costs FLOPs
    text = step_rows([vtok, frames], realistic=True)
    ratio = frames["step_s"] / vtok["step_s"]
    assert f"| {ratio:.2f}x" in text.splitlines()[-1] and "| 1.00x" in text.splitlines()[-2]


def test_realistic_refuses_without_cuda() -> None:
    import torch

    from bench.decoder import _require_cuda

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit, match="needs a GPU"):
        _require_cuda(_args(device="cuda"))
    _require_cuda(_args(device="cpu"))  # the shrunk CPU path is allowed
