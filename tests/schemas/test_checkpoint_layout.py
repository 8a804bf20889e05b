from __future__ import annotations

import pytest

from schemas.checkpoint import (
    COMPLETE_MARKER,
    FileRecord,
    checkpoint_relpath,
    entry_name_problem,
    is_safe_relpath,
    make_marker,
    marker_problems,
    parse_step,
    step_dir_name,
    validate_checkpoint_listing,
)

SHA = "a" * 64


def test_step_names_round_trip() -> None:
    assert step_dir_name(100) == "step_00000100"
    assert step_dir_name(0) == "step_00000000"
    assert checkpoint_relpath(7) == "checkpoints/step_00000007"
    for step in (0, 1, 100, 99_999_999, 123_456_789):
        assert parse_step(step_dir_name(step)) == step


@pytest.mark.parametrize(
    "name", ["step_100", "step_000000100", "step_0000010a", "step_00000100.tmp", ".step_00000100", "x", ""]
)
def test_parse_step_rejects_other_names(name: str) -> None:
    assert parse_step(name) is None


@pytest.mark.parametrize("step", [-1, True, 1.0, "3"])
def test_step_dir_name_rejects_non_steps(step: object) -> None:
    with pytest.raises(ValueError, match="step"):
        step_dir_name(step)  # type: ignore[arg-type]


def test_safe_paths_and_entry_names() -> None:
    assert is_safe_relpath("llm/config.json")
    for bad in ("", "/etc/passwd", "../x", "a/../b", "a//b", "./a", "a\\b"):
        assert not is_safe_relpath(bad)
    assert entry_name_problem("trainable.safetensors") is None
    assert entry_name_problem(COMPLETE_MARKER) is not None
    assert entry_name_problem("a/b.json") is not None
    assert entry_name_problem(".tmp-x") is not None


def _marker(step: int = 100) -> dict:
    files = [FileRecord("trainable.safetensors", 10, SHA), FileRecord("llm/config.json", 3, SHA)]
    return make_marker(step, files, dirs=["llm"], time="2026-01-01T00:00:00+00:00")


def _listing() -> dict[str, int]:
    return {"trainable.safetensors": 10, "llm/config.json": 3, COMPLETE_MARKER: 200, ".tmp-junk": 5}


def test_sound_listing_has_no_problems() -> None:
    marker = _marker()
    assert [f["path"] for f in marker["files"]] == ["llm/config.json", "trainable.safetensors"]
    assert validate_checkpoint_listing(_listing(), marker, step=100) == []


def test_listing_without_marker_is_refused() -> None:
    files = _listing()
    assert "no 'complete' marker" in validate_checkpoint_listing(files, None)[0]
    del files[COMPLETE_MARKER]
    assert "no 'complete' marker" in validate_checkpoint_listing(files, _marker())[0]


def test_listing_with_missing_or_resized_files_is_refused() -> None:
    files = _listing()
    del files["llm/config.json"]
    files["trainable.safetensors"] = 9
    problems = validate_checkpoint_listing(files, _marker())
    assert len(problems) == 2
    assert any("'llm/config.json'" in p and "missing" in p for p in problems)
    assert any("9 bytes, the marker says 10" in p for p in problems)


def test_marker_for_another_step_is_refused() -> None:
    assert "step 100, but the folder is for step 200" in validate_checkpoint_listing(_listing(), _marker(), step=200)[0]


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda m: m.update(format="other"), "format"),
        (lambda m: m.update(version=99), "version"),
        (lambda m: m["files"].append({"path": "../../etc/passwd", "bytes": 1, "sha256": SHA}), "leaves"),
        (lambda m: m["files"].append({"path": "vae/x.json", "bytes": 1, "sha256": SHA}), "does not name"),
        (lambda m: m["files"].append({"path": "notes.txt", "bytes": 1, "sha256": SHA}), "neither"),
        (lambda m: m["files"].append({"path": "a.json", "bytes": -1, "sha256": SHA}), "size"),
        (lambda m: m["files"].append({"path": "a.json", "bytes": 1, "sha256": "xyz"}), "sha256"),
        (lambda m: m["files"].append(dict(m["files"][0])), "twice"),
        (lambda m: m.update(files="all"), "not a list"),
    ],
)
def test_malformed_markers_are_refused(edit, needle: str) -> None:
    marker = _marker()
    edit(marker)
    problems = marker_problems(marker)
    assert problems and any(needle in p for p in problems), problems
    assert validate_checkpoint_listing(_listing(), marker)
