"""tokenizer.residual_grid = r: each residual step pooled to an r x r grid, r*r residual tokens per step."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from schemas.tokens import (
    num_residual_tokens,
    residual_grid_of,
    residual_rows_text,
    vtok_formula,
    vtok_tokens,
)
from vtok.shapes import ShapesConfig, generate
from vtok.tokenizer import VTokTokenizer, pool_grid
from vtok.tokenizer_spec import TokenizerConfig, TokenizerSpec

CFG64 = ShapesConfig(width=64, height=64, num_frames=12, fps=8.0)

# What vtok produced before residual_grid existed, for the default tiny CLIP and generate(0, 1, CFG64, static=False):
# the dataset fingerprint every existing default dataset carries, and sha256 of each token array's bytes.
LEGACY_FINGERPRINT = "727fbaebcb45d753a778d5faf56ce2cd45f6820f74a4e3b1a1f3258a848a072b"
LEGACY_TOKENS_SHA256 = {
    "key_tokens": "3325c04549c9c87e35b27bcf4e6e3a20fc75193c42325a91fa1d55fc6b6ea860",
    "residual_features": "8e8d32ab2244076ee7439d3df838e90eec49099e7243cf2961f305e5e11e4a3e",
    "frame_tokens": "ec8bd469584e1eef041eaf1d6c24def9316f5cb77d52ffef054ac8a12b540767",
}
LEGACY_DESCRIBE_KEYS = {"compute_dtype", "feature_layer", "frame_tokens", "g_phi", "grid", "hidden_size", "image_size",
                        "mean", "model_config", "model_type", "patch_size", "residual_stride", "std"}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def moving() -> np.ndarray:
    return generate(0, 1, CFG64, static=False).frames  # [12, 64, 64, 3]


def test_r1_gives_todays_tokens_and_fingerprint_bit_for_bit(tiny_clip_dir: Path, moving: np.ndarray) -> None:
    for cfg in (TokenizerConfig(encoder=str(tiny_clip_dir)), TokenizerConfig(encoder=str(tiny_clip_dir), residual_grid=1)):
        tok = VTokTokenizer(cfg)
        assert tok.fingerprint == LEGACY_FINGERPRINT
        assert set(tok.describe()) == LEGACY_DESCRIBE_KEYS  # no residual_grid key at r = 1
        (out,) = tok.encode([moving])
        assert out.residual_features.shape == (11, 64)
        for name, digest in LEGACY_TOKENS_SHA256.items():
            assert hashlib.sha256(getattr(out, name).tobytes()).hexdigest() == digest, name


def test_r2_shapes_layout_and_fingerprint(tiny_clip_dir: Path, moving: np.ndarray, tmp_path: Path) -> None:
    g_phi = tmp_path / "g_phi.safetensors"
    torch.manual_seed(0)
    save_file({"fc1.weight": torch.randn(32, 64), "fc1.bias": torch.zeros(32), "fc2.weight": torch.randn(24, 32),
               "fc2.bias": torch.zeros(24)}, str(g_phi))
    tok = VTokTokenizer(TokenizerConfig(encoder=str(tiny_clip_dir), residual_grid=2, g_phi=str(g_phi)))
    static = generate(3, 0, CFG64, static=True).frames
    out, still = tok.encode([moving, static])
    assert out.key_tokens.shape == (16, 64) and out.frame_tokens is not None and out.frame_tokens.shape == (12, 16, 64)
    assert out.residual_features.shape == (11 * 4, 64)  # [R * r*r, D]
    assert out.residual_tokens is not None and out.residual_tokens.shape == (44, 24)
    assert np.all(still.residual_features == 0.0)
    # The stored rows are step-major, cells row-major: reshape(R, r, r, D) is each step's 2x2 grid of changes.
    # The 8x8 patches pool to 4x4 (frame_tokens) and on to 2x2 exactly as straight to 2x2 (equal blocks).
    grid2 = pool_grid(torch.from_numpy(out.frame_tokens), 2).numpy()  # [T, 4, D]
    np.testing.assert_allclose(out.residual_features.reshape(11, 4, 64), grid2[1:] - grid2[0:1], atol=1e-5)
    cells = out.residual_features.reshape(11, 2, 2, 64)
    np.testing.assert_array_equal(cells[3, 1, 0], out.residual_features[3 * 4 + 1 * 2 + 0])
    # The mean of a step's r*r cells is the r = 1 residual of that step.
    (one,) = VTokTokenizer(TokenizerConfig(encoder=str(tiny_clip_dir))).encode([moving])
    np.testing.assert_allclose(out.residual_features.reshape(11, 4, 64).mean(1), one.residual_features, atol=1e-5)
    assert tok.describe()["residual_grid"] == 2
    assert tok.fingerprint != LEGACY_FINGERPRINT
    assert VTokTokenizer(TokenizerConfig(encoder=str(tiny_clip_dir), residual_grid=3)).fingerprint != tok.fingerprint


def test_r2_with_stride_and_no_baseline_and_a_single_frame(tiny_clip_dir: Path, moving: np.ndarray) -> None:
    tok = VTokTokenizer(TokenizerConfig(encoder=str(tiny_clip_dir), residual_grid=2, residual_stride=3,
                                        frame_tokens=False))
    out, single = tok.encode([moving, moving[:1]])
    assert out.residual_features.shape == (3 * 4, 64) and out.frame_tokens is None  # steps at 3, 6, 9
    assert single.residual_features.shape == (0, 64)


def test_bad_residual_grid_is_refused_naming_the_key(tiny_clip_dir: Path) -> None:
    for bad in (0, -1):
        with pytest.raises(ValueError, match=r"^tokenizer\.residual_grid must be >= 1, got"):
            TokenizerConfig(residual_grid=bad)
    # The tiny CLIP has 8x8 patches: a 9x9 grid would have cells without a patch.
    with pytest.raises(ValueError, match=r"^tokenizer\.residual_grid 9 exceeds the encoder's 8x8 patches"):
        TokenizerSpec.load(TokenizerConfig(encoder=str(tiny_clip_dir), residual_grid=9), "float32")
    assert TokenizerSpec.load(TokenizerConfig(encoder=str(tiny_clip_dir), residual_grid=8), "float32").describe()[
        "residual_grid"] == 8


def test_token_count_rules() -> None:
    assert residual_grid_of({}) == 1 and residual_grid_of(None) == 1 and residual_grid_of({"residual_grid": 2}) == 2
    assert num_residual_tokens(16, 1) == 15 and num_residual_tokens(16, 1, 2) == 60 and num_residual_tokens(16, 3, 3) == 45
    assert vtok_tokens(16, 4, 1) == 31 and vtok_tokens(16, 4, 1, 2) == 16 + 60 and vtok_tokens(1, 4, 1, 2) == 16
    assert vtok_formula(1) == "S+R" and vtok_formula(2) == "S+r*r*R"
    assert residual_rows_text(5, 1) == "R=5" and residual_rows_text(5, 2) == "r*r*R=4*5=20"
