"""The probe's classifier: a small MLP over a clip's token sequence, trained full batch (pure torch).

    x [N, L, D] -> standardize per segment and channel (training statistics) -> token projection D -> d
      -> flatten [N, L * d] (pool="flat") or mean over tokens [N, d] (pool="mean") -> Linear -> GELU -> Linear [N, C]

The per-token projection comes first so that an all-frames sequence (L = T x S, up to thousands of tokens)
costs N x L x D x d, not a dense layer over L x D inputs; flattening after it keeps where each token sits,
which position and motion need. Segments (key tokens, residual features, frame tokens) are standardized
apart because a residual (a difference of means) is an order of magnitude smaller than a key token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def standardize(x_train: np.ndarray, x_test: np.ndarray,
                bounds: Sequence[slice]) -> tuple[np.ndarray, np.ndarray]:
    """x [N, L, D] -> the same, each segment (an L-slice) and channel at zero mean and unit SD over the training
    clips' tokens of that segment; the test clips get the training statistics."""
    train, test = x_train.astype(np.float32, copy=True), x_test.astype(np.float32, copy=True)
    for seg in bounds:
        if seg.stop <= seg.start:
            continue
        mean = train[:, seg].mean(axis=(0, 1), keepdims=True)
        std = train[:, seg].std(axis=(0, 1), keepdims=True) + 1e-6
        train[:, seg] = (train[:, seg] - mean) / std
        test[:, seg] = (test[:, seg] - mean) / std
    return train, test


def build_mlp(length: int, dim: int, classes: int, cfg: Any) -> Any:
    """The classifier for [N, length, dim] inputs and `classes` classes (cfg: ProbeConfig)."""
    from torch import nn

    width = cfg.token_dim * (length if cfg.pool == "flat" else 1)

    class Probe(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.project = nn.Linear(dim, cfg.token_dim)
            self.head = nn.Sequential(nn.Linear(width, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, classes))

        def forward(self, x: Any) -> Any:
            z = self.project(x)  # [N, L, d]
            z = z.flatten(1) if cfg.pool == "flat" else z.mean(dim=1)
            return self.head(z)

    return Probe()


def fit_and_score(x_train: np.ndarray, y_train: Sequence[str], x_test: np.ndarray, y_test: Sequence[str],
                  bounds: Sequence[slice], cfg: Any, seed: int) -> int:
    """Hits on the test clips of an MLP trained on (x_train [N, L, D], y_train [N]) with init seed `seed`.

    A test label never seen in training counts as a miss (the probe cannot answer it). Deterministic for a
    seed: the initialisation draws from its own generator state (torch.random.fork_rng), not the caller's.
    """
    import torch

    classes = sorted(set(y_train))
    index = {c: i for i, c in enumerate(classes)}
    train, test = standardize(x_train, x_test, bounds)
    xt, xv = torch.from_numpy(train), torch.from_numpy(test)
    yt = torch.tensor([index[y] for y in y_train], dtype=torch.long)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_mlp(xt.shape[1], xt.shape[2], len(classes), cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    for _ in range(cfg.epochs):
        opt.zero_grad(set_to_none=True)
        loss_fn(model(xt), yt).backward()
        opt.step()
    model.eval()
    with torch.inference_mode():
        pred = model(xv).argmax(dim=1).tolist()
    return sum(classes[p] == y for p, y in zip(pred, y_test))
