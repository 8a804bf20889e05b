from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from vtok.models.feature_stats import FeatureStats
from vtok.models.text import (
    SPECIAL_TOKENS,
    encode,
    ensure_special_tokens,
    load_text_tokenizer,
    train_word_tokenizer,
)
from vtok.training.batching import collate_tokens


def test_word_tokenizer_round_trips_and_has_the_special_tokens(tmp_path: Path) -> None:
    tok = train_word_tokenizer(["A small Red circle, static.", "what color is it?"], tmp_path / "tok")
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert (tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token) == (
        "<pad>",
        "<bos>",
        "<eos>",
        "<unk>",
    )
    ids = encode(tok, "a small red circle, static.")
    assert tok.decode(ids) == "a small red circle , static ."
    assert encode(tok, "A SMALL") == encode(tok, "a small"), "lowercased"
    assert encode(tok, "purple") == [tok.unk_token_id]
    assert encode(tok, "color?") == [tok.convert_tokens_to_ids("color"), tok.convert_tokens_to_ids("?")]
    loaded = load_text_tokenizer(tmp_path / "tok")
    assert encode(loaded, "what color is it?") == encode(tok, "what color is it?") and len(loaded) == len(tok)
    assert ensure_special_tokens(loaded) == 0


def test_ensure_special_tokens_on_a_tokenizer_without_them(tmp_path: Path) -> None:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(WordLevel({"[UNK]": 0, "</s>": 1, "hi": 2}, unk_token="[UNK]"))
    backend.pre_tokenizer = Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="[UNK]")
    assert ensure_special_tokens(tok) == 2 and len(tok) == 5
    assert tok.bos_token == tok.pad_token == "</s>"
    assert encode(tok, "hi <video> hi </video>") == [2, 3, 2, 4]


def test_feature_stats_stream_mask_padding_and_save(tmp_path: Path, token_rows: list[dict[str, Any]]) -> None:
    rows = token_rows[:10]
    whole = FeatureStats().update(collate_tokens(rows)).finish()
    streamed = FeatureStats()
    for start in range(0, 10, 3):
        streamed.update(collate_tokens(rows[start : start + 3]))
    streamed.finish()
    key = np.concatenate([r["key_tokens"] for r in rows])
    res = np.concatenate([r["residual_features"] for r in rows])
    frames = np.concatenate([r["frame_tokens"].reshape(-1, key.shape[1]) for r in rows])
    for stats in (whole, streamed):
        for name, x in (("key_tokens", key), ("residual_features", res), ("frame_tokens", frames)):
            np.testing.assert_allclose(stats.mean[name], x.mean(0), rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(stats.std[name], x.std(0), rtol=1e-3, atol=1e-6)
    assert (whole.num_key, whole.max_residual, whole.max_frames, whole.dim) == (16, 7, 8, key.shape[1])
    # Padding is left out: a short clip in the batch does not pull the means towards 0.
    short = [
        {
            **rows[0],
            "residual_features": rows[0]["residual_features"][:2],
            "frame_tokens": rows[0]["frame_tokens"][:3],
        },
        rows[1],
    ]
    s = FeatureStats().update(collate_tokens(short)).finish()
    np.testing.assert_allclose(
        s.mean["residual_features"],
        np.concatenate([short[0]["residual_features"], rows[1]["residual_features"]]).mean(0),
        rtol=1e-4,
        atol=1e-7,
    )
    assert s.count["residual_features"] == 2 + 7
    # A constant dimension gets the floor, never 0; save/load is exact.
    static = [{**r, "residual_features": np.zeros_like(r["residual_features"])} for r in rows[:2]]
    z = FeatureStats().update(collate_tokens(static)).finish()
    assert torch.all(z.std["residual_features"] == z.min_std)
    x = torch.randn(5, key.shape[1])
    assert torch.allclose(whole.destandardize("key_tokens", whole.standardize("key_tokens", x)), x, atol=1e-5)
    back = FeatureStats.load(whole.save(tmp_path / "stats.safetensors"))
    for name in whole.mean:
        assert torch.equal(back.mean[name], whole.mean[name]) and torch.equal(back.std[name], whole.std[name])
    assert (back.num_key, back.max_residual, back.max_frames, back.count) == (16, 7, 8, whole.count)


def test_tiny_llm_loads_the_real_way(tiny_llm_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, Qwen2ForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llm_dir)
    assert isinstance(model, Qwen2ForCausalLM)
    c = model.config
    assert (
        c.hidden_size,
        c.num_hidden_layers,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.intermediate_size,
    ) == (64, 2, 4, 2, 128)
    assert c.tie_word_embeddings and c.max_position_embeddings == 1024
    out = model(input_ids=torch.tensor([[1, 2, 3]]))
    assert out.logits.shape == (1, 3, c.vocab_size)
