"""Training losses as pure functions: the MLLM's (cross-entropy on answer tokens, regression on visual tokens)
and the decoder's flow matching (noise levels, noisy inputs and velocity targets, the masked MSE)."""

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


# ------------------------------------------------------------------ the decoder's flow matching (rectified flow)
# diffusers' FlowMatchEulerDiscreteScheduler conventions: x_t = (1 - sigma) x0 + sigma noise, sigma in (0, 1),
# timestep = sigma * 1000; the transformer predicts the velocity noise - x0.


def shift_sigmas(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """The scheduler's timestep shift: shift * s / (1 + (shift - 1) * s), elementwise (identity at shift 1)."""
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


def logit_normal_sigmas(
    n: int,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    shift: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Training noise levels: sigmoid(N(logit_mean, logit_std)), shifted (SD3 / WAN).

    returns: [n] float32 in (0, 1), on `device` (drawn on the generator's device)
    """
    gen_device = generator.device if generator is not None else device
    u = torch.randn(n, generator=generator, device=gen_device) * logit_std + logit_mean
    return shift_sigmas(torch.sigmoid(u), shift).to(device)


def flow_matching_pair(
    x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, target velocity) of clean samples at noise levels `sigma`.

    x0, noise: [B, ...] float, the same shape
    sigma:     [B] float in [0, 1]
    returns:   (x_t = (1 - sigma) x0 + sigma noise [B, ...], target = noise - x0 [B, ...])
    """
    assert x0.shape == noise.shape and sigma.shape == x0.shape[:1], (
        f"{list(x0.shape)}, {list(noise.shape)}, sigma {list(sigma.shape)}"
    )
    s = sigma.to(x0.dtype).view(-1, *[1] * (x0.dim() - 1))
    return (1.0 - s) * x0 + s * noise, noise - x0


def flow_matching_loss(
    pred: torch.Tensor, target: torch.Tensor, frame_valid: torch.Tensor | None = None
) -> torch.Tensor:
    """MSE between predicted and true velocities, over the real frames only.

    pred, target: [B, C, F, H, W] float
    frame_valid:  [B, F] bool, False at frames that pad a shorter clip; None = every frame is real
    returns:      [] float, mean over the real frames' elements
    """
    assert pred.shape == target.shape and pred.dim() == 5, f"{list(pred.shape)} vs {list(target.shape)}"
    err = (pred.float() - target.float()).pow(2)  # [B, C, F, H, W]
    if frame_valid is None:
        return err.mean()
    assert frame_valid.shape == (pred.shape[0], pred.shape[2]), (
        f"frame_valid {list(frame_valid.shape)} vs [B, F]={[pred.shape[0], pred.shape[2]]}"
    )
    w = frame_valid.to(err.dtype)[:, None, :, None, None]  # [B, 1, F, 1, 1]
    count = w.sum() * pred.shape[1] * pred.shape[3] * pred.shape[4]
    assert float(count) > 0, "no real frame in the batch"
    return (err * w).sum() / count
