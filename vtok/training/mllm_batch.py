"""Token rows -> the MLLM's input sequences: text ids, where the visual tokens go, labels and targets.

Every row gives one understanding sequence and one generation sequence (a task whose weight is 0 is
left out); understanding sequences come first, then generation ones, each padded on the right to the
longest sequence of the batch:

    understanding  <bos> <video> v_1 .. v_n </video> question answer <eos>   CE on answer + <eos>
    generation     <bos> caption <video> x_1 .. x_n                         the state before x_j predicts x_j

v_j / x_j are visual slots: the text ids there are <pad> and the model writes its visual embeddings
over them. With tokens="vtok" a clip's slots are its S key tokens then its r*r*R residual features (r =
the data's residual grid, FeatureStats.residual_grid; each step's r*r cells in stored order); with
tokens="frame_sampling" they are the S grid tokens of each of its T frames (or of K evenly spaced ones).
The visual tensors are per clip (`VisualInputs`, [B, V, ...]); `visual_row` says which clip a sequence shows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vtok.eval.questions import Question, caption_question, parse_attributes, questions_for
from vtok.training.batching import TokenBatch, collate_tokens
from vtok.training.losses import IGNORE_INDEX

if TYPE_CHECKING:
    from vtok.models.feature_stats import FeatureStats
    from vtok.models.mllm_config import MLLMConfig

KEY, RESIDUAL = 0, 1
"""Visual slot kinds: a key (or baseline frame) grid token, a residual step."""


@dataclass
class SpecialIds:
    """The ids the layout needs."""

    bos: int
    eos: int
    pad: int
    video: int
    video_end: int

    @classmethod
    def of(cls, tokenizer: Any) -> SpecialIds:
        from vtok.models.text import VIDEO_END, VIDEO_START

        vocab = tokenizer.get_vocab()
        assert VIDEO_START in vocab and VIDEO_END in vocab, (
            "call vtok.models.text.ensure_special_tokens first"
        )
        return cls(
            tokenizer.bos_token_id,
            tokenizer.eos_token_id,
            tokenizer.pad_token_id,
            vocab[VIDEO_START],
            vocab[VIDEO_END],
        )


@dataclass
class VisualInputs:
    """The visual slots of B clips, padded to V = the most slots of any clip."""

    features: (
        torch.Tensor
    )  # [B, V, D] model inputs: standardized key/frame tokens, RAW residual features (g_phi's input)
    targets: torch.Tensor  # [B, V, D] standardized features: what generation regresses onto
    kind: torch.Tensor  # [B, V] int64, KEY or RESIDUAL
    cell: torch.Tensor  # [B, V] int64, key grid cell 0..S-1; S + c for residual cell c (0..r*r-1; S at r = 1)
    time: (
        torch.Tensor
    )  # [B, V] int64, 0 for key tokens, 1..R for residuals (the step), the frame's index k for the baseline
    valid: torch.Tensor  # [B, V] bool, True at real slots

    @property
    def lengths(self) -> list[int]:
        return [int(n) for n in self.valid.sum(1)]


@dataclass
class MLLMBatch:
    """N sequences over the B clips of `visual`; understanding sequences first."""

    input_ids: torch.Tensor  # [N, L] int64, <pad> at visual slots and padding
    attention_mask: torch.Tensor  # [N, L] int64, 1 at real tokens (visual slots included)
    labels: torch.Tensor  # [N, L] int64, the answer tokens (+ <eos>), IGNORE_INDEX elsewhere
    is_generation: torch.Tensor  # [N] bool
    visual_row: torch.Tensor  # [N] int64, the clip of `visual` the sequence shows
    visual_pos: torch.Tensor  # [N, V] int64, sequence position of each visual slot (0 where not valid)
    visual: VisualInputs
    sample_keys: list[str]  # [N]

    @property
    def visual_mask(self) -> torch.Tensor:
        """[N, V] bool: the valid visual slots of each sequence."""
        return self.visual.valid[self.visual_row]

    @property
    def generation_mask(self) -> torch.Tensor:
        """[N, V] bool: the slots whose tokens are regressed (generation sequences only)."""
        return self.visual_mask & self.is_generation[:, None]

    def to(self, device: torch.device | str) -> MLLMBatch:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in moved.items():
            if isinstance(value, torch.Tensor):
                moved[name] = value.to(device)
        v = self.visual
        moved["visual"] = VisualInputs(*(getattr(v, f.name).to(device) for f in fields(v)))
        return MLLMBatch(**moved)


def visual_inputs(batch: TokenBatch, cfg: MLLMConfig, stats: FeatureStats) -> VisualInputs:
    """The visual slots of a collate_tokens batch, standardized by `stats`; refuses what the model cannot read."""
    key = batch["key_tokens"]
    assert isinstance(key, torch.Tensor) and key.dim() == 3, "key_tokens must be a [B, S, D] tensor"
    b, s, d = key.shape
    if d != stats.dim:
        raise ValueError(f"the shards' tokens are D={d} wide, the model was built for D={stats.dim}")
    if stats.num_key and s != stats.num_key:
        raise ValueError(f"the shards have S={s} key tokens, the model was built for S={stats.num_key}")
    if cfg.tokens == "vtok":
        res = batch["residual_features"]
        assert isinstance(res, torch.Tensor)
        r = res.shape[1]  # residual rows: r*r per step
        res_valid = batch["residual_mask"]
        assert isinstance(res_valid, torch.Tensor)
        steps, cells = residual_layout(res_valid, stats.residual_grid)
        key_std = stats.standardize("key_tokens", key)  # [B, S, D]
        features = torch.cat([key_std, res], 1)  # [B, S + r*r*R, D]
        targets = torch.cat([key_std, stats.standardize("residual_features", res)], 1)
        kind = torch.tensor([KEY] * s + [RESIDUAL] * r).expand(b, -1)
        cell = torch.cat([torch.arange(s), s + cells]).expand(b, -1)
        time = torch.cat([torch.zeros(s, dtype=torch.long), steps]).expand(b, -1)
        valid = torch.cat([torch.ones(b, s, dtype=torch.bool), res_valid.bool()], 1)
    else:
        if "frame_tokens" not in batch:
            raise ValueError(
                "model.tokens=frame_sampling needs frame_tokens in the shards (tokenizer.frame_tokens=true)"
            )
        frames, frame_valid = batch["frame_tokens"], batch["frame_mask"]
        assert isinstance(frames, torch.Tensor) and isinstance(frame_valid, torch.Tensor)
        t_b = frame_valid.sum(1)  # [B]
        if cfg.frames is not None:
            if int(t_b.min()) < cfg.frames:
                raise ValueError(f"model.frames={cfg.frames} exceeds the clips' T={int(t_b.min())}")
            pick = torch.stack([even_frames(int(t), cfg.frames) for t in t_b])  # [B, K]
            frames = frames[torch.arange(b)[:, None], pick]  # [B, K, S, D]
            frame_valid = torch.ones(b, cfg.frames, dtype=torch.bool)
        t = frames.shape[1]
        features = stats.standardize("frame_tokens", frames).reshape(b, t * s, d)  # [B, T*S, D]
        targets = features
        kind = torch.full((b, t * s), KEY)
        cell = torch.arange(s).repeat(t).expand(b, -1)
        time = torch.arange(t).repeat_interleave(s).expand(b, -1)
        valid = frame_valid.bool().repeat_interleave(s, dim=1)
    longest = int(time[valid].max()) if bool(valid.any()) else 0
    if longest > cfg.max_time_steps:
        raise ValueError(
            f"the clips need {longest} time steps, more than model.max_time_steps={cfg.max_time_steps}"
        )
    return VisualInputs(
        features.float().contiguous(),
        targets.float().contiguous(),
        kind.contiguous(),
        cell.contiguous(),
        time.contiguous(),
        valid.contiguous(),
    )


def residual_layout(residual_mask: torch.Tensor, residual_grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(step 1..R [R_rows], cell 0..r*r-1 [R_rows]) of the residual rows of a collate batch, residual_mask
    [B, R_rows]; refuses clips whose row count is not a whole number of r*r-cell steps."""
    per_step = residual_grid * residual_grid
    rows = residual_mask.bool().sum(1)  # [B]
    bad = [int(n) for n in rows if int(n) % per_step]
    if bad or residual_mask.shape[1] % per_step:
        raise ValueError(f"residual_features: {bad[0] if bad else residual_mask.shape[1]} rows in a clip, not a "
                         f"whole number of steps of r*r={per_step} cells (tokenizer.residual_grid={residual_grid})")
    index = torch.arange(residual_mask.shape[1])
    return 1 + index // per_step, index % per_step


def even_frames(t: int, k: int) -> torch.Tensor:
    """[K] indices of K evenly spaced frames out of T (first and last included)."""
    assert 1 <= k <= t, f"cannot pick {k} of {t} frames"
    return torch.from_numpy(np.linspace(0, t - 1, k).round().astype(np.int64))


def understanding_ids(
    ids: SpecialIds, n_visual: int, question: list[int], answer: list[int]
) -> tuple[list[int], list[int], int]:
    """(input ids, labels, first visual position) of `<bos> <video> v.. </video> question answer <eos>`."""
    head = [ids.bos, ids.video, *[ids.pad] * n_visual, ids.video_end, *question]
    tail = [*answer, ids.eos]
    return head + tail, [IGNORE_INDEX] * len(head) + tail, 2


def generation_ids(ids: SpecialIds, n_visual: int, caption: list[int]) -> tuple[list[int], list[int], int]:
    """(input ids, labels, first visual position) of `<bos> caption <video> x..`: no CE anywhere."""
    seq = [ids.bos, *caption, ids.video, *[ids.pad] * n_visual]
    return seq, [IGNORE_INDEX] * len(seq), len(caption) + 2


def assemble(
    sequences: Sequence[tuple[list[int], list[int], int, int, bool]],
    visual: VisualInputs,
    pad: int,
    keys: list[str],
) -> MLLMBatch:
    """(ids, labels, first visual position, clip row, is generation) per sequence -> one right-padded batch."""
    n, longest = len(sequences), max(len(s[0]) for s in sequences)
    v = visual.valid.shape[1]
    input_ids = torch.full((n, longest), pad, dtype=torch.long)
    labels = torch.full((n, longest), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((n, longest), dtype=torch.long)
    visual_pos = torch.zeros((n, v), dtype=torch.long)
    rows = torch.tensor([s[3] for s in sequences], dtype=torch.long)
    lengths = visual.lengths
    for i, (seq, lab, start, row, _) in enumerate(sequences):
        input_ids[i, : len(seq)] = torch.tensor(seq)
        labels[i, : len(lab)] = torch.tensor(lab)
        attention[i, : len(seq)] = 1
        visual_pos[i, : lengths[row]] = start + torch.arange(lengths[row])
    gen = torch.tensor([s[4] for s in sequences], dtype=torch.bool)
    return MLLMBatch(input_ids, attention, labels, gen, rows, visual_pos, visual, keys)


def pick_index(seed: int, sample_key: str, step: int, n: int) -> int:
    """A deterministic choice in 0..n-1 from (seed, sample key, step)."""
    digest = hashlib.sha256(f"{seed}\0{sample_key}\0{step}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % n


class MLLMCollator:
    """Rows of a token dataset (a list of dicts, or Ray's dict of column arrays) -> an MLLMBatch."""

    def __init__(self, text_tokenizer: Any, cfg: MLLMConfig, stats: FeatureStats, seed: int = 0) -> None:
        from vtok.models.text import encode

        self.tokenizer, self.cfg, self.stats, self.seed = text_tokenizer, cfg, stats, seed
        self.ids = SpecialIds.of(text_tokenizer)
        self._encode = lambda text: encode(text_tokenizer, text)
        self.columns = {"sample_key", "caption", "attributes", "key_tokens"}
        self.columns |= {"residual_features"} if cfg.tokens == "vtok" else {"frame_tokens"}

    def question(self, sample_key: str, attributes: Any, caption: str | None, step: int) -> Question:
        """The understanding question of a row at `step`: one of its templated questions, or captioning."""
        attrs = parse_attributes(attributes)
        if attrs is None:
            if not caption:
                raise ValueError(
                    f"{sample_key}: a row needs attributes or a caption for the understanding task"
                )
            return caption_question(caption)
        qs = questions_for(attrs)
        return qs[pick_index(self.seed, sample_key, step, len(qs))]

    def __call__(self, rows: Sequence[Mapping[str, Any]] | Mapping[str, Any], step: int = 0) -> MLLMBatch:
        if self.cfg.tokens == "frame_sampling":
            has = (
                "frame_tokens" in rows
                if isinstance(rows, Mapping)
                else all(r.get("frame_tokens") is not None for r in rows)
            )
            if not has:
                raise ValueError(
                    "model.tokens=frame_sampling needs frame_tokens in the shards (tokenizer.frame_tokens=true)"
                )
        batch = collate_tokens(rows, columns=self.columns)
        visual = visual_inputs(batch, self.cfg, self.stats)
        keys = [str(k) for k in batch["sample_key"]]
        b = len(keys)
        captions = list(batch.get("caption", [None] * b))
        attributes = list(batch.get("attributes", [None] * b))
        lengths = visual.lengths
        seqs: list[tuple[list[int], list[int], int, int, bool]] = []
        if self.cfg.understanding_weight > 0:
            for i, key in enumerate(keys):
                q = self.question(key, attributes[i], captions[i], step)
                ids, labels, start = understanding_ids(
                    self.ids, lengths[i], self._encode(q.text), self._encode(" " + q.answer)
                )
                seqs.append((ids, labels, start, i, False))
        if self.cfg.generation_weight > 0:
            for i, key in enumerate(keys):
                if not captions[i]:
                    raise ValueError(f"{key}: the generation task needs a caption")
                ids, labels, start = generation_ids(self.ids, lengths[i], self._encode(captions[i]))
                seqs.append((ids, labels, start, i, True))
        seq_keys = [keys[s[3]] for s in seqs]
        return assemble(seqs, visual, self.ids.pad, seq_keys)
