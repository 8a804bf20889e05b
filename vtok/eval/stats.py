"""Confidence intervals for evaluation results: pure functions, no torch, no ray.

Accuracies get the Wilson score interval (Wilson 1927), which stays inside [0, 1] and is sound at 0 or n hits
and small n, where the normal approximation collapses to a zero-width interval. Means of per-sample scores
(VBench dimensions) get the normal approximation mean +- z * s / sqrt(n) with the sample standard deviation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from schemas.eval_result import OVERALL_CATEGORY


def _check_z(z: float) -> None:
    if isinstance(z, bool) or not isinstance(z, (int, float)) or not math.isfinite(z) or z <= 0:
        raise ValueError(f"z must be a finite number > 0, got {z!r}")


def wilson_interval(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """(lo, hi) of the Wilson score interval for `hits` successes out of `n` trials, 0 <= lo <= hits/n <= hi <= 1.

    With p = hits / n: (p + z^2/2n -+ z * sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n). z = 1.96 is 95 %.
    """
    for name, value in (("hits", hits), ("n", n)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an int, got {value!r}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0 <= hits <= n:
        raise ValueError(f"hits must be in [0, n={n}], got {hits}")
    _check_z(z)
    p = hits / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    margin = z * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n)) / denom
    # Rounding can put a bound a hair past p or [0, 1] at hits = 0 or n: clamp so lo <= p <= hi holds exactly.
    return max(0.0, min(center - margin, p)), min(1.0, max(center + margin, p))


def mean_interval(values: Sequence[float], z: float = 1.96) -> tuple[float, float, float]:
    """(mean, lo, hi) of `values` [n], n >= 2: mean -+ z * s / sqrt(n), s the sample standard deviation (ddof 1)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"values must be a flat sequence of numbers, got shape {arr.shape}")
    if arr.size < 2:
        raise ValueError(f"mean_interval needs at least 2 values, got {arr.size}")
    if not np.isfinite(arr).all():
        raise ValueError(f"values must be finite, got {float(arr[~np.isfinite(arr)][0])!r} among them")
    _check_z(z)
    mean = float(math.fsum(arr.tolist()) / arr.size)
    std = float(np.std(arr, ddof=1))
    margin = z * std / math.sqrt(arr.size)
    return mean, mean - margin, mean + margin


def accuracy_rows(
    outcomes: Mapping[str, Sequence[bool]], z: float = 1.96
) -> dict[str, tuple[float, int, float, float]]:
    """Accuracy per category: {category: [correct?, ...]} -> {category: (value, n, lo, hi)}, Wilson bounds.

    Categories keep their order; OVERALL_CATEGORY ("overall") comes last, pooled over every answer (each
    question weighs the same, so a category with more questions weighs more).
    """
    if OVERALL_CATEGORY in outcomes:
        raise ValueError(f"category {OVERALL_CATEGORY!r} is computed here; do not pass it")
    if not outcomes:
        raise ValueError("accuracy_rows needs at least one category")
    out: dict[str, tuple[float, int, float, float]] = {}
    total_hits = total_n = 0
    for category, answers in outcomes.items():
        bad = [a for a in answers if not isinstance(a, (bool, np.bool_))]
        if bad:
            raise ValueError(f"category {category!r}: outcomes must be bools, got {bad[0]!r}")
        n = len(answers)
        if n == 0:
            raise ValueError(f"category {category!r} has no outcomes")
        hits = sum(bool(a) for a in answers)
        out[category] = (hits / n, n, *wilson_interval(hits, n, z))
        total_hits += hits
        total_n += n
    out[OVERALL_CATEGORY] = (total_hits / total_n, total_n, *wilson_interval(total_hits, total_n, z))
    return out
