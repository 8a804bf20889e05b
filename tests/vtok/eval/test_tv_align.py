"""TV-Align's scoring on real parts, no Ray: tiny-CLIP tokens of shapes-world clips, a tiny Qwen2 VTokLM (trained
in-process to answer one category), and the shapes renderer standing in for the decoder."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from vtok.eval.questions import CATEGORIES, Question, questions_for
from vtok.eval.tv_align import (
    category_accuracy,
    generated_tokens,
    generation_hits,
    merge_hits,
    reconstruction_hits,
    score_questions,
    understanding_hits,
)
from vtok.models.feature_stats import FeatureStats
from vtok.models.mllm import VTokLM
from vtok.models.mllm_config import MLLMConfig
from vtok.shapes import COLORS, ShapeObject, ShapesConfig, ShapesVideo, generate, render
from vtok.training.mllm_batch import MLLMCollator

Rows = list[dict[str, Any]]
WORLD = ShapesConfig(width=64, height=64, num_frames=8, min_objects=1, max_objects=1)
"""The understanding clips: single objects, as the MLLM job's test data."""
SCENES = ShapesConfig(width=64, height=64, num_frames=8, min_objects=1, max_objects=4)
"""The renderer tests' scenes: 1-4 objects."""
TRAIN_SEED, HELDOUT_SEED, SCENE_SEED = 5, 6, 7
"""Different corpus seeds: the held-out clips are never trained on."""
NUM_TRAIN, NUM_HELDOUT, NUM_SCENES = 120, 40, 12
STEPS, BATCH, LR = 100, 16, 2e-3
"""The size-only training run: held-out size accuracy 1.00 measured (0.475 untrained)."""


# Tiny matrices: one intra-op thread is faster than two on a busy 2-core machine (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _row(video: ShapesVideo, tokens: Any) -> dict[str, Any]:
    return {"sample_key": f"shapes-{video.seed}-{video.index:04d}", "caption": video.caption,
            "attributes": json.dumps(video.attributes()), "key_tokens": tokens.key_tokens,
            "residual_features": tokens.residual_features, "frame_tokens": tokens.frame_tokens,
            "frame_indices": list(range(video.frames.shape[0]))}


@pytest.fixture(scope="module")
def world(tiny_clip_dir: Path) -> dict[str, Any]:
    """Token rows (train, held out, scenes) through the tiny CLIP, and the scenes' videos by sample key."""
    from vtok.tokenizer import VTokTokenizer
    from vtok.tokenizer_spec import TokenizerConfig

    videos = {"train": [generate(TRAIN_SEED, i, WORLD) for i in range(NUM_TRAIN)],
              "heldout": [generate(HELDOUT_SEED, i, WORLD) for i in range(NUM_HELDOUT)],
              "scenes": [generate(SCENE_SEED, i, SCENES) for i in range(NUM_SCENES)]}
    tokenizer = VTokTokenizer(TokenizerConfig(encoder=str(tiny_clip_dir), grid=4, frame_tokens=True,
                                              micro_batch=64))
    every = [v for part in videos.values() for v in part]
    tokens = iter(tokenizer.encode([v.frames for v in every]))
    out: dict[str, Any] = {part: [_row(v, next(tokens)) for v in vs] for part, vs in videos.items()}
    out["videos"] = {r["sample_key"]: v for r, v in zip(out["scenes"], videos["scenes"])}
    return out


@pytest.fixture(scope="module")
def parts(world: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A word tokenizer, a tiny Qwen2 saved the HF way, and feature statistics of the training rows."""
    from vtok.eval.questions import template_texts
    from vtok.models.text import train_word_tokenizer
    from vtok.models.tiny_llm import save_tiny_llm
    from vtok.training.batching import collate_tokens

    root = tmp_path_factory.mktemp("tv_align")
    captions = [r["caption"] for part in ("train", "heldout", "scenes") for r in world[part]]
    text = train_word_tokenizer([*template_texts(), *captions], root / "text")
    save_tiny_llm(root / "llm", len(text), seed=0)
    stats = FeatureStats().update(collate_tokens(world["train"])).finish()
    return {"text": root / "text", "llm": root / "llm", "stats": stats}


def _model(parts: dict[str, Any], **cfg: Any) -> VTokLM:
    from vtok.models.text import load_text_tokenizer

    torch.manual_seed(0)
    model = VTokLM(MLLMConfig(llm_mode="full", **cfg), load_text_tokenizer(parts["text"]), parts["stats"],
                   parts["llm"])
    return model.eval()


class _SizeOnly(MLLMCollator):
    """The training collator asking every clip its size question: a model that learns one category."""

    def question(self, sample_key: str, attributes: Any, caption: str | None, step: int) -> Question:
        return next(q for q in questions_for(attributes) if q.category == "size")


@pytest.fixture(scope="module")
def size_model(parts: dict[str, Any], world: dict[str, Any]) -> VTokLM:
    """A tiny VTokLM trained STEPS AdamW steps on size questions only (understanding only)."""
    model = _model(parts, generation_weight=0.0)
    collate = _SizeOnly(model.tokenizer, model.cfg, model.stats)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=0.0)
    rng = np.random.default_rng(0)
    train = world["train"]
    model.train()
    start = time.perf_counter()
    for step in range(STEPS):
        loss = model(collate([train[i] for i in rng.choice(len(train), BATCH, replace=False)], step=step))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"size-only training: {STEPS} steps of {BATCH} in {time.perf_counter() - start:.1f}s, "
          f"last loss {float(loss.detach()):.3f}")
    return model.eval()


def _accuracies(hits: Mapping[str, list[bool]]) -> dict[str, float]:
    return {k: round(v[0], 3) for k, v in category_accuracy(hits).items()}


# ---------------------------------------------------------------------------------------------- understanding
@pytest.mark.parametrize("tokens", ["vtok", "frame_sampling"])
def test_batched_scores_are_score_choices_and_hits_their_argmax(
    tokens: str, parts: dict[str, Any], world: dict[str, Any]
) -> None:
    model = _model(parts, tokens=tokens, frames=2 if tokens == "frame_sampling" else None)
    rows = world["scenes"][:4]
    assert max(json.loads(r["attributes"])["count"] for r in rows) >= 3, "multi-object scenes are scored"
    expected: dict[str, list[bool]] = {c: [] for c in CATEGORIES}
    for row in rows:
        questions = questions_for(row["attributes"])
        batched = score_questions(model, row, questions)
        chunked = score_questions(model, row, questions, max_sequences=7)  # chunks cut through questions
        for q, got, small in zip(questions, batched, chunked, strict=True):
            one = model.score_choices(row, q.text, q.candidates)
            np.testing.assert_allclose(got, one, atol=1e-4, rtol=0)
            np.testing.assert_allclose(small, one, atol=1e-4, rtol=0)
            expected[q.category].append(q.candidates[int(np.argmax(one))] == q.answer)
    hits = understanding_hits(model, rows, max_sequences=16)
    assert hits == expected
    assert {c: len(v) for c, v in hits.items()} == {
        c: sum(q.category == c for r in rows for q in questions_for(r["attributes"])) for c in CATEGORIES}
    assert understanding_hits(model, rows) == hits, "deterministic"


def test_a_model_trained_on_size_answers_size_while_an_untrained_one_guesses(
    size_model: VTokLM, parts: dict[str, Any], world: dict[str, Any]
) -> None:
    held = world["heldout"]
    assert not {r["sample_key"] for r in held} & {r["sample_key"] for r in world["train"]}
    start = time.perf_counter()
    trained = understanding_hits(size_model, held)
    seconds = time.perf_counter() - start
    untrained = understanding_hits(_model(parts, generation_weight=0.0), held)
    print(f"held-out accuracy over {len(held)} single-object clips ({seconds:.2f}s): trained on size "
          f"{_accuracies(trained)}; untrained {_accuracies(untrained)}")
    assert all(len(v) == len(held) for v in trained.values())
    small = sum(json.loads(r["attributes"])["objects"][0]["size"] == "small" for r in held) / len(held)
    assert 0.3 < small < 0.7, "both sizes are held out, so answering one size is no better than chance"
    # Size has two candidates: argmin (or a swapped candidate order) would score about 1 - accuracy.
    assert np.mean(trained["size"]) >= 0.9  # 1.00 measured
    assert np.mean(untrained["size"]) <= 0.7  # 0.475 measured
    # Trained on size alone, colour (6 candidates) stays near chance.
    assert np.mean(trained["color"]) < 0.5


# ---------------------------------------------------------------------------------------------- the renderer
def _recolor(objects: list[ShapeObject]) -> list[ShapeObject]:
    """Each object in a colour the scene does not hold, as far as there are any (4 objects leave 2)."""
    absent = [c for c in COLORS if c not in {o.color for o in objects}]
    return [replace(o, color=absent[i]) if i < len(absent) else o for i, o in enumerate(objects)]


WRONG: dict[str, Callable[[list[ShapeObject]], list[ShapeObject]]] = {
    "color": _recolor,
    "motion": lambda objects: [replace(o, motion="static") for o in objects],
    "size": lambda objects: [replace(o, size="small") for o in objects],
    "count": lambda objects: objects[:-1],
}
"""A scene that differs from the truth in one category (drop an object: the count, and that object)."""


def _renderer(world: dict[str, Any], calls: list[tuple[str, dict[str, np.ndarray]]],
              change: Callable[[list[ShapeObject]], list[ShapeObject]] | None = None) -> Any:
    """sample_frames that renders the clip's true scene (or a changed one) and records what it was given."""
    def sample_frames(tokens: Mapping[str, np.ndarray], sample_key: str) -> np.ndarray:
        calls.append((sample_key, dict(tokens)))
        video: ShapesVideo = world["videos"][sample_key]
        return render(change(video.objects) if change else video.objects, video.cfg)
    return sample_frames


def _expected(world: dict[str, Any], category: str | None) -> dict[str, int]:
    """Hits per category of the scenes rendered with WRONG[category] (None: the true scenes)."""
    objects = [v.objects for v in world["videos"].values()]
    n = sum(len(o) for o in objects)
    out = {"count": len(objects), **dict.fromkeys(CATEGORIES[1:], n)}
    if category == "color":
        out["color"] = sum(max(0, len(o) - (len(COLORS) - len(o))) for o in objects)
    elif category == "motion":
        out["motion"] = sum(x.motion == "static" for o in objects for x in o)
    elif category == "size":
        out["size"] = sum(x.size == "small" for o in objects for x in o)
    elif category == "count":
        out = {"count": 0, **dict.fromkeys(CATEGORIES[1:], n - len(objects))}
    return out


def test_reconstructing_the_true_scene_is_aligned_in_every_category(world: dict[str, Any]) -> None:
    rows, calls = world["scenes"], []
    hits, readings = reconstruction_hits(_renderer(world, calls), rows, keep_frames=2)
    n = sum(json.loads(r["attributes"])["count"] for r in rows)
    assert {c: (sum(v), len(v)) for c, v in hits.items()} == {
        "count": (len(rows), len(rows)), **{c: (n, n) for c in CATEGORIES[1:]}}
    # The row's own tokens reached the decoder side, each clip once, under its key.
    assert [k for k, _ in calls] == [r["sample_key"] for r in rows]
    for (_, tokens), row in zip(calls, rows):
        assert set(tokens) == {"key_tokens", "residual_features", "frame_tokens", "frame_indices"}
        for name in ("key_tokens", "residual_features", "frame_tokens"):
            assert np.array_equal(tokens[name], row[name])
        assert tokens["frame_indices"].tolist() == row["frame_indices"]
    assert [r["sample_key"] for r in readings] == [r["sample_key"] for r in rows]
    assert [("frames" in r) for r in readings] == [True, True] + [False] * (len(rows) - 2)
    assert readings[0]["frames"].shape == (8, 64, 64, 3)
    assert readings[0]["reading"]["count"] == json.loads(rows[0]["attributes"])["count"]


@pytest.mark.parametrize("category", list(WRONG))
def test_a_scene_wrong_in_one_category_fails_exactly_that_category(category: str, world: dict[str, Any]) -> None:
    truth = _expected(world, None)
    want = _expected(world, category)
    assert want[category] < truth[category], f"the scenes must hold objects that {category} changes"
    hits, _ = reconstruction_hits(_renderer(world, [], WRONG[category]), world["scenes"])
    got = {c: sum(v) for c, v in hits.items()}
    assert {c: len(v) for c, v in hits.items()} == truth
    assert got == want, (category, got, want)


def test_generation_judges_the_mllms_tokens_for_each_caption(parts: dict[str, Any], world: dict[str, Any]) -> None:
    mllm = _model(parts)  # untrained: its tokens only have to reach the decoder side
    rows, calls = world["scenes"][:4], []
    hits, readings = generation_hits(mllm, _renderer(world, calls), rows, keep_frames=1)
    assert [k for k, _ in calls] == [r["sample_key"] for r in rows]
    for (_, tokens), row in zip(calls, rows):
        again = generated_tokens(mllm, row["caption"])  # greedy, so the same tokens again
        assert set(tokens) == {"key_tokens", "residual_features"}
        assert tokens["key_tokens"].shape == (16, parts["stats"].dim)
        for name in tokens:
            assert np.array_equal(tokens[name], again[name])
        # The generated tokens, not the row's: a decoder that reconstructs would score the clip, not the text.
        assert not np.array_equal(tokens["key_tokens"], row["key_tokens"])
    assert all(all(v) for v in hits.values()) and len(hits["count"]) == 4
    assert [r["caption"] for r in readings] == [r["caption"] for r in rows]
    assert "frames" in readings[0] and "frames" not in readings[1]
    static, _ = generation_hits(mllm, _renderer(world, [], WRONG["motion"]), rows)
    moving = sum(o["motion"] != "static" for r in rows for o in json.loads(r["attributes"])["objects"])
    assert moving > 0 and static["motion"].count(False) == moving
    assert all(all(static[c]) for c in CATEGORIES if c != "motion")


# ---------------------------------------------------------------------------------------------- accuracy
def test_category_accuracy_values_and_wilson_intervals() -> None:
    hits = {"motion": [False] * 5, "count": [True] * 8 + [False] * 2, "size": [True] * 5, "color": []}
    acc = category_accuracy(hits)
    assert list(acc) == ["count", "size", "motion", "overall"], "CATEGORIES order; a category without items is left out"
    value, n, lo, hi = acc["count"]
    assert (value, n) == (0.8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)  # Wilson, 8 of 10
    assert acc["size"][:3] == (1.0, 5, pytest.approx(0.5655, abs=1e-4)) and acc["size"][3] == 1.0
    assert acc["motion"][:3] == (0.0, 5, 0.0) and acc["motion"][3] == pytest.approx(0.4345, abs=1e-4)
    value, n, lo, hi = acc["overall"]  # every item pooled: 13 of 20
    assert (value, n) == (0.65, 20) and lo == pytest.approx(0.4329, abs=1e-4) and hi == pytest.approx(0.8188, abs=1e-4)
    # The interval narrows as n grows, around the same value.
    wide, narrow = category_accuracy({"x": [True, False] * 5})["x"], category_accuracy({"x": [True, False] * 500})["x"]
    assert wide[0] == narrow[0] == 0.5 and narrow[3] - narrow[2] < (wide[3] - wide[2]) / 5
    assert merge_hits({"size": [True]}, {"count": [False], "size": [False]}) == {"count": [False], "size": [True, False]}
    with pytest.raises(ValueError, match="no category has any hits"):
        category_accuracy({"count": [], "size": []})


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_input_is_refused_naming_the_clip(parts: dict[str, Any], world: dict[str, Any]) -> None:
    model = _model(parts)
    row = world["heldout"][0]
    key = row["sample_key"]
    with pytest.raises(ValueError, match=f"{key}: no attributes"):
        understanding_hits(model, [{**row, "attributes": None}])
    with pytest.raises(ValueError, match=f"{key}: no residual_features"):
        understanding_hits(model, [{k: v for k, v in row.items() if k != "residual_features"}])
    with pytest.raises(ValueError, match=f"{key}: no caption"):
        generation_hits(model, lambda tokens, k: np.zeros((2, 8, 8, 3), np.uint8), [{**row, "caption": ""}])
    with pytest.raises(ValueError, match=f"{key}: sample_frames must return uint8 frames"):
        reconstruction_hits(lambda tokens, k: np.zeros((2, 8, 8, 3), np.float32), [row])
