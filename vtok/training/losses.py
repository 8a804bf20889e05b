"""The MLLM's losses as pure functions: cross-entropy on answer tokens, regression on visual tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
"""Label of every position that is not trained on (HF's convention)."""


def answer_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean token cross-entropy over the answer tokens.

    logits:  [M, V] float, the LM head at the positions just before each answer token
    targets: [M] int64, the answer tokens
    returns: [] float; 0 (with a graph) when M == 0
    """
    assert logits.dim() == 2 and targets.shape == logits.shape[:1], (
        f"{list(logits.shape)} vs {list(targets.shape)}"
    )
    if targets.numel() == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), targets, reduction="mean")


def shifted_answer_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where the next-token predictions of labelled tokens are read.

    labels:  [N, L] int64, IGNORE_INDEX except at answer tokens (aligned with input_ids)
    returns: (row [M], position [M] of the predicting hidden state = label position - 1, target [M])
    """
    assert bool((labels[:, 0] == IGNORE_INDEX).all()), "the first token of a sequence has no prediction"
    rows, cols = (labels != IGNORE_INDEX).nonzero(as_tuple=True)
    return rows, cols - 1, labels[rows, cols]


def visual_regression(pred: torch.Tensor, target: torch.Tensor, cosine_weight: float) -> torch.Tensor:
    """MSE + cosine_weight * (1 - cos) between predicted and true (standardized) visual tokens.

    pred:    [M, D] float, the visual head's outputs
    target:  [M, D] float, standardized frozen features (key tokens, residual features or frame tokens)
    returns: [] float, mean over tokens (and dimensions for the MSE); 0 (with a graph) when M == 0
    """
    assert pred.shape == target.shape and pred.dim() == 2, f"{list(pred.shape)} vs {list(target.shape)}"
    if pred.shape[0] == 0:
        return pred.sum() * 0.0
    pred, target = pred.float(), target.float()
    loss = F.mse_loss(pred, target, reduction="mean")
    if cosine_weight:
        loss = loss + cosine_weight * (1.0 - F.cosine_similarity(pred, target, dim=-1, eps=1e-8)).mean()
    return loss


def choice_log_likelihood(
    logits: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor, n: int
) -> torch.Tensor:
    """Summed log-probability of each sequence's answer tokens (lm-eval-harness multiple choice).

    logits:  [M, V] float, the LM head just before each answer token
    targets: [M] int64, the answer tokens
    rows:    [M] int64, the sequence (0..n-1) each token belongs to
    returns: [n] float, sum over each sequence's tokens
    """
    assert logits.dim() == 2 and targets.shape == rows.shape == logits.shape[:1]
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[:, None]).squeeze(-1)  # [M]
    return torch.zeros(n, dtype=logp.dtype, device=logp.device).index_add_(0, rows, logp)
