from __future__ import annotations

import numpy as np
import pytest

from vtok.eval.stats import accuracy_rows, mean_interval, wilson_interval


@pytest.mark.parametrize(("hits", "n", "lo", "hi"), [
    # Published 95 % Wilson intervals (e.g. Newcombe 1998, Table I; R's binom::binom.wilson).
    (0, 10, 0.0, 0.2775),
    (5, 10, 0.2366, 0.7634),
    (10, 10, 0.7225, 1.0),
    (1, 1, 0.2065, 1.0),
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
])
def test_wilson_known_values(hits: int, n: int, lo: float, hi: float) -> None:
    got = wilson_interval(hits, n)
    assert got == pytest.approx((lo, hi), abs=5e-5)


def test_wilson_bounds_hold_exactly_and_narrow_with_n() -> None:
    for n in (1, 2, 7, 100, 10_000):
        for hits in sorted({0, 1, n // 3, n - 1, n} & set(range(n + 1))):
            lo, hi = wilson_interval(hits, n)
            assert 0.0 <= lo <= hits / n <= hi <= 1.0
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    widths = [hi - lo for lo, hi in (wilson_interval(n // 2, n) for n in (10, 100, 1000))]
    assert widths[0] > widths[1] > widths[2]
    # 99 % is wider than 95 %.
    lo95, hi95 = wilson_interval(5, 10)
    lo99, hi99 = wilson_interval(5, 10, z=2.576)
    assert lo99 < lo95 and hi99 > hi95
    assert wilson_interval(np.int64(3), np.int64(4)) == wilson_interval(3, 4)


@pytest.mark.parametrize(("hits", "n", "z", "match"), [
    (0, 0, 1.96, "n must be >= 1, got 0"),
    (11, 10, 1.96, r"hits must be in \[0, n=10\], got 11"),
    (-1, 10, 1.96, "hits must be in"),
    (True, 10, 1.96, "hits must be an int, got True"),
    (5, 10.0, 1.96, "n must be an int, got 10.0"),
    (5, 10, 0.0, "z must be a finite number > 0, got 0.0"),
])
def test_wilson_refuses_bad_input(hits: int, n: int, z: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        wilson_interval(hits, n, z)


def test_mean_interval_known_values() -> None:
    # mean 3, s = sqrt(2.5), s / sqrt(5) = sqrt(0.5): 3 -+ 1.96 * 0.70711.
    mean, lo, hi = mean_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert mean == 3.0
    assert (lo, hi) == pytest.approx((1.6141, 4.3859), abs=5e-5)
    assert mean_interval([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5)
    assert mean_interval(np.array([0.1, 0.2, 0.3, 0.4]))[0] == pytest.approx(0.25, abs=1e-15)


@pytest.mark.parametrize(("values", "match"), [
    ([1.0], "at least 2 values, got 1"),
    ([], "at least 2 values, got 0"),
    ([1.0, float("nan")], "values must be finite, got nan"),
    ([[1.0, 2.0]], r"flat sequence of numbers, got shape \(1, 2\)"),
])
def test_mean_interval_refuses_bad_input(values: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        mean_interval(values)


def test_accuracy_rows_per_category_and_overall() -> None:
    rows = accuracy_rows({"color": [True, True, False, False], "count": [True, True, True, False]})
    assert list(rows) == ["color", "count", "overall"]
    assert rows["color"] == (0.5, 4, *wilson_interval(2, 4))
    assert rows["count"] == (0.75, 4, *wilson_interval(3, 4))
    assert rows["overall"] == (0.625, 8, *wilson_interval(5, 8))
    assert accuracy_rows({"motion": list(np.array([True, False, True]))})["motion"][:2] == (2 / 3, 3)


@pytest.mark.parametrize(("outcomes", "match"), [
    ({}, "at least one category"),
    ({"color": []}, "category 'color' has no outcomes"),
    ({"overall": [True]}, "category 'overall' is computed here"),
    ({"size": [True, 1]}, "category 'size': outcomes must be bools, got 1"),
])
def test_accuracy_rows_refuses_bad_input(outcomes: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        accuracy_rows(outcomes)
