"""`vtok probe` on the real pipeline's tokens (the session's training_tokens): table, results rows, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.cli import main
from pipelines.evaluate.results import read_results

pytestmark = [pytest.mark.xdist_group("trained"), pytest.mark.usefixtures("one_torch_thread")]


def test_probe_command_reads_colour_from_key_tokens_and_commits_rows(
        training_tokens: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "probe"
    code = main(["probe", f"data={training_tokens}", "modes=[key_only,frames_2]", "attributes=[color]",
                 "epochs=60", f"output={out}"])
    text = capsys.readouterr().out
    assert code == 0
    assert "160 clips" in text and "before training an MLLM" in text
    assert "key_only (16 tokens)" in text and "frames_2 (32 tokens)" in text
    rows = read_results(str(out)).to_pylist()
    assert {(r["checkpoint"], r["metric"]) for r in rows} == {
        ("probe.key_only", "accuracy"), ("probe.key_only", "chance"),
        ("probe.frames_2", "accuracy"), ("probe.frames_2", "chance")}
    acc = {r["checkpoint"]: r for r in rows if r["metric"] == "accuracy"}
    chance = {r["checkpoint"]: r["value"] for r in rows if r["metric"] == "chance"}
    # Six colours on a 4 x 4 grid of the tiny CLIP's patches: well above the majority class, if not perfect.
    assert acc["probe.key_only"]["value"] > chance["probe.key_only"] + 0.25
    assert acc["probe.key_only"]["token_budget"] == 16 and acc["probe.key_only"]["suite"] == "probe"
    doc = json.loads((out / "eval" / "probe.json").read_text())
    assert doc["clips"] == 160 and len(doc["scores"]) == 2


def test_probe_command_bad_input_is_one_line(training_tokens: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe", f"data={training_tokens}", "modes=[frames]"]) == 2
    err = capsys.readouterr().err.strip()
    assert "probe mode 'frames' is unknown" in err and "\n" not in err
    assert main(["probe", f"data={tmp_path}"]) != 0
    assert str(tmp_path) in capsys.readouterr().err
