from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from vtok.eval.questions import caption_prompt, questions_for, template_texts
from vtok.models.feature_stats import FeatureStats
from vtok.models.mllm_config import MLLMConfig
from vtok.models.text import encode, train_word_tokenizer
from vtok.shapes import ShapesConfig, generate
from vtok.training.batching import collate_tokens
from vtok.training.losses import IGNORE_INDEX
from vtok.training.mllm_batch import KEY, RESIDUAL, MLLMCollator, SpecialIds, pick_index

S, D = 4, 8


def _rows() -> list[dict[str, Any]]:
    """Two shapes clips (T=4 and T=2) and a caption-only clip (T=3), with random tensors."""
    rng = np.random.default_rng(0)
    rows = []
    for i, t in enumerate((4, 2, 3)):
        video = generate(1, i, ShapesConfig(width=64, height=64, num_frames=2))
        rows.append(
            {
                "sample_key": f"k{i}",
                "caption": video.caption,
                "attributes": json.dumps(video.attributes()) if i < 2 else None,
                "key_tokens": rng.normal(size=(S, D)).astype(np.float32),
                "residual_features": rng.normal(size=(t - 1, D)).astype(np.float32) * 0.1,
                "frame_tokens": rng.normal(size=(t, S, D)).astype(np.float32),
            }
        )
    return rows


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, FeatureStats, list[dict[str, Any]]]:
    rows = _rows()
    tok = train_word_tokenizer(
        [*template_texts(), *(r["caption"] for r in rows)], tmp_path_factory.mktemp("tok")
    )
    return tok, FeatureStats().update(collate_tokens(rows)).finish(), rows


def test_vtok_layout_labels_and_masks_exactly(setup: tuple[Any, FeatureStats, list[dict[str, Any]]]) -> None:
    tok, stats, rows = setup
    cfg = MLLMConfig()
    batch = MLLMCollator(tok, cfg, stats, seed=3)(rows, step=5)
    ids = SpecialIds.of(tok)
    n_vis = [S + 3, S + 1, S + 2]
    assert batch.is_generation.tolist() == [False] * 3 + [True] * 3
    assert batch.visual_row.tolist() == [0, 1, 2, 0, 1, 2]
    assert batch.visual.valid.sum(1).tolist() == n_vis
    for i, row in enumerate(rows):
        # Understanding: <bos> <video> v.. </video> question answer <eos>, CE on answer + <eos> only.
        if row["attributes"] is None:
            question, answer = caption_prompt(), row["caption"]
        else:
            qs = questions_for(row["attributes"])
            q = qs[pick_index(3, row["sample_key"], 5, len(qs))]
            question, answer = q.text, q.answer
        a = [*encode(tok, " " + answer), ids.eos]
        head = [ids.bos, ids.video, *[ids.pad] * n_vis[i], ids.video_end, *encode(tok, question)]
        expect = head + a
        length = len(expect)
        assert batch.input_ids[i, :length].tolist() == expect
        assert batch.attention_mask[i].tolist() == [1] * length + [0] * (batch.input_ids.shape[1] - length)
        assert batch.input_ids[i, length:].eq(ids.pad).all()
        assert batch.labels[i].tolist() == [IGNORE_INDEX] * len(head) + a + [IGNORE_INDEX] * (
            batch.labels.shape[1] - length
        )
        assert batch.visual_pos[i, : n_vis[i]].tolist() == list(range(2, 2 + n_vis[i]))
        assert batch.visual_mask[i].tolist() == [True] * n_vis[i] + [False] * (S + 3 - n_vis[i])
        # Generation: <bos> caption <video> x.., no CE, the slots after <video> regressed.
        g = 3 + i
        cap = encode(tok, row["caption"])
        expect = [ids.bos, *cap, ids.video, *[ids.pad] * n_vis[i]]
        assert batch.input_ids[g, : len(expect)].tolist() == expect
        assert batch.attention_mask[g].sum() == len(expect)
        assert batch.labels[g].eq(IGNORE_INDEX).all()
        assert batch.visual_pos[g, : n_vis[i]].tolist() == list(range(len(cap) + 2, len(cap) + 2 + n_vis[i]))
        assert batch.generation_mask[g].sum() == n_vis[i] and not batch.generation_mask[i].any()
    v = batch.visual
    assert v.kind[0].tolist() == [KEY] * S + [RESIDUAL] * 3
    assert v.cell[0].tolist() == [0, 1, 2, 3, S, S, S] and v.time[0].tolist() == [0] * S + [1, 2, 3]
    key = torch.from_numpy(rows[0]["key_tokens"])
    res = torch.from_numpy(rows[1]["residual_features"])
    assert torch.allclose(v.features[0, :S], (key - stats.mean["key_tokens"]) / stats.std["key_tokens"])
    assert torch.equal(v.features[1, S : S + 1], res), "g_phi reads the raw residual features"
    assert torch.allclose(v.targets[1, S : S + 1], stats.standardize("residual_features", res))
    assert v.features[1, S + 1 :].eq(0).all()
    # Deterministic in (seed, key, step); other steps ask other questions.
    again = MLLMCollator(tok, cfg, stats, seed=3)(rows, step=5)
    assert torch.equal(again.input_ids, batch.input_ids)
    asked = {
        tuple(MLLMCollator(tok, cfg, stats, seed=3)(rows[:1], step=s).input_ids[0].tolist())
        for s in range(20)
    }
    assert len(asked) > 3


def test_ray_style_columns_and_switched_off_tasks(
    setup: tuple[Any, FeatureStats, list[dict[str, Any]]],
) -> None:
    tok, stats, rows = setup
    columns = {k: np.array([r[k] for r in rows], dtype=object) for k in rows[0]}
    a = MLLMCollator(tok, MLLMConfig(), stats)(columns, step=1)
    b = MLLMCollator(tok, MLLMConfig(), stats)(rows, step=1)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.visual.features, b.visual.features)
    und = MLLMCollator(tok, MLLMConfig(generation_weight=0.0), stats)(rows)
    assert not und.is_generation.any() and len(und.is_generation) == 3
    gen = MLLMCollator(tok, MLLMConfig(understanding_weight=0.0), stats)(rows)
    assert gen.is_generation.all() and gen.labels.eq(IGNORE_INDEX).all()


def test_frame_sampling_slots(setup: tuple[Any, FeatureStats, list[dict[str, Any]]]) -> None:
    tok, stats, rows = setup
    batch = MLLMCollator(tok, MLLMConfig(tokens="frame_sampling"), stats)(rows)
    assert batch.visual.valid.sum(1).tolist() == [4 * S, 2 * S, 3 * S]
    assert batch.visual.kind.eq(KEY).all()
    assert batch.visual.time[0].tolist() == [k for k in range(4) for _ in range(S)]
    assert batch.visual.cell[0].tolist() == list(range(S)) * 4
    k2 = MLLMCollator(tok, MLLMConfig(tokens="frame_sampling", frames=2), stats)(rows)
    assert k2.visual.valid.all() and k2.visual.features.shape == (3, 2 * S, D)
    frames = torch.from_numpy(rows[0]["frame_tokens"])
    picked = stats.standardize("frame_tokens", frames[[0, 3]]).reshape(2 * S, D)  # first and last of T=4
    assert torch.allclose(k2.visual.features[0], picked)


def test_bad_inputs_are_refused_in_one_line(
    setup: tuple[Any, FeatureStats, list[dict[str, Any]]], tmp_path: Path
) -> None:
    tok, stats, rows = setup
    no_frames = [{k: v for k, v in r.items() if k != "frame_tokens"} for r in rows]
    with pytest.raises(ValueError, match=r"^model.tokens=frame_sampling needs frame_tokens in the shards"):
        MLLMCollator(tok, MLLMConfig(tokens="frame_sampling"), stats)(no_frames)
    with pytest.raises(ValueError, match=r"^model.tokens=frame_sampling needs frame_tokens"):
        MLLMCollator(tok, MLLMConfig(tokens="frame_sampling"), stats)(
            {k: [r[k] for r in no_frames] for k in no_frames[0]}
        )
    with pytest.raises(ValueError, match=r"^model.frames=3 exceeds the clips' T=2"):
        MLLMCollator(tok, MLLMConfig(tokens="frame_sampling", frames=3), stats)(rows)
    wide = [
        {
            **r,
            "key_tokens": np.zeros((S, D + 1), np.float32),
            "residual_features": np.zeros((1, D + 1), np.float32),
            "frame_tokens": np.zeros((2, S, D + 1), np.float32),
        }
        for r in rows
    ]
    with pytest.raises(
        ValueError, match=rf"^the shards' tokens are D={D + 1} wide, the model was built for D={D}"
    ):
        MLLMCollator(tok, MLLMConfig(), stats)(wide)
    with pytest.raises(ValueError, match="max_time_steps"):
        MLLMCollator(tok, replace(MLLMConfig(), max_time_steps=2), stats)(rows)
    for bad in (
        dict(tokens="frames"),
        dict(llm_mode="half"),
        dict(understanding_weight=0.0, generation_weight=0.0),
    ):
        with pytest.raises(ValueError, match="model."):
            MLLMConfig(**bad)
