"""A tiny real causal LM (Qwen2ForCausalLM) with seeded weights, saved the HF way, for tests and the demo.

Machines here reach no model hub, so the MLLM's tests build the same class a real Qwen2.5 checkpoint
uses with a toy config, save it with save_pretrained and load it back with
AutoModelForCausalLM.from_pretrained, exactly as a real directory is loaded.
"""

from __future__ import annotations

from pathlib import Path

TINY_LLM = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    max_position_embeddings=1024,
    tie_word_embeddings=True,
)
"""The tiny Qwen2Config's sizes."""


def save_tiny_llm(out_dir: str | Path, vocab_size: int, seed: int = 0) -> Path:
    """Build a tiny Qwen2ForCausalLM of `vocab_size` ids with seeded weights and save it to `out_dir`."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    assert vocab_size > 0, f"vocab_size must be positive, got {vocab_size}"
    config = Qwen2Config(vocab_size=vocab_size, **TINY_LLM)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    return out
