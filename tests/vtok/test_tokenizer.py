from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from schemas.tokens import residual_positions
from vtok.shapes import ShapesConfig, generate
from vtok.tokenizer import GPhi, VTokTokenizer, pool_grid
from vtok.tokenizer_spec import TokenizerConfig

CFG64 = ShapesConfig(width=64, height=64, num_frames=12, fps=8.0)


@pytest.fixture(scope="module")
def tokenizer(tiny_clip_dir: Path) -> VTokTokenizer:
    return VTokTokenizer(TokenizerConfig(encoder=str(tiny_clip_dir)))


def test_token_counts_are_s_plus_r_and_baseline_t_times_s(tokenizer: VTokTokenizer) -> None:
    frames = generate(0, 1, CFG64, static=False).frames
    (tok,) = tokenizer.encode([frames])
    t, d = frames.shape[0], tokenizer.hidden_size
    assert tok.key_tokens.shape == (16, d)
    assert tok.residual_features.shape == (t - 1, d)
    assert tok.frame_tokens is not None and tok.frame_tokens.shape == (t, 16, d)
    # The key tokens are the first frame's pooled grid.
    np.testing.assert_array_equal(tok.key_tokens, tok.frame_tokens[0])
    assert tok.key_tokens.dtype == np.float32


@pytest.mark.parametrize("stride,t,expected", [(1, 12, 11), (3, 12, 3), (6, 12, 1), (6, 13, 2), (1, 1, 0)])
def test_residual_stride(tiny_clip_dir: Path, stride: int, t: int, expected: int) -> None:
    assert len(residual_positions(t, stride)) == expected
    tok = VTokTokenizer(TokenizerConfig(encoder=str(tiny_clip_dir), residual_stride=stride, frame_tokens=False))
    frames = generate(0, 2, replace(CFG64, num_frames=max(t, 2)), static=False).frames[:t]
    (out,) = tok.encode([frames])
    assert out.residual_features.shape[0] == expected
    assert out.frame_tokens is None


def test_residuals_zero_for_static_and_not_for_moving(tokenizer: VTokTokenizer) -> None:
    static = generate(3, 0, CFG64, static=True).frames
    moving = generate(3, 1, CFG64, static=False).frames
    s, m = tokenizer.encode([static, moving])
    assert np.all(s.residual_features == 0.0)
    norms = np.linalg.norm(m.residual_features, axis=1)
    assert np.all(norms > 1e-3)


def test_residual_is_mean_pooled_difference(tokenizer: VTokTokenizer) -> None:
    frames = generate(5, 0, CFG64, static=False).frames
    (tok,) = tokenizer.encode([frames])
    # frame_tokens are a g x g average pool of the patches, so their mean is the global patch mean.
    means = tok.frame_tokens.mean(axis=1)
    np.testing.assert_allclose(tok.residual_features, means[1:] - means[0], atol=1e-5)


def test_tokens_do_not_depend_on_batching(tokenizer: VTokTokenizer) -> None:
    a = generate(1, 0, CFG64).frames
    b = generate(1, 1, replace(CFG64, num_frames=40)).frames  # spans two micro-batches
    together = tokenizer.encode([a, b])
    alone = tokenizer.encode([a]) + tokenizer.encode([b])
    for x, y in zip(together, alone):
        assert x.key_tokens.tobytes() == y.key_tokens.tobytes()
        assert x.residual_features.tobytes() == y.residual_features.tobytes()
        assert x.frame_tokens.tobytes() == y.frame_tokens.tobytes()


def test_fingerprint_tracks_config_and_weights(tiny_clip_dir: Path, tmp_path: Path) -> None:
    base = VTokTokenizer(TokenizerConfig(encoder=str(tiny_clip_dir)))
    again = VTokTokenizer(TokenizerConfig(encoder=str(tiny_clip_dir)))
    assert base.fingerprint == again.fingerprint and len(base.fingerprint) == 64
    assert VTokTokenizer(TokenizerConfig(encoder=str(tiny_clip_dir), grid=2)).fingerprint != base.fingerprint
    # Same architecture, one weight nudged: another fingerprint.
    from transformers import CLIPVisionModel

    model = CLIPVisionModel.from_pretrained(tiny_clip_dir)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1e-3
    model.save_pretrained(tmp_path / "nudged")
    assert VTokTokenizer(TokenizerConfig(encoder=str(tmp_path / "nudged"))).fingerprint != base.fingerprint


def test_siglip_tower_has_no_cls_and_works(tiny_siglip_dir: Path) -> None:
    tok = VTokTokenizer(TokenizerConfig(encoder=str(tiny_siglip_dir), grid=2))
    assert tok.model_type == "siglip_vision_model"
    (out,) = tok.encode([generate(2, 0, CFG64, static=False).frames])
    assert out.key_tokens.shape == (4, 64)
    assert out.frame_tokens.shape == (12, 4, 64)


def test_pool_grid_averages_blocks_of_patches() -> None:
    # An 8x8 grid of values 0..63 (row-major) pooled to 2x2: each token is the mean of a 4x4 block.
    pooled = pool_grid(torch.arange(64.0).view(1, 64, 1), 2)[0, :, 0].tolist()
    assert pooled == [13.5, 17.5, 45.5, 49.5]


def test_g_phi_projects_residuals(tiny_clip_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    g = GPhi(64, 32, 48)
    save_file(g.state_dict(), tmp_path / "g_phi.safetensors")
    tok = VTokTokenizer(TokenizerConfig(encoder=str(tiny_clip_dir), g_phi=str(tmp_path / "g_phi.safetensors")))
    (out,) = tok.encode([generate(4, 0, CFG64, static=False).frames])
    assert out.residual_tokens is not None and out.residual_tokens.shape == (11, 48)
    with torch.no_grad():
        expected = g(torch.from_numpy(out.residual_features)).numpy()
    np.testing.assert_allclose(out.residual_tokens, expected, atol=1e-5)
    plain = VTokTokenizer(TokenizerConfig(encoder=str(tiny_clip_dir)))
    assert plain.fingerprint != tok.fingerprint


def test_g_phi_with_wrong_tensors_is_refused(tiny_clip_dir: Path, tmp_path: Path) -> None:
    save_file({"w": torch.zeros(2, 2)}, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="bad.safetensors: g_phi needs tensors"):
        VTokTokenizer(TokenizerConfig(encoder=str(tiny_clip_dir), g_phi=str(tmp_path / "bad.safetensors")))


def test_wrong_frame_size_is_an_error(tokenizer: VTokTokenizer) -> None:
    with pytest.raises(AssertionError, match="frames must be 64x64"):
        tokenizer.encode([np.zeros((2, 32, 32, 3), np.uint8)])


@pytest.mark.parametrize(
    "field,value,match",
    [("grid", 0, "tokenizer.grid"), ("residual_stride", 0, "tokenizer.residual_stride"),
     ("dtype", "fp8", "tokenizer.dtype"), ("device", "tpu", "tokenizer.device")],
)
def test_bad_config_names_the_field(field: str, value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TokenizerConfig(**{field: value})


def test_missing_encoder_dir_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope"):
        VTokTokenizer(TokenizerConfig(encoder=str(tmp_path / "nope")))
