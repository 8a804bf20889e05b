"""The test scheduler's groups: each module's `xdist_group` mark puts all its tests on one pytest-xdist worker."""

from __future__ import annotations

from pathlib import Path

from tests.xdist_groups import ROOT, ModuleGroupScheduling, module_group

TRAINED = ["tests/pipelines/train/test_train_mllm.py", "tests/pipelines/train/test_train_decoder.py",
           "tests/jobs/test_decode_generate.py", "tests/pipelines/evaluate/test_eval.py"]


def test_the_trained_models_tests_share_one_group_and_the_resume_runs_another() -> None:
    assert {module_group(p) for p in TRAINED} == {"trained"}
    assert module_group("tests/pipelines/train/test_train_resume.py") == "resume"
    assert module_group("tests/vtok/test_shapes.py") is None
    assert module_group("tests/no_such_file.py") is None


def test_every_module_that_names_a_group_is_grouped() -> None:
    # A mark the parser missed would silently spread its tests (and the session's training) over both workers.
    named = [p for p in (ROOT / "tests").rglob("test_*.py")
             if p.name != Path(__file__).name and "pytest.mark.xdist_group(" in p.read_text()]
    assert len(named) >= len(TRAINED) + 1
    assert all(module_group(str(p.relative_to(ROOT))) for p in named), named


def test_a_group_is_one_work_unit_and_other_tests_are_units_alone() -> None:
    split = ModuleGroupScheduling._split_scope
    scopes = {split(None, f"{p}::test_x[a]") for p in TRAINED}  # type: ignore[arg-type]
    assert scopes == {"group:trained"}
    loose = "tests/vtok/test_shapes.py::test_y"
    assert split(None, loose) == loose  # type: ignore[arg-type]
