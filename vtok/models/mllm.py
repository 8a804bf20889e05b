"""The MLLM over VTok tokens: an HF causal LM, g_phi, a projector, slot embeddings and a visual head.

    key token    V(s)_i  ->  projector(standardize(V(s)_i))     + kind[key] + cell[i] + time[0]
    residual     r_t     ->  projector(g_phi(r_t))              + kind[res] + cell[none] + time[t]
    baseline     f_k,i   ->  projector(standardize(f_k,i))      + kind[key] + cell[i] + time[k]

With a residual grid (tokenizer.residual_grid = r > 1, FeatureStats.residual_grid) a step's r*r residual
cells r_t,c each get their own cell embedding cell[S + c] in place of cell[none] (= cell[S]).

The embeddings are written over the visual slots of the text embeddings (inputs_embeds; the layout is
vtok.training.mllm_batch's). Understanding trains CE on the answer; generation regresses the visual
head's output at the state before each slot onto that slot's standardized frozen feature (MSE + cosine,
teacher forced). g_phi takes the shards' raw residual features, so its weights plug into the tokenizer.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vtok.models.feature_stats import FeatureStats
from vtok.models.mllm_config import MLLMConfig
from vtok.models.text import encode, ensure_special_tokens, load_text_tokenizer, resize_lm_vocab
from vtok.tokenizer import GPhi
from vtok.training.batching import collate_tokens
from vtok.training.losses import (
    answer_cross_entropy,
    choice_log_likelihood,
    shifted_answer_positions,
    visual_regression,
)
from vtok.training.mllm_batch import (
    KEY,
    RESIDUAL,
    MLLMBatch,
    SpecialIds,
    VisualInputs,
    assemble,
    residual_layout,
    understanding_ids,
    visual_inputs,
)

FILES = dict(
    trainable="trainable.safetensors",
    g_phi="g_phi.safetensors",
    stats="feature_stats.safetensors",
    config="config.json",
    tokenizer="text_tokenizer",
    llm="llm",
)
"""What save_pretrained writes into a directory."""


class VTokLM(nn.Module):
    """An HF causal LM that reads and writes VTok (or frame-sampling) visual tokens."""

    def __init__(
        self, cfg: MLLMConfig, text_tokenizer: Any, stats: FeatureStats, llm_dir: str | Path | None = None
    ) -> None:
        super().__init__()
        from transformers import AutoModelForCausalLM

        path = llm_dir if llm_dir is not None else cfg.llm
        if path is None:
            raise ValueError(
                "model.llm is not set: give an HF causal LM directory (or vtok.models.tiny_llm.save_tiny_llm)"
            )
        self.cfg, self.tokenizer, self.stats = cfg, text_tokenizer, stats
        self.llm_path = str(Path(path).resolve()) if Path(path).exists() else str(path)
        ensure_special_tokens(text_tokenizer)
        self.ids = SpecialIds.of(text_tokenizer)
        self.dim, self.num_key = stats.dim, stats.num_key
        assert self.num_key > 0, "the feature statistics record no key tokens (S)"
        llm = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
        resize_lm_vocab(llm, len(text_tokenizer))
        d, h = self.dim, llm.get_input_embeddings().embedding_dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.g_phi = GPhi(d, cfg.g_phi_hidden or d, d)
            self.projector = nn.Sequential(
                nn.Linear(d, cfg.projector_hidden or h), nn.GELU(), nn.Linear(cfg.projector_hidden or h, h)
            )
            self.kind_embed = nn.Embedding(2, h)  # KEY, RESIDUAL
            # Key grid cells 0..S-1, then the residual cells S..S+r*r-1 (just S = none at r = 1).
            self.cell_embed = nn.Embedding(self.num_key + stats.residual_grid**2, h)
            self.time_embed = nn.Embedding(cfg.max_time_steps + 1, h)
            self.marker_embed = nn.Embedding(2, h)  # <video>, </video>
            self.head = nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.Linear(h, d))
            for emb in (self.kind_embed, self.cell_embed, self.time_embed, self.marker_embed):
                nn.init.normal_(emb.weight, std=0.02)
            _fold_standardization(self.g_phi, stats)
            # Parts a configuration never uses get no gradient: keep them out of the optimizer (and DDP).
            self.g_phi.requires_grad_(cfg.tokens == "vtok")
            self.head.requires_grad_(cfg.generation_weight > 0)
            if cfg.llm_mode != "full":
                llm.requires_grad_(False)
            if cfg.llm_mode == "lora":
                llm = _with_lora(llm, cfg)
        self.llm = llm

    # -- the LM's pieces (through peft's wrapper in lora mode: its adapters sit inside these modules) --
    def _lm(self) -> Any:
        return self.llm.get_base_model() if self.cfg.llm_mode == "lora" else self.llm

    def _decode(self, embeds: torch.Tensor, attention_mask: torch.Tensor | None = None, **kw: Any) -> Any:
        return self._lm().get_decoder()(inputs_embeds=embeds, attention_mask=attention_mask, **kw)

    def embed_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[N, L] ids -> [N, L, H]; <video> and </video> take the learned marker embeddings."""
        e = self._lm().get_input_embeddings()(input_ids)
        for i, marker in enumerate((self.ids.video, self.ids.video_end)):
            e = torch.where((input_ids == marker)[..., None], self.marker_embed.weight[i], e)
        return e

    def embed_visual(self, v: VisualInputs) -> torch.Tensor:
        """The visual slots [B, V] -> embeddings [B, V, H]; g_phi runs on the residual slots' raw features."""
        x = torch.where((v.kind == RESIDUAL)[..., None], self.g_phi(v.features), v.features)  # [B, V, D]
        time = v.time.clamp(0, self.cfg.max_time_steps)
        return self.projector(x) + self.kind_embed(v.kind) + self.cell_embed(v.cell) + self.time_embed(time)

    def inputs_embeds(self, batch: MLLMBatch) -> torch.Tensor:
        """[N, L, H]: text embeddings with the visual embeddings written over the visual slots."""
        text = self.embed_text(batch.input_ids)  # [N, L, H]
        vis = self.embed_visual(batch.visual)[batch.visual_row]  # [N, V, H]
        n, j = batch.visual_mask.nonzero(as_tuple=True)
        return text.index_put((n, batch.visual_pos[n, j]), vis[n, j])

    def hidden_states(self, batch: MLLMBatch) -> torch.Tensor:
        """The LM's last hidden states [N, L, H] over the batch's sequences."""
        return self._decode(self.inputs_embeds(batch), batch.attention_mask).last_hidden_state

    def visual_predictions(self, batch: MLLMBatch, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(predicted [M, D], target [M, D]) standardized tokens of every generation slot, teacher forced."""
        n, j = batch.generation_mask.nonzero(as_tuple=True)
        pred = self.head(hidden[n, batch.visual_pos[n, j] - 1])  # from the state before each slot
        return pred, batch.visual.targets[batch.visual_row[n], j]

    def forward(self, batch: MLLMBatch) -> dict[str, torch.Tensor]:
        """The weighted loss, both task losses (0 when a task is off) and how many tokens each covers."""
        hidden = self.hidden_states(batch)  # [N, L, H]
        rows, pos, targets = shifted_answer_positions(batch.labels)
        logits = self._lm().get_output_embeddings()(hidden[rows, pos])  # [M, vocab]
        loss_u = answer_cross_entropy(logits, targets)
        pred, target = self.visual_predictions(batch, hidden)  # [M', D]
        loss_g = visual_regression(pred, target, self.cfg.cosine_weight)
        loss = self.cfg.understanding_weight * loss_u + self.cfg.generation_weight * loss_g
        return {
            "loss": loss,
            "loss_understanding": loss_u.detach(),
            "loss_generation": loss_g.detach(),
            "num_answer_tokens": torch.tensor(targets.numel()),
            "num_visual_targets": torch.tensor(pred.shape[0]),
        }

    def _clip_inputs(self, visual: Mapping[str, Any]) -> VisualInputs:
        """One clip's token arrays -> its visual slots (only the columns this model reads)."""
        wanted = (
            ("key_tokens", "residual_features")
            if self.cfg.tokens == "vtok"
            else ("key_tokens", "frame_tokens")
        )
        row = {"sample_key": "clip", **{k: visual[k] for k in wanted if visual.get(k) is not None}}
        if "key_tokens" not in row and "frame_tokens" in row:
            row["key_tokens"] = row["frame_tokens"][0]  # the baseline's first frame is the key frame
        return visual_inputs(collate_tokens([row]), self.cfg, self.stats)

    @torch.inference_mode()
    def score_choices(self, visual: Mapping[str, Any], question: str, candidates: list[str]) -> list[float]:
        """Summed log-likelihood of each candidate's tokens (and <eos>) after the clip and the question.

        `visual`: one clip's key_tokens [S, D] and residual_features [r*r*R, D] (frame_tokens [T, S, D] for the
        baseline). The <eos> is scored as in training, so a candidate that is a prefix of another
        ("top" vs "top left") does not win by being short.
        """
        v = self._clip_inputs(visual)
        q = encode(self.tokenizer, question)
        seqs = [
            (*understanding_ids(self.ids, v.lengths[0], q, encode(self.tokenizer, " " + c)), 0, False)
            for c in candidates
        ]
        batch = assemble(seqs, v, self.ids.pad, ["clip"] * len(seqs)).to(self._device())
        hidden = self.hidden_states(batch)
        rows, pos, targets = shifted_answer_positions(batch.labels)
        logits = self._lm().get_output_embeddings()(hidden[rows, pos])
        return choice_log_likelihood(logits, targets, rows, len(candidates)).tolist()

    @torch.inference_mode()
    def generate_tokens(
        self,
        prompt: str,
        num_key: int | None = None,
        num_residual: int | None = None,
        num_frames: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray] | np.ndarray:
        """Visual tokens for a caption, autoregressively, in the shards' format (de-standardized float32).

        VTok: (key [S, D], residual features [r*r*R, D]); each prediction goes back in the way training feeds
        that slot (key: projector(pred); residual: projector(g_phi(pred))). Baseline: frame tokens [T', S, D].
        `num_residual`: residual rows (r*r per step with a residual grid); None = the most seen in training.
        """
        s = num_key or self.num_key
        assert s == self.num_key, f"the model has {self.num_key} key cells, asked for {s}"
        if self.cfg.tokens == "vtok":
            r = self.stats.max_residual if num_residual is None else num_residual
            steps, res_cells = residual_layout(torch.ones(1, r, dtype=torch.bool), self.stats.residual_grid)
            kinds, cells, times = (
                [KEY] * s + [RESIDUAL] * r,
                [*range(s), *(s + res_cells).tolist()],
                [0] * s + steps.tolist(),
            )
        else:
            t = num_frames or self.cfg.frames or self.stats.max_frames
            kinds, cells, times = [KEY] * (t * s), list(range(s)) * t, [k for k in range(t) for _ in range(s)]
        device = self._device()
        ids = torch.tensor([[self.ids.bos, *encode(self.tokenizer, prompt), self.ids.video]], device=device)
        # transformers 5.x names the KV cache `cache` (4.x: past_key_values), in the call and the output.
        cache_arg = (
            "cache"
            if "cache" in inspect.signature(self._lm().get_decoder().forward).parameters
            else "past_key_values"
        )
        out = self._decode(self.embed_text(ids), use_cache=True)
        cache, last = getattr(out, cache_arg), out.last_hidden_state[:, -1]  # [1, H]
        preds: list[torch.Tensor] = []
        for kind, cell, time in zip(kinds, cells, times):
            z = self.head(last)  # [1, D], standardized
            preds.append(z[0])
            # The slot's input as training builds it: standardized key/frame token, raw residual feature.
            x = self.stats.destandardize("residual_features", z) if kind == RESIDUAL else z
            slot = VisualInputs(
                x[None],
                x[None],
                *(torch.tensor([[i]], device=device) for i in (kind, cell, time)),
                torch.ones(1, 1, dtype=torch.bool, device=device),
            )
            out = self._decode(self.embed_visual(slot), use_cache=True, **{cache_arg: cache})
            cache, last = getattr(out, cache_arg), out.last_hidden_state[:, -1]
        z = torch.stack(preds).float().cpu() if preds else torch.zeros(0, self.dim)
        if self.cfg.tokens == "vtok":
            key = self.stats.destandardize("key_tokens", z[:s]).numpy().astype(np.float32)
            return key, self.stats.destandardize("residual_features", z[s:]).numpy().astype(np.float32)
        return self.stats.destandardize("frame_tokens", z).reshape(-1, s, self.dim).numpy().astype(np.float32)

    def _device(self) -> torch.device:
        return self.projector[0].weight.device

    # -- state --
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Every trainable parameter by name (LoRA adapters in lora mode, the whole LM in full mode)."""
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state: Mapping[str, torch.Tensor], skip_llm: bool = False) -> None:
        """Copy `state` into the trainable parameters; the names must match exactly (skip_llm: not the LM's)."""
        params = {
            n: p
            for n, p in self.named_parameters()
            if p.requires_grad and not (skip_llm and n.startswith("llm."))
        }
        missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        if missing or unexpected:
            raise ValueError(
                f"trainable state does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        with torch.no_grad():
            for name, p in params.items():
                if tuple(state[name].shape) != tuple(p.shape):
                    raise ValueError(
                        f"trainable state {name}: shape {list(state[name].shape)}, the model has {list(p.shape)}"
                    )
                p.copy_(state[name])

    def load_llm_weights(self, llm_dir: str | Path) -> None:
        """Copy the weights of the HF directory `llm_dir` (a full-mode checkpoint's llm/) into the LM."""
        from transformers import AutoModelForCausalLM

        saved = AutoModelForCausalLM.from_pretrained(str(llm_dir), dtype=torch.float32)
        self.llm.load_state_dict(saved.state_dict())

    def save_pretrained(self, out_dir: str | Path) -> Path:
        """Write trainable.safetensors, g_phi.safetensors, feature_stats.safetensors, config.json,
        text_tokenizer/ (and llm/ in full mode) into the local directory `out_dir`."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        full = self.cfg.llm_mode == "full"
        trainable = {
            n: t.contiguous()
            for n, t in self.trainable_state_dict().items()
            if not (full and n.startswith("llm."))
        }
        save_file(trainable, str(out / FILES["trainable"]))
        save_file(
            {k: v.detach().contiguous() for k, v in self.g_phi.state_dict().items()},
            str(out / FILES["g_phi"]),
        )
        self.stats.save(out / FILES["stats"])
        self.tokenizer.save_pretrained(str(out / FILES["tokenizer"]))
        if full:
            self.llm.save_pretrained(str(out / FILES["llm"]))
        config = {
            "mllm": {**asdict(self.cfg), "llm": self.llm_path},
            "llm_path": self.llm_path,
            "feature_dim": self.dim,
            "num_key": self.num_key,
            "max_residual": self.stats.max_residual,
            "max_frames": self.stats.max_frames,
            **({"residual_grid": self.stats.residual_grid} if self.stats.residual_grid != 1 else {}),
        }
        (out / FILES["config"]).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        return out

    @classmethod
    def from_pretrained(cls, path: str | Path) -> VTokLM:
        """The model save_pretrained wrote (the base LM from its recorded path, or from llm/ in full mode)."""
        from safetensors.torch import load_file

        root = Path(path)
        config = json.loads((root / FILES["config"]).read_text())
        cfg = MLLMConfig(**config["mllm"])
        full = cfg.llm_mode == "full"
        llm_dir = root / FILES["llm"] if full else config["llm_path"]
        model = cls(
            cfg,
            load_text_tokenizer(root / FILES["tokenizer"]),
            FeatureStats.load(root / FILES["stats"]),
            llm_dir,
        )
        model.llm_path = config["llm_path"]
        model.load_trainable_state_dict(load_file(str(root / FILES["trainable"])), skip_llm=full)
        return model


def _with_lora(llm: Any, cfg: MLLMConfig) -> Any:
    """`llm` wrapped by peft with LoRA adapters on cfg.lora_targets (no dropout: outputs are deterministic)."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        target_modules=list(cfg.lora_targets),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(llm, lora)


def _fold_standardization(g_phi: GPhi, stats: FeatureStats) -> None:
    """Initialize g_phi as if its input were standardized, while it keeps taking raw residual features.

    fc1(z) with z = (x - mean) / std equals fc1'(x) with W' = W / std, b' = b - W' mean. The std is
    floored at a tenth of its RMS so a near-constant dimension does not get a huge weight.
    """
    if "residual_features" not in stats.mean or not stats.count.get("residual_features"):
        return
    mean, std = stats.mean["residual_features"], stats.std["residual_features"]
    std = std.clamp_min(0.1 * float(std.pow(2).mean().sqrt()))
    with torch.no_grad():
        g_phi.fc1.weight /= std[None, :]
        g_phi.fc1.bias -= g_phi.fc1.weight @ mean
