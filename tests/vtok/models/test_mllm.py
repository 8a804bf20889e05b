"""The MLLM on real tiny-CLIP tokens of single-object shapes clips, trained briefly on CPU with AdamW."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from vtok.eval.questions import questions_for
from vtok.models.feature_stats import FeatureStats
from vtok.models.mllm import FILES, VTokLM
from vtok.models.mllm_config import MLLMConfig
from vtok.models.text import load_text_tokenizer
from vtok.tokenizer import GPhi
from vtok.training.mllm_batch import MLLMCollator

Rows = list[dict[str, Any]]
STEPS, BATCH, LR = 300, 16, 2e-3
"""The short training run behind the accuracy and loss tests."""


# Tiny matrices: one intra-op thread is faster than two on a busy 2-core machine (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _train(
    model: VTokLM, rows: Rows, steps: int, batch: int = BATCH, lr: float = LR
) -> list[dict[str, float]]:
    """Plain AdamW over random batches of `rows`; returns each step's losses."""
    collate = MLLMCollator(model.tokenizer, model.cfg, model.stats, seed=0)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(0)
    history = []
    model.train()
    for step in range(steps):
        out = model(collate([rows[i] for i in rng.choice(len(rows), batch, replace=False)], step=step))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        history.append({k: float(v.detach()) for k, v in out.items()})
    model.eval()
    return history


def _build(cfg: MLLMConfig, tokenizer_dir: Path, stats: FeatureStats, llm: Path) -> VTokLM:
    return VTokLM(cfg, load_text_tokenizer(tokenizer_dir), stats, llm_dir=llm)


@pytest.fixture(scope="module", params=["vtok", "frame_sampling"])
def trained(
    request: pytest.FixtureRequest,
    split_rows: tuple[Rows, Rows],
    feature_stats: FeatureStats,
    text_tokenizer_dir: Path,
    tiny_llm_dir: Path,
) -> tuple[VTokLM, list[dict[str, float]]]:
    """A fully trained tiny LM per token kind (the baseline on K=4 of the 8 frames)."""
    cfg = MLLMConfig(
        llm_mode="full", tokens=request.param, frames=4 if request.param == "frame_sampling" else None
    )
    torch.manual_seed(0)
    model = _build(cfg, text_tokenizer_dir, feature_stats, tiny_llm_dir)
    return model, _train(model, split_rows[0], STEPS)


def test_both_losses_are_finite_and_fall(trained: tuple[VTokLM, list[dict[str, float]]]) -> None:
    _, history = trained
    for name in ("loss_understanding", "loss_generation"):
        values = np.array([h[name] for h in history])
        assert np.isfinite(values).all()
        first, last = values[:10].mean(), values[-10:].mean()
        print(f"{name}: {first:.3f} -> {last:.3f}")
        assert last < (0.5 if name == "loss_understanding" else 0.8) * first, (name, first, last)
    assert history[0]["num_answer_tokens"] > 0 and history[0]["num_visual_targets"] > 0


def test_heldout_colour_accuracy_is_clearly_above_chance(
    trained: tuple[VTokLM, list[dict[str, float]]], split_rows: tuple[Rows, Rows]
) -> None:
    model, _ = trained
    hits, chance = [], []
    for row in split_rows[1]:
        for q in questions_for(row["attributes"]):
            if q.category == "color":
                scores = model.score_choices(row, q.text, q.candidates)
                assert len(scores) == len(q.candidates) and all(np.isfinite(scores))
                hits.append(q.candidates[int(np.argmax(scores))] == q.answer)
                chance.append(1.0 / len(q.candidates))
    acc, base = float(np.mean(hits)), float(np.mean(chance))
    print(
        f"{model.cfg.tokens}: held-out colour accuracy {acc:.3f} over {len(hits)} questions (chance {base:.3f}); "
        f"{STEPS} steps, batch {BATCH}, lr {LR}"
    )
    assert len(hits) >= 20 and acc >= 0.5 > 2.5 * base


def test_generate_tokens_in_the_shard_format_and_as_trained(
    trained: tuple[VTokLM, list[dict[str, float]]], split_rows: tuple[Rows, Rows]
) -> None:
    model, _ = trained
    caption = split_rows[1][0]["caption"]
    s, d = model.num_key, model.dim
    if model.cfg.tokens == "vtok":
        key, res = model.generate_tokens(caption, num_key=s, num_residual=7)
        assert key.shape == (s, d) and res.shape == (7, d)
        row = {"key_tokens": key, "residual_features": res}
        arrays = [key, res]
    else:
        frames = model.generate_tokens(caption)
        assert frames.shape == (4, s, d)
        row = {"key_tokens": frames[0], "frame_tokens": frames}
        arrays = [frames]
    assert all(a.dtype == np.float32 and np.isfinite(a).all() for a in arrays)
    # Fed back teacher-forced, the generated tokens are predicted again: generation used training's input path.
    gen_only = MLLMCollator(model.tokenizer, replace(model.cfg, understanding_weight=0.0), model.stats)
    batch = gen_only([{"sample_key": "g", "caption": caption, **row}])
    with torch.no_grad():
        pred, target = model.visual_predictions(batch, model.hidden_states(batch))
    torch.testing.assert_close(pred, target, atol=2e-3, rtol=1e-3)


def test_save_and_load_give_identical_outputs_and_a_pluggable_g_phi(
    trained: tuple[VTokLM, list[dict[str, float]]],
    split_rows: tuple[Rows, Rows],
    tmp_path: Path,
    tiny_clip_dir: Path,
) -> None:
    model, _ = trained
    out = model.save_pretrained(tmp_path / "ckpt")
    assert {p.name for p in out.iterdir()} == {
        FILES[k] for k in ("trainable", "g_phi", "stats", "config", "tokenizer", "llm")
    }
    back = VTokLM.from_pretrained(out)
    _assert_same_outputs(model, back, split_rows[1][:4])
    g_phi = GPhi.from_safetensors(out / FILES["g_phi"])
    for name, value in model.g_phi.state_dict().items():
        assert torch.equal(g_phi.state_dict()[name], value)
    if model.cfg.tokens == "vtok":
        # The pipeline's tokenizer takes the file as is and emits g_phi(residual_features).
        from vtok.shapes import ShapesConfig, generate
        from vtok.tokenizer import VTokTokenizer
        from vtok.tokenizer_spec import TokenizerConfig

        tok = VTokTokenizer(
            TokenizerConfig(encoder=str(tiny_clip_dir), g_phi=str(out / FILES["g_phi"]), frame_tokens=False)
        )
        (clip,) = tok.encode(
            [generate(0, 0, ShapesConfig(width=64, height=64, num_frames=8), static=False).frames]
        )
        with torch.no_grad():
            expect = model.g_phi(torch.from_numpy(clip.residual_features)).numpy()
        np.testing.assert_allclose(clip.residual_tokens, expect, rtol=1e-5, atol=1e-6)


def _assert_same_outputs(a: VTokLM, b: VTokLM, rows: Rows) -> None:
    a.eval()
    b.eval()
    batch = MLLMCollator(a.tokenizer, a.cfg, a.stats)(rows, step=3)
    assert torch.equal(MLLMCollator(b.tokenizer, b.cfg, b.stats)(rows, step=3).input_ids, batch.input_ids)
    with torch.no_grad():
        out_a, out_b = a(batch), b(batch)
    for key in out_a:
        assert torch.equal(out_a[key], out_b[key]), key
    q = questions_for(rows[0]["attributes"])[1]
    assert a.score_choices(rows[0], q.text, q.candidates) == b.score_choices(rows[0], q.text, q.candidates)
    ga, gb = (
        a.generate_tokens(rows[0]["caption"], num_residual=3),
        b.generate_tokens(rows[0]["caption"], num_residual=3),
    )
    for x, y in zip(ga if isinstance(ga, tuple) else (ga,), gb if isinstance(gb, tuple) else (gb,)):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("mode", ["lora", "frozen"])
def test_lora_and_frozen_train_only_their_parts_and_round_trip(
    mode: str,
    split_rows: tuple[Rows, Rows],
    feature_stats: FeatureStats,
    text_tokenizer_dir: Path,
    tiny_llm_dir: Path,
    tmp_path: Path,
) -> None:
    model = _build(MLLMConfig(llm_mode=mode, lora_rank=4), text_tokenizer_dir, feature_stats, tiny_llm_dir)
    names = set(model.trainable_state_dict())
    llm_names = {n for n in names if n.startswith("llm.")}
    if mode == "lora":
        assert llm_names and all(".lora_A." in n or ".lora_B." in n for n in llm_names)
    else:
        assert not llm_names
    assert {n.split(".")[0] for n in names - llm_names} == {
        "g_phi",
        "projector",
        "kind_embed",
        "cell_embed",
        "time_embed",
        "marker_embed",
        "head",
    }
    base = {n: p.detach().clone() for n, p in model.llm.named_parameters() if "lora_" not in n}
    before = {n: t.clone() for n, t in model.trainable_state_dict().items()}
    _train(model, split_rows[0], steps=3, batch=4, lr=1e-2)
    for n, p in model.llm.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, base[n]), f"{mode} changed the base LM's {n}"
    changed = {n for n, t in model.trainable_state_dict().items() if not torch.equal(t, before[n])}
    assert changed == names, f"not trained: {sorted(names - changed)[:5]}"
    out = model.save_pretrained(tmp_path / mode)
    assert not (out / FILES["llm"]).exists(), "frozen and lora checkpoints refer to the base LM"
    _assert_same_outputs(model, VTokLM.from_pretrained(out), split_rows[1][:3])
    with pytest.raises(ValueError, match="missing"):
        model.load_trainable_state_dict({})


def test_a_task_switched_off_and_a_missing_llm(
    split_rows: tuple[Rows, Rows], feature_stats: FeatureStats, text_tokenizer_dir: Path, tiny_llm_dir: Path
) -> None:
    model = _build(
        MLLMConfig(llm_mode="frozen", generation_weight=0.0), text_tokenizer_dir, feature_stats, tiny_llm_dir
    )
    out = model(MLLMCollator(model.tokenizer, model.cfg, model.stats)(split_rows[0][:2]))
    assert (
        out["loss_generation"] == 0
        and out["num_visual_targets"] == 0
        and torch.equal(out["loss"], out["loss"])
    )
    assert out["loss"] > 0 and out["loss"].requires_grad
    with pytest.raises(ValueError, match="model.llm is not set"):
        VTokLM(MLLMConfig(), load_text_tokenizer(text_tokenizer_dir), feature_stats)


def test_unused_parts_are_frozen_and_a_grown_vocabulary_is_deterministic(
    feature_stats: FeatureStats, text_tokenizer_dir: Path, tmp_path: Path
) -> None:
    from vtok.models.tiny_llm import save_tiny_llm

    n = len(load_text_tokenizer(text_tokenizer_dir))
    small = save_tiny_llm(tmp_path / "small", vocab_size=n - 3, seed=1)  # the tokenizer has 3 ids more
    cfg = MLLMConfig(llm_mode="frozen", tokens="frame_sampling", generation_weight=0.0)
    a, b = (_build(cfg, text_tokenizer_dir, feature_stats, small) for _ in range(2))
    assert {name.split(".")[0] for name in a.trainable_state_dict()} == {
        "projector",
        "kind_embed",
        "cell_embed",
        "time_embed",
        "marker_embed",
    }, "g_phi is unused by the baseline and the head without generation"
    emb_a, emb_b = a.llm.get_input_embeddings().weight, b.llm.get_input_embeddings().weight
    assert emb_a.shape[0] == n and torch.equal(emb_a, emb_b)
    assert torch.equal(emb_a[-1], emb_a[: n - 3].mean(0))
