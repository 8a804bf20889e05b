"""The MLLM's text tokenizer: any Hugging Face tokenizer directory, or a word-level one trained offline.

The shapes world speaks a few hundred words, so the toy models use a word-level tokenizer trained on
the corpus's captions and the question templates; a real LM brings its own tokenizer. Either way the
tokenizer gets the two markers around the visual tokens, <video> and </video>, and is saved with the
checkpoint (save_pretrained), so a checkpoint never depends on where its tokenizer came from.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
VIDEO_START, VIDEO_END = "<video>", "</video>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, BOS, EOS, VIDEO_START, VIDEO_END)
"""The word tokenizer's special tokens; they take ids 0..5 in this order."""


def load_text_tokenizer(path: str | Path) -> Any:
    """A saved HF tokenizer directory (local) with <video>/</video>, bos, eos and pad ensured."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    ensure_special_tokens(tokenizer)
    return tokenizer


def train_word_tokenizer(texts: Iterable[str], out_dir: str | Path | None = None) -> Any:
    """A lowercased word-level PreTrainedTokenizerFast over `texts` (saved to `out_dir` when given).

    Words are split at whitespace and at every punctuation mark; a word never seen becomes <unk>.
    No special token is added by encoding: the MLLM lays out <bos>/<video>/<eos> itself.
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from tokenizers.trainers import WordLevelTrainer
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(WordLevel(unk_token=UNK))
    backend.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()]
    )
    trainer = WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS), min_frequency=1, show_progress=False)
    backend.train_from_iterator((str(t) for t in texts), trainer=trainer)
    for i, token in enumerate(SPECIAL_TOKENS):
        assert backend.token_to_id(token) == i, f"special token {token} must have id {i}"
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=PAD, unk_token=UNK, bos_token=BOS, eos_token=EOS
    )
    ensure_special_tokens(tokenizer)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def ensure_special_tokens(tokenizer: Any) -> int:
    """Add <video> and </video> (and a bos/pad where the tokenizer has none); returns how many were added.

    A tokenizer without a bos token (Qwen2) starts sequences with its eos token, and one without a pad
    token pads with eos: padding is masked, so its id never matters. The LM's embeddings must then cover
    len(tokenizer) ids (VTokLM resizes them).
    """
    from tokenizers import AddedToken

    missing = [t for t in (VIDEO_START, VIDEO_END) if t not in tokenizer.get_vocab()]
    added = tokenizer.add_tokens(
        [AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True
    )
    assert tokenizer.eos_token is not None, "the text tokenizer has no eos token"
    if tokenizer.bos_token is None:
        tokenizer.bos_token = tokenizer.eos_token
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return int(added)


def encode(tokenizer: Any, text: str) -> list[int]:
    """`text` as token ids, without any special token added."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def resize_lm_vocab(llm: Any, size: int) -> None:
    """Grow a causal LM's vocabulary to `size` ids (after ensure_special_tokens added some).

    The new rows (input embeddings, and the output head when it is not tied) are the mean of the old
    ones: deterministic, so a frozen or LoRA checkpoint that refers to its base LM rebuilds them exactly.
    """
    import torch

    old = llm.get_input_embeddings().num_embeddings
    if size <= old:
        return
    llm.resize_token_embeddings(size, mean_resizing=False)
    tables = {id(e): e for e in (llm.get_input_embeddings(), llm.get_output_embeddings()) if e is not None}
    with torch.no_grad():
        for emb in tables.values():
            emb.weight[old:] = emb.weight[:old].mean(0)
