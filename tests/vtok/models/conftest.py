"""Shapes-world token rows made directly (no Ray): ~200 single-object clips through the tiny CLIP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

NUM_CLIPS = 200
HELDOUT_FRACTION = 0.2
SALT = "tests"


@pytest.fixture(scope="session")
def token_rows(tiny_clip_dir: Path) -> list[dict[str, Any]]:
    """Rows as the shards hold them: sample_key, caption, attributes (JSON), key/residual/frame tokens."""
    from vtok.shapes import ShapesConfig, generate
    from vtok.tokenizer import VTokTokenizer
    from vtok.tokenizer_spec import TokenizerConfig

    cfg = ShapesConfig(width=64, height=64, num_frames=8, min_objects=1, max_objects=1)
    videos = [generate(11, i, cfg) for i in range(NUM_CLIPS)]
    tokenizer = VTokTokenizer(
        TokenizerConfig(encoder=str(tiny_clip_dir), grid=4, frame_tokens=True, micro_batch=64)
    )
    tokens = tokenizer.encode([v.frames for v in videos])
    return [
        {
            "sample_key": f"shapes-11-{v.index:04d}",
            "caption": v.caption,
            "attributes": json.dumps(v.attributes()),
            "key_tokens": t.key_tokens,
            "residual_features": t.residual_features,
            "frame_tokens": t.frame_tokens,
        }
        for v, t in zip(videos, tokens)
    ]


@pytest.fixture(scope="session")
def split_rows(token_rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, held out) by vtok.training.split."""
    from vtok.training.split import is_heldout

    held = [r for r in token_rows if is_heldout(r["sample_key"], HELDOUT_FRACTION, SALT)]
    train = [r for r in token_rows if not is_heldout(r["sample_key"], HELDOUT_FRACTION, SALT)]
    return train, held


@pytest.fixture(scope="session")
def text_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory, token_rows: list[dict[str, Any]]) -> Path:
    """A word tokenizer trained on the captions and the question templates, saved."""
    from vtok.eval.questions import template_texts
    from vtok.models.text import train_word_tokenizer

    out = tmp_path_factory.mktemp("text_tokenizer")
    train_word_tokenizer([*template_texts(), *(r["caption"] for r in token_rows)], out)
    return out


@pytest.fixture
def text_tokenizer(text_tokenizer_dir: Path) -> Any:
    """A fresh copy per test (the model may add tokens to it)."""
    from vtok.models.text import load_text_tokenizer

    return load_text_tokenizer(text_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory: pytest.TempPathFactory, text_tokenizer_dir: Path) -> Path:
    """A tiny Qwen2ForCausalLM with the word tokenizer's vocabulary, saved the HF way."""
    from vtok.models.text import load_text_tokenizer
    from vtok.models.tiny_llm import save_tiny_llm

    return save_tiny_llm(
        tmp_path_factory.mktemp("tiny_llm"), len(load_text_tokenizer(text_tokenizer_dir)), seed=0
    )


@pytest.fixture(scope="session")
def feature_stats(split_rows: tuple[list[dict[str, Any]], list[dict[str, Any]]]) -> Any:
    """Feature statistics streamed over the training rows, 32 at a time."""
    from vtok.models.feature_stats import FeatureStats
    from vtok.training.batching import collate_tokens

    train, _ = split_rows
    stats = FeatureStats()
    for start in range(0, len(train), 32):
        stats.update(collate_tokens(train[start : start + 32]))
    return stats.finish()
