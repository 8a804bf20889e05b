"""Per-dimension mean and std of the frozen features, for standardized inputs and regression targets.

The MLLM regresses its generated visual tokens onto the frozen encoder's features, whose dimensions
differ in scale by orders of magnitude (a residual is a small difference of two means). Targets are
standardized per dimension with statistics streamed once over the training rows: sums and sums of
squares in float64, one `update` per batch of `collate_tokens`, then `finish`. The std is floored so a
constant dimension (every residual of a static clip is exactly 0) never divides by zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

COLUMNS: tuple[str, ...] = ("key_tokens", "residual_features", "frame_tokens")
"""The feature columns statistics are kept for; frame_tokens only where the shards store them."""
_MASKS = {"residual_features": "residual_mask", "frame_tokens": "frame_mask"}


@dataclass
class _Running:
    """Float64 running sums of one column."""

    total: torch.Tensor  # [D]
    squares: torch.Tensor  # [D]
    count: int = 0


@dataclass
class FeatureStats:
    """mean/std [D] per feature column, plus the token-grid sizes seen (S, the longest R and T)."""

    mean: dict[str, torch.Tensor] = field(default_factory=dict)
    """Column -> per-dimension mean [D], float32 (after finish or load)."""
    std: dict[str, torch.Tensor] = field(default_factory=dict)
    """Column -> per-dimension std [D], float32, >= min_std."""
    count: dict[str, int] = field(default_factory=dict)
    """Column -> how many D-vectors the statistics cover."""
    num_key: int = 0
    """S: key tokens per clip."""
    max_residual: int = 0
    """The most residual rows of a clip seen (r*r*R with a residual grid)."""
    residual_grid: int = 1
    """r of the data's residual grid (tokenizer.residual_grid): r*r rows per residual step; set by the caller."""
    max_frames: int = 0
    """The longest T seen (0 without frame_tokens)."""
    min_std: float = 1e-6
    """Floor of every std."""
    _running: dict[str, _Running] = field(default_factory=dict, repr=False)

    @property
    def dim(self) -> int:
        """D, the features' width."""
        source = self.mean or {k: r.total for k, r in self._running.items()}
        assert "key_tokens" in source, "FeatureStats has seen no key_tokens"
        return int(source["key_tokens"].shape[0])

    def update(self, batch: Mapping[str, Any]) -> FeatureStats:
        """Add one batch of vtok.collate_tokens (padded steps are left out by their masks)."""
        assert not self.mean, "update after finish"
        for name in COLUMNS:
            if name not in batch:
                continue
            x = torch.as_tensor(batch[name])
            d = x.shape[-1]
            if name == "key_tokens":
                assert x.dim() == 3, f"key_tokens must be [B, S, D], got {list(x.shape)}"
                assert self.num_key in (0, x.shape[1]), f"S changed from {self.num_key} to {x.shape[1]}"
                self.num_key = int(x.shape[1])
                rows = x.reshape(-1, d)  # [B*S, D]
            else:
                mask = torch.as_tensor(batch[_MASKS[name]]).bool()  # [B, R_max] or [B, T_max]
                lengths = mask.sum(1)
                longest = int(lengths.max()) if lengths.numel() else 0
                if name == "residual_features":
                    self.max_residual = max(self.max_residual, longest)
                else:
                    self.max_frames = max(self.max_frames, longest)
                rows = x[mask].reshape(-1, d)  # [real steps (x S), D]
            rows = rows.double()
            run = self._running.setdefault(
                name, _Running(torch.zeros(d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64))
            )
            assert run.total.shape[0] == d, f"{name}: D changed from {run.total.shape[0]} to {d}"
            run.total += rows.sum(0)
            run.squares += rows.pow(2).sum(0)
            run.count += int(rows.shape[0])
        return self

    def finish(self) -> FeatureStats:
        """Turn the sums into mean/std (a column never seen with data gets mean 0, std 1)."""
        assert "key_tokens" in self._running, "FeatureStats.finish before any key_tokens were seen"
        for name, run in self._running.items():
            if run.count == 0:
                mean, std = torch.zeros_like(run.total), torch.ones_like(run.total)
            else:
                mean = run.total / run.count
                var = (run.squares / run.count - mean.pow(2)).clamp_min(0.0)
                std = var.sqrt().clamp_min(self.min_std)
            self.mean[name], self.std[name], self.count[name] = mean.float(), std.float(), run.count
        self._running.clear()
        return self

    def _get(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.mean, "FeatureStats used before finish/load"
        if name not in self.mean:
            raise ValueError(
                f"the feature statistics have no {name}; they were computed from shards without it"
            )
        return self.mean[name], self.std[name]

    def standardize(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """(x - mean) / std per dimension, for x [..., D]."""
        mean, std = self._get(name)
        return (x - mean.to(x)) / std.to(x)

    def destandardize(self, name: str, z: torch.Tensor) -> torch.Tensor:
        """The inverse of standardize: back to the shards' feature space."""
        mean, std = self._get(name)
        return z * std.to(z) + mean.to(z)

    def save(self, path: str | Path) -> Path:
        """One safetensors file: "<column>.mean" / "<column>.std" tensors; sizes and counts as metadata."""
        from safetensors.torch import save_file

        assert self.mean, "FeatureStats.save before finish"
        tensors = {
            f"{k}.{part}": v.contiguous()
            for k in self.mean
            for part, v in (("mean", self.mean[k]), ("std", self.std[k]))
        }
        meta = {
            "num_key": str(self.num_key),
            "max_residual": str(self.max_residual),
            "max_frames": str(self.max_frames),
            "min_std": repr(self.min_std),
            **{f"count.{k}": str(v) for k, v in self.count.items()},
            # Only a residual grid is recorded, so statistics of one-residual-per-step data keep their bytes.
            **({"residual_grid": str(self.residual_grid)} if self.residual_grid != 1 else {}),
        }
        save_file(tensors, str(path), metadata=meta)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> FeatureStats:
        """What save wrote."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
        names = sorted({k.rsplit(".", 1)[0] for k in tensors})
        return cls(
            mean={n: tensors[f"{n}.mean"] for n in names},
            std={n: tensors[f"{n}.std"] for n in names},
            count={n: int(meta.get(f"count.{n}", 0)) for n in names},
            num_key=int(meta.get("num_key", 0)),
            max_residual=int(meta.get("max_residual", 0)),
            max_frames=int(meta.get("max_frames", 0)),
            residual_grid=int(meta.get("residual_grid", 1)),
            min_std=float(meta.get("min_std", 1e-6)),
        )
