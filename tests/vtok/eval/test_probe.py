"""The probe (vtok.eval.probe) on tiny synthetic token rows whose answers are known; no Ray, no encoder."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from schemas.eval_result import to_table
from vtok.errors import InputError
from vtok.eval.probe import (
    FIRST_LOOK,
    ProbeConfig,
    budget_frames,
    clip_label,
    held_out_mask,
    mode_segments,
    probe_table,
    run_probe,
)
from vtok.eval.probe_rows import probe_result_rows

pytestmark = pytest.mark.usefixtures("one_torch_thread")

COLOURS = ("red", "green", "blue", "yellow")
S, T, D = 4, 4, 8


def rows_of(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Single-object clips: the key tokens carry the colour (a fixed direction per colour plus noise), the later
    frames carry the motion, nothing carries the size."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=(len(COLOURS), D)).astype(np.float32)
    rows = []
    for i in range(n):
        colour, motion = i % len(COLOURS), (i // len(COLOURS)) % 2
        frames = rng.normal(scale=0.5, size=(T, S, D)).astype(np.float32)
        frames += 2.0 * direction[colour]
        frames[1:, 0, 0] += 3.0 * (1 if motion else -1)
        obj = {"color": COLOURS[colour], "motion": ("left", "right")[motion], "size": ("small", "large")[
            int(rng.integers(2))], "shape": "circle", "position": "center"}
        rows.append({"sample_key": f"clip{i:04d}", "key_tokens": frames[0],
                     "residual_features": frames[1:].mean(axis=1) - frames[0].mean(axis=0),
                     "frame_tokens": frames, "frame_indices": list(range(T)), "label": f"L{i % 3}",
                     "attributes": json.dumps({"count": 1, "objects": [obj]})})
    return rows


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    return rows_of(120)


FAST: dict[str, Any] = dict(epochs=40, hidden=32, test_fraction=0.3)


def test_colour_from_key_tokens_is_near_perfect_and_shuffled_labels_near_chance(
        rows: list[dict[str, Any]]) -> None:
    cfg = ProbeConfig(modes=["key_only"], attributes=["color", "size"], shuffled_control=True, seeds=3, **FAST)
    scores = {s.attribute: s for s in run_probe(rows, cfg)}
    colour, size = scores["color"], scores["size"]
    assert colour.accuracy >= 0.95, colour
    assert colour.lo > 0.8 and colour.hi <= 1.0
    assert colour.classes == 4 and colour.tokens == S
    assert colour.train_clips + colour.test_clips == 120 and 3 * colour.test_clips == colour.n
    # Permuted training labels cannot be learnt: the control (3 permutations) lands near chance (1/4), far below.
    assert colour.control is not None and colour.control < 0.5 and colour.accuracy - colour.control > 0.45
    assert colour.chance < 0.5  # four balanced colours: the majority class is about a quarter of the test clips
    # Nothing in the tokens says the size: the probe sits near its chance too.
    assert size.accuracy < 0.75


def test_motion_needs_the_later_frames(rows: list[dict[str, Any]]) -> None:
    cfg = ProbeConfig(modes=["key_only", "vtok", "all_frames"], attributes=["motion"], **FAST)
    acc = {s.mode: s.accuracy for s in run_probe(rows, cfg)}
    assert acc["key_only"] < 0.75
    assert acc["vtok"] >= 0.95 and acc["all_frames"] >= 0.95


def test_split_is_by_sample_key_and_deterministic() -> None:
    keys = [f"k{i}" for i in range(400)]
    mask = held_out_mask(keys, 0.25)
    assert 70 <= mask.sum() <= 130
    # The same key lands on the same side whatever the order and company of the others.
    reordered = held_out_mask(keys[::-1], 0.25)[::-1]
    assert (mask == reordered).all()
    assert (held_out_mask(keys[:50], 0.25) == mask[:50]).all()


def test_same_config_gives_the_same_scores(rows: list[dict[str, Any]]) -> None:
    cfg = ProbeConfig(modes=["vtok"], attributes=["color"], seeds=2, epochs=20, hidden=16)
    first, second = run_probe(rows, cfg), run_probe(rows, cfg)
    assert [(s.hits, s.n, s.seed_accuracy) for s in first] == [(s.hits, s.n, s.seed_accuracy) for s in second]
    assert first[0].n == 2 * first[0].test_clips


def test_modes_keep_the_tokens_they_say() -> None:
    row = rows_of(1)[0]
    assert [a.shape for _, a in mode_segments(row, "vtok")] == [(S, D), (T - 1, D)]
    # S + R = 7 tokens buy one S = 4 frame; frames_2 and all frames are what they say.
    assert budget_frames(S, T - 1) == 1
    assert mode_segments(row, "frames_budget")[0][1].shape == (S, D)
    np.testing.assert_array_equal(mode_segments(row, "frames_2")[0][1],
                                  row["frame_tokens"][[0, T - 1]].reshape(2 * S, D))
    assert mode_segments(row, "all_frames")[0][1].shape == (T * S, D)
    # A residual grid's r*r tokens per step, stored [R, r*r, D], are read as R*r*r tokens and raise the budget.
    grid = dict(row, residual_features=np.zeros((T - 1, 4, D), np.float32))
    assert mode_segments(grid, "vtok")[1][1].shape == (4 * (T - 1), D)
    assert mode_segments(grid, "frames_budget")[0][1].shape == (4 * S, D)  # 4 + 12 = 16 tokens: K = 4


def test_generic_label_column(rows: list[dict[str, Any]]) -> None:
    assert clip_label(rows[4], "", "label") == "L1"
    scores = run_probe(rows, ProbeConfig(modes=["key_only"], label_column="label", epochs=5, hidden=8))
    assert [s.attribute for s in scores] == ["label"] and scores[0].classes == 3


def test_results_rows_and_table(rows: list[dict[str, Any]]) -> None:
    scores = run_probe(rows, ProbeConfig(modes=["key_only", "frames_2"], attributes=["color"], epochs=5, hidden=8))
    result = probe_result_rows(scores, run="tiny", data_fingerprint="abc", tokenizer_fingerprint="def")
    table = to_table(result)
    assert table.num_rows == 4  # accuracy and chance per mode
    got = {(r["checkpoint"], r["metric"]): r for r in table.to_pylist()}
    assert got[("probe.frames_2", "accuracy")]["token_budget"] == 2 * S
    assert got[("probe.key_only", "chance")]["value"] == pytest.approx(scores[0].chance)
    assert {r["suite"] for r in table.to_pylist()} == {"probe"}
    text = probe_table(scores)
    assert "frames_2 (8 tokens)" in text and text.count("\n") == 2
    assert "before training an MLLM" in FIRST_LOOK


@pytest.mark.parametrize("bad, message", [
    (dict(modes=["frames"]), "probe mode 'frames' is unknown"),
    (dict(modes=[]), "probe modes: empty"),
    (dict(attributes=["colour"]), "probe attributes ['colour'] unknown"),
    (dict(label_column="nothing"), "probe label_column 'nothing': no row has that column"),
    (dict(test_fraction=1.0), "probe test_fraction must be in (0, 1)"),
    (dict(modes=["frames_9"]), "probe mode 'frames_9' needs 9 frames"),
])
def test_bad_input_is_one_line(rows: list[dict[str, Any]], bad: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError) as err:
        run_probe(rows[:20], ProbeConfig(**{"epochs": 1, **bad}))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_no_labels_and_no_frame_tokens_are_refused(rows: list[dict[str, Any]]) -> None:
    bare = [{k: v for k, v in r.items() if k != "attributes"} for r in rows[:20]]
    with pytest.raises(InputError, match="probe: no labels; no row has shapes-world attributes"):
        run_probe(bare, ProbeConfig(epochs=1))
    keyless = [{k: v for k, v in r.items() if k != "frame_tokens"} for r in rows[:20]]
    with pytest.raises(InputError, match="'all_frames' needs the frame_tokens column"):
        run_probe(keyless, ProbeConfig(modes=["all_frames"], epochs=1))
