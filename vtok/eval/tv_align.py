"""TV-Align on a held-out shapes world: does the model's understanding, or its video, agree with the text?

Three measurements over token rows (dicts with sample_key, caption, attributes and the token columns as
numpy arrays, nested lists or Ray's object arrays), each a `Hits`: category -> one bool per item scored.

understanding   every templated question of `questions_for` per clip, scored as lm-eval-harness scores
                multiple choice: the summed log-likelihood of each candidate's tokens (and <eos>) after the
                clip and the question; the prediction is the argmax (the first candidate on an exact tie).
                One item per question: count and every per-object question of a scene.
generation      the row's caption -> the MLLM's visual tokens -> `sample_frames` -> the judge, read against
                the row's generator `attributes` (what the caption says).
reconstruction  the row's true tokens -> `sample_frames` -> the judge, the same scoring: the decoder's ceiling,
                so generation's losses split between the MLLM and the decoder.

What "matches" means for a judged video against the truth (`judge_hits`, through judge.compare):
  count     one item per video: the judge counts exactly the true number of objects.
  color, size, position, motion
            one item per TRUE object. Each true object is matched to a judged object of its colour (colours
            are unique within a scene); the true objects left over are matched to the remaining judged
            objects by nearest start centre (in fractions of each frame's width and height). The item is a
            hit when the matched object's colour / size class / start third / motion direction equals the
            truth's. A true object with no judged object left is a miss in all four; a judged object that
            matches no true object only costs the count. So a recoloured object still scores on size,
            position and motion, and a missing one loses every category once.

`sample_frames(tokens, sample_key) -> uint8 [T, H, W, 3]` is the decoder side, passed in so the Ray job can
place it (a GPU actor) where it wants; `tokens` maps token columns (key_tokens [S, D], residual_features
[R, D] or frame_tokens [T, S, D]; reconstruction also residual_tokens and frame_indices [T] where the row has
them) to numpy arrays, and `sample_key` fixes the clip's sampling noise. Plain torch/numpy, no Ray.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from vtok.eval.judge import ATTRIBUTES, compare, read_attributes
from vtok.eval.questions import CATEGORIES, Question, parse_attributes, questions_for
from vtok.eval.stats import accuracy_rows

if TYPE_CHECKING:
    from vtok.models.mllm import VTokLM

Hits = dict[str, list[bool]]
"""Category -> one bool per item scored (a question, a video, or a true object; see the module docstring)."""
SampleFrames = Callable[[Mapping[str, np.ndarray], str], np.ndarray]
"""The decoder side: (token columns -> arrays, sample key) -> uint8 frames [T, H, W, 3]."""
Interval = tuple[float, int, float, float]
"""(accuracy, n, lower, upper) of a category: the 95% Wilson interval by default."""

RECONSTRUCTION_INPUTS: tuple[str, ...] = (
    "key_tokens", "residual_features", "residual_tokens", "frame_tokens", "frame_indices",
)
"""The row columns reconstruction hands to sample_frames (those the row has)."""
MAX_SEQUENCES = 256
"""Default cap on the sequences of one forward pass when scoring a clip's questions."""
Z_95 = 1.96
"""The standard normal's 97.5% quantile, as usually quoted: a two-sided 95% interval."""


# ---------------------------------------------------------------------------------------------- understanding
def score_questions(model: VTokLM, visual: Mapping[str, Any], questions: Sequence[Question],
                    max_sequences: int = MAX_SEQUENCES, sample_key: str = "clip") -> list[list[float]]:
    """Per question, the summed log-likelihood of each candidate (and <eos>), as `VTokLM.score_choices`.

    Every candidate of every question of the clip goes into one batch (chunks of at most `max_sequences`),
    instead of one forward pass per question. Only the clip's own sequences share a pass, so a clip's scores
    never depend on which other clips its batch holds.
    """
    import torch

    from vtok.models.text import encode
    from vtok.training.losses import choice_log_likelihood, shifted_answer_positions
    from vtok.training.mllm_batch import assemble, understanding_ids

    if max_sequences < 1:
        raise ValueError(f"max_sequences must be >= 1, got {max_sequences}")
    v = clip_visual_inputs(model, visual, sample_key)
    n_visual = v.lengths[0]
    seqs = []
    for q in questions:
        if not q.candidates:
            raise ValueError(f"{sample_key}: question {q.text!r} has no candidates to score")
        text = encode(model.tokenizer, q.text)
        seqs += [(*understanding_ids(model.ids, n_visual, text, encode(model.tokenizer, " " + c)), 0, False)
                 for c in q.candidates]
    device = model.projector[0].weight.device
    flat: list[float] = []
    with torch.inference_mode():
        for start in range(0, len(seqs), max_sequences):
            chunk = seqs[start:start + max_sequences]
            batch = assemble(chunk, v, model.ids.pad, [sample_key] * len(chunk)).to(device)
            hidden = model.hidden_states(batch)  # [N, L, H]
            rows, pos, targets = shifted_answer_positions(batch.labels)
            # llm is the HF model or peft's wrapper, which hands get_output_embeddings to the model it wraps.
            logits = model.llm.get_output_embeddings()(hidden[rows, pos])  # [M, vocab]
            flat += choice_log_likelihood(logits, targets, rows, len(chunk)).tolist()
    out, at = [], 0
    for q in questions:
        out.append(flat[at:at + len(q.candidates)])
        at += len(q.candidates)
    return out


def clip_visual_inputs(model: VTokLM, visual: Mapping[str, Any], sample_key: str = "clip") -> Any:
    """One clip's visual slots (`VisualInputs`, B = 1) from the token columns the model reads."""
    from vtok.training.batching import collate_tokens
    from vtok.training.mllm_batch import visual_inputs

    other = "residual_features" if model.cfg.tokens == "vtok" else "frame_tokens"
    if visual.get(other) is None:
        raise ValueError(f"{sample_key}: no {other}, which a model.tokens={model.cfg.tokens} model reads")
    row = {"sample_key": sample_key, other: visual[other]}
    if visual.get("key_tokens") is not None:
        row["key_tokens"] = visual["key_tokens"]
    elif other == "frame_tokens":
        row["key_tokens"] = collate_tokens([row], columns=[other])[other][0, 0]  # the first frame is the key
    else:
        raise ValueError(f"{sample_key}: no key_tokens")
    return visual_inputs(collate_tokens([row], columns=["key_tokens", other]), model.cfg, model.stats)


def understanding_hits(model: VTokLM, rows: Iterable[Mapping[str, Any]],
                       max_sequences: int = MAX_SEQUENCES) -> Hits:
    """category -> one bool per question (questions_for's order, clip by clip): is the argmax candidate the
    answer? Every row needs attributes (a held-out shapes world); the model runs where its weights are."""
    hits: Hits = {c: [] for c in CATEGORIES}
    for row in rows:
        key = str(row.get("sample_key", "clip"))
        truth = _truth(row, key)
        questions = questions_for(truth)
        for q, scores in zip(questions, score_questions(model, row, questions, max_sequences, key)):
            hits[q.category].append(q.candidates[int(np.argmax(scores))] == q.answer)
    return hits


# ---------------------------------------------------------------------------------------------- generation
def generated_tokens(mllm: VTokLM, caption: str) -> dict[str, np.ndarray]:
    """The MLLM's visual tokens for a caption as token columns: key_tokens [S, D] with residual_features
    [R, D] (VTok), or frame_tokens [T', S, D] with its first frame as key_tokens (the baseline)."""
    made = mllm.generate_tokens(caption)
    if isinstance(made, tuple):
        return {"key_tokens": made[0], "residual_features": made[1]}
    return {"key_tokens": made[0], "frame_tokens": made}


def judge_hits(frames: np.ndarray, truth: Mapping[str, Any] | str,
               sample_key: str = "clip") -> tuple[Hits, dict[str, Any]]:
    """(hits, the judge's reading) of frames against generator attributes, as the module docstring defines.

    Per category the hits of a true object list the agreeing objects first (compare reports counts).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or 0 in frames.shape:
        raise ValueError(f"{sample_key}: frames must be uint8 [T, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    attrs = parse_attributes(truth)
    if attrs is None:
        raise ValueError(f"{sample_key}: no attributes to judge the frames against")
    reading = read_attributes(frames)
    agreement = compare(reading, attrs)
    hits: Hits = {"count": [agreement.count]}
    for name in ATTRIBUTES[1:]:
        agree = agreement.agree.get(name, 0)
        hits[name] = [True] * agree + [False] * (agreement.objects - agree)
    return hits, reading


def generation_hits(mllm: VTokLM, sample_frames: SampleFrames, rows: Iterable[Mapping[str, Any]],
                    keep_frames: int = 0) -> tuple[Hits, list[dict[str, Any]]]:
    """Caption -> MLLM tokens -> sample_frames -> judge, against each row's attributes.

    Returns (hits, readings): one reading per row, {"sample_key", "caption", "reading" (the judge's),
    "hits" (that row's Hits)}, and "frames" for the first `keep_frames` rows (a report's strip).
    """
    def tokens_of(row: Mapping[str, Any], key: str) -> dict[str, np.ndarray]:
        caption = row.get("caption")
        if not caption:
            raise ValueError(f"{key}: no caption to generate from")
        return generated_tokens(mllm, str(caption))

    return _frames_hits(tokens_of, sample_frames, rows, keep_frames)


def reconstruction_hits(sample_frames: SampleFrames, rows: Iterable[Mapping[str, Any]],
                        keep_frames: int = 0) -> tuple[Hits, list[dict[str, Any]]]:
    """True tokens (RECONSTRUCTION_INPUTS the row has) -> sample_frames -> judge; as generation_hits."""
    def tokens_of(row: Mapping[str, Any], key: str) -> dict[str, np.ndarray]:
        from vtok.training.batching import collate_tokens

        present = [c for c in RECONSTRUCTION_INPUTS if row.get(c) is not None]
        if "key_tokens" not in present:
            raise ValueError(f"{key}: no key_tokens to reconstruct from")
        # collate_tokens reads every container a row can hold its tensors in; B = 1 needs no padding.
        batch = collate_tokens([{"sample_key": key, **{c: row[c] for c in present}}], columns=present)
        return {c: batch[c][0].numpy() for c in present}

    return _frames_hits(tokens_of, sample_frames, rows, keep_frames)


def _frames_hits(tokens_of: Callable[[Mapping[str, Any], str], dict[str, np.ndarray]],
                 sample_frames: SampleFrames, rows: Iterable[Mapping[str, Any]],
                 keep_frames: int) -> tuple[Hits, list[dict[str, Any]]]:
    hits: Hits = {c: [] for c in CATEGORIES}
    readings: list[dict[str, Any]] = []
    for row in rows:
        key = str(row.get("sample_key", "clip"))
        truth = _truth(row, key)
        frames = np.asarray(sample_frames(tokens_of(row, key), key))
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or 0 in frames.shape:
            raise ValueError(f"{key}: sample_frames must return uint8 frames [T, H, W, 3], got "
                             f"{frames.dtype} {list(frames.shape)}")
        row_hits, reading = judge_hits(frames, truth, key)
        for name, values in row_hits.items():
            hits[name] += values
        record: dict[str, Any] = {"sample_key": key, "caption": row.get("caption"), "reading": reading,
                                  "hits": row_hits}
        if len(readings) < keep_frames:
            record["frames"] = frames
        readings.append(record)
    return hits, readings


def _truth(row: Mapping[str, Any], key: str) -> dict[str, Any]:
    attrs = parse_attributes(row.get("attributes"))
    if attrs is None:
        raise ValueError(f"{key}: no attributes; TV-Align needs the shapes world's ground truth")
    return attrs


# ---------------------------------------------------------------------------------------------- accuracy
def merge_hits(*many: Mapping[str, Sequence[bool]]) -> Hits:
    """The hits of several batches (or actors) in one, categories in CATEGORIES order then the rest."""
    names = [c for c in CATEGORIES if any(c in h for h in many)]
    names += sorted({n for h in many for n in h} - set(names))
    return {n: [bool(b) for h in many for b in h.get(n, [])] for n in names}


def category_accuracy(hits: Mapping[str, Sequence[bool]], z: float = Z_95) -> dict[str, Interval]:
    """{category: (accuracy, n, lo, hi)} with the Wilson score interval at `z` (vtok.eval.stats), categories
    in CATEGORIES order, then "overall": every item of every category pooled. A category without items is
    left out (nothing to report); hits without any item are refused."""
    scored = {name: values for name, values in merge_hits(hits).items() if values}
    if not scored:
        raise ValueError(f"category_accuracy: no category has any hits (categories given: {sorted(hits)})")
    return accuracy_rows(scored, z)
