"""bench/fidelity_eval.py's pure helpers: the equal-budget rule, the seeds' summary and the tables (no training)."""

from __future__ import annotations

import pytest

from bench.fidelity import modes
from bench.fidelity_eval import accuracy_table, budget_frames, cell, cost_table, summarize


@pytest.mark.parametrize(("s", "r", "k"), [(16, 7, 1), (16, 15, 1), (16, 16, 2), (16, 31, 2), (16, 0, 1),
                                           (4, 7, 2), (1, 7, 8), (16, 47, 3)])
def test_budget_frames_is_the_most_frames_within_vtoks_budget(s: int, r: int, k: int) -> None:
    assert budget_frames(s, r) == k
    assert k * s <= s + r
    assert (k + 1) * s > s + r


@pytest.mark.parametrize(("s", "r", "word"), [(0, 7, "S"), (16, -1, "R"), (16.0, 7, "S"), (True, 7, "S")])
def test_budget_frames_refuses_bad_sizes(s: object, r: object, word: str) -> None:
    with pytest.raises(ValueError, match=f"^{word} "):
        budget_frames(s, r)  # type: ignore[arg-type]


def test_modes_at_the_studys_sizes() -> None:
    got = modes(16, 7, 8)
    assert [(m["label"], m["tokens"]) for m in got] == [("vtok", 23), ("frames K=1", 16), ("all frames", 128)]
    assert got[1]["args"] == ["model.tokens=frame_sampling", "model.frames=1"]
    assert got[2]["args"] == ["model.tokens=frame_sampling"]


def test_summarize_pools_seeds_and_keeps_their_spread() -> None:
    seed_a = {"count": [True, True, True, False], "color": [True, False]}
    seed_b = {"count": [True, False, False, False], "color": [True, True]}
    out = summarize([seed_a, seed_b])
    assert list(out) == ["count", "color", "overall"]
    count = out["count"]
    assert (count["acc"], count["n"]) == (4 / 8, 8)
    assert count["seeds"] == [0.75, 0.25]
    assert (count["seed_min"], count["seed_max"]) == (0.25, 0.75)
    assert count["seed_sd"] == pytest.approx(0.353553, abs=1e-6)
    assert 0 < count["lo"] < 0.5 < count["hi"] < 1
    assert (out["overall"]["acc"], out["overall"]["n"]) == (7 / 12, 12)
    assert summarize([seed_a])["count"]["seed_sd"] is None
    with pytest.raises(ValueError, match="at least one seed"):
        summarize([])


def test_cell_shows_pooled_interval_and_seed_range() -> None:
    one = {"acc": 0.5, "lo": 0.25, "hi": 0.75, "seeds": [0.5], "seed_min": 0.5, "seed_max": 0.5}
    assert cell(one) == "50.0 [25.0, 75.0]"
    many = {**one, "seeds": [0.4, 0.6], "seed_min": 0.4, "seed_max": 0.6}
    assert cell(many) == "50.0 [25.0, 75.0] (40-60)"


def _cells(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines()]


def test_accuracy_table_puts_modes_side_by_side() -> None:
    vtok = {"understanding": summarize([{"count": [True, False], "color": [True, True]}]),
            "reconstruction colour check": summarize([{"color": [True, False, False, False]}])}
    frames = {"understanding": summarize([{"count": [False, False], "color": [True, False]}]),
              "reconstruction colour check": summarize([{"color": [True, True, True, False]}])}
    rows = _cells(accuracy_table(["vtok", "frames K=1"], {"vtok": vtok, "frames K=1": frames}))
    assert rows[0] == ["task", "category", "n", "vtok", "frames K=1"]
    assert set(rows[1]) == {"-" * len(rows[1][0]), *("-" * len(c) for c in rows[1])}
    assert rows[2:] == [
        ["understanding", "count", "2", "50.0 [9.5, 90.5]", "0.0 [0.0, 65.8]"],
        ["understanding", "color", "2", "100.0 [34.2, 100.0]", "50.0 [9.5, 90.5]"],
        ["understanding", "overall", "4", "75.0 [30.1, 95.4]", "25.0 [4.6, 69.9]"],
        # one category: no "overall" row repeating it
        ["reconstruction colour check", "color", "4", "25.0 [4.6, 69.9]", "75.0 [30.1, 95.4]"],
    ]


def test_accuracy_table_refuses_modes_that_scored_other_items() -> None:
    summaries = {"a": {"understanding": summarize([{"count": [True, False]}])},
                 "b": {"understanding": summarize([{"count": [True]}])}}
    with pytest.raises(ValueError, match="understanding/count: the modes scored different items"):
        accuracy_table(["a", "b"], summaries)
    with pytest.raises(ValueError, match=r"no results for mode\(s\) \['c'\]"):
        accuracy_table(["a", "c"], summaries)


def test_cost_table_gives_medians_and_ratios_to_the_first_mode() -> None:
    costs = {"vtok": {"tokens": 23, "mllm_step_s": [0.10, 0.12, 0.50], "decoder_step_s": [0.2],
                      "mllm_wall_s": [30.0], "decoder_wall_s": [40.0], "generate_s": [0.05, 0.07]},
             "all frames": {"tokens": 128, "mllm_step_s": [0.36], "decoder_step_s": [0.3],
                            "mllm_wall_s": [90.0], "decoder_wall_s": [44.4], "generate_s": [0.3]}}
    rows = _cells(cost_table(["vtok", "all frames"], costs))
    assert rows[0][:3] == ["mode", "tokens/video", "vs first"]
    assert rows[2] == ["vtok", "23", "1.00x", "0.120", "1.00x", "0.200", "1.00x", "0.060", "1.00x", "30 + 40"]
    assert rows[3] == ["all frames", "128", "5.57x", "0.360", "3.00x", "0.300", "1.50x", "0.300", "5.00x", "90 + 44"]
