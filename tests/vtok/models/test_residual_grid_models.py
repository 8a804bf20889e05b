"""The MLLM and the decoder on residual-grid tokens (tokenizer.residual_grid = 2): S + r*r*R visual slots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pipelines.decode.generate import check_pair
from pipelines.train.decoder_checks import check_tokens, resolve_decoder
from vtok.errors import InputError
from vtok.eval.questions import template_texts
from vtok.models.decoder import VTokDecoder
from vtok.models.decoder_adapter import conditioning
from vtok.models.decoder_config import DecoderConfig
from vtok.models.decoder_tiny import save_tiny_wan
from vtok.models.feature_stats import FeatureStats
from vtok.models.mllm import FILES, VTokLM
from vtok.models.mllm_config import MLLMConfig
from vtok.models.text import load_text_tokenizer, train_word_tokenizer
from vtok.models.tiny_llm import save_tiny_llm
from vtok.shapes import ShapesConfig, generate
from vtok.training.batching import collate_tokens
from vtok.training.mllm_batch import KEY, RESIDUAL, MLLMCollator

S, D, CELLS = 4, 16, 4
"""Key tokens, token width, and r*r residual cells per step (r = 2)."""

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rows(steps: tuple[int, ...] = (3, 1)) -> list[dict[str, Any]]:
    """Shapes clips with random tokens: R steps of r*r = 4 residual rows each."""
    rng = np.random.default_rng(0)
    rows = []
    for i, r in enumerate(steps):
        video = generate(2, i, ShapesConfig(width=64, height=64, num_frames=2))
        rows.append({"sample_key": f"k{i}", "caption": video.caption, "attributes": json.dumps(video.attributes()),
                     "key_tokens": rng.normal(size=(S, D)).astype(np.float32),
                     "residual_features": rng.normal(size=(r * CELLS, D)).astype(np.float32) * 0.1,
                     "frame_tokens": rng.normal(size=(r + 1, S, D)).astype(np.float32)})
    return rows


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, FeatureStats]:
    """(text tokenizer dir, tiny LM dir, r = 2 feature statistics)."""
    rows = _rows()
    tok_dir = tmp_path_factory.mktemp("tok")
    train_word_tokenizer([*template_texts(), *(r["caption"] for r in rows)], tok_dir)
    llm = save_tiny_llm(tmp_path_factory.mktemp("llm"), len(load_text_tokenizer(tok_dir)), seed=0)
    return tok_dir, llm, FeatureStats(residual_grid=2).update(collate_tokens(rows)).finish()


def test_mllm_batch_lays_out_s_plus_r_r_r_slots(parts: tuple[Path, Path, FeatureStats]) -> None:
    tok_dir, _, stats = parts
    batch = MLLMCollator(load_text_tokenizer(tok_dir), MLLMConfig(), stats)(_rows())
    v = batch.visual
    assert v.lengths == [S + 3 * CELLS, S + 1 * CELLS] and v.kind.shape == (2, S + 12)
    assert v.kind[0].tolist() == [KEY] * S + [RESIDUAL] * 12
    assert v.cell[0].tolist() == [0, 1, 2, 3] + [S + c for c in (0, 1, 2, 3)] * 3  # cells S..S+3, not "none"
    assert v.time[0].tolist() == [0] * S + [1] * 4 + [2] * 4 + [3] * 4  # one time step per r*r cells
    assert stats.max_residual == 12 and stats.residual_grid == 2
    # A clip whose rows are not whole 2x2 steps (r = 1 data under an r = 2 model) is refused, naming the key.
    bad = [{**_rows()[0], "residual_features": np.zeros((3, D), np.float32)}]
    with pytest.raises(ValueError, match=r"not a whole number of steps of r\*r=4 cells \(tokenizer\.residual_grid=2\)"):
        MLLMCollator(load_text_tokenizer(tok_dir), MLLMConfig(), stats)(bad)


def test_mllm_forward_generate_and_save_with_r2(parts: tuple[Path, Path, FeatureStats], tmp_path: Path) -> None:
    tok_dir, llm, stats = parts
    model = VTokLM(MLLMConfig(llm_mode="frozen"), load_text_tokenizer(tok_dir), stats, llm_dir=llm)
    assert model.cell_embed.num_embeddings == S + CELLS
    out = model(MLLMCollator(model.tokenizer, model.cfg, stats)(_rows()))
    assert torch.isfinite(out["loss"]) and int(out["num_visual_targets"]) == (S + 12) + (S + 4)
    out["loss"].backward()
    grad = model.cell_embed.weight.grad
    assert grad is not None and bool((grad[S:].abs().sum(1) > 0).all())  # every residual cell is used
    key, residual = model.generate_tokens("a red circle")
    assert key.shape == (S, D) and residual.shape == (12, D)
    saved = model.save_pretrained(tmp_path / "m")
    assert json.loads((saved / FILES["config"]).read_text())["residual_grid"] == 2
    again = VTokLM.from_pretrained(saved)
    assert again.stats.residual_grid == 2 and again.cell_embed.num_embeddings == S + CELLS
    # r = 1 statistics keep today's bytes: no residual_grid in their metadata.
    from safetensors import safe_open

    one = FeatureStats().update(collate_tokens(_rows())).finish().save(tmp_path / "one.safetensors")
    with safe_open(str(one), framework="pt") as f:
        assert "residual_grid" not in (f.metadata() or {})


def test_decoder_conditions_on_r_r_r_slots_and_checks_the_grid(tmp_path: Path) -> None:
    cfg = DecoderConfig(token_dim=D, num_key=S, residual_grid=2, num_frames=4, height=16, width=16)
    rows = _rows()
    batch = collate_tokens(rows) | {"frames_lowres": torch.zeros(2, 4, 16, 16, 3, dtype=torch.uint8)}
    model = VTokDecoder(cfg, save_tiny_wan(tmp_path / "wan", seed=0))
    assert model.adapter.cell_embed.num_embeddings == S + CELLS
    states, mask = model.adapter(conditioning(batch, cfg))
    assert states.shape[:2] == (2, S + 12) and mask.sum(1).tolist() == [S + 12, S + 4]
    assert torch.isfinite(model(batch)["loss"])
    # The data decides r for a new decoder; a trained one must match the data and the MLLM.
    manifest = {"tokenizer": {"hidden_size": D, "grid": 2, "residual_grid": 2, "frame_tokens": True},
                "targets": {"frames_lowres": [16, 16, 3]}, "frame_counts": {"4": 2}}
    fresh = DecoderConfig(dit={"patch_size": [1, 4, 4]})
    assert resolve_decoder(fresh, manifest, "data").residual_grid == 2
    assert resolve_decoder(fresh, {**manifest, "tokenizer": {**manifest["tokenizer"], "residual_grid": None}},
                           "data").residual_grid is None
    with pytest.raises(InputError, match=r"decoder=d: its residual_grid=1, but data was tokenized with "
                                         r"tokenizer\.residual_grid=2"):
        check_tokens(DecoderConfig(token_dim=D, num_key=S), manifest, "data", where="decoder=d")
    with pytest.raises(InputError, match=r"tokenizer\.residual_grid=2\), decoder=d reads model\.residual_grid=1"):
        check_pair({"mllm": {"tokens": "vtok"}, "feature_dim": D, "num_key": S, "residual_grid": 2},
                   DecoderConfig(token_dim=D, num_key=S), "m", "d")
    check_pair({"mllm": {"tokens": "vtok"}, "feature_dim": D, "num_key": S, "residual_grid": 2}, cfg, "m", "d")
