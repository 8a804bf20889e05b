"""`--dist loadgroup` that works on pytest 9: one worker per `xdist_group`, read from each module's pytestmark.

pytest-xdist 3.8 groups tests by appending "@group" to `item._nodeid`, which pytest 9 no longer reads (node ids
live in `item._id`), so the marks were ignored: tests of one group ran on both workers, and each worker trained
the session's models. This scheduler finds a test's group in its module's own `pytestmark =
pytest.mark.xdist_group("name")`, so that line stays the one place a group is declared.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

from xdist.scheduler import LoadScopeScheduling

ROOT = Path(__file__).resolve().parents[1]


@cache
def module_group(path: str) -> str | None:
    """The xdist_group named by the module-level `pytestmark` of the test file at `path` (relative to the repo
    root), or None. A mark inside a list (`pytestmark = [..., pytest.mark.xdist_group("x")]`) counts too."""
    try:
        tree = ast.parse((ROOT / path).read_text())
    except (OSError, SyntaxError):
        return None
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark"
                                                     for t in node.targets)):
            continue
        for call in ast.walk(node.value):
            if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                    and call.func.attr == "xdist_group"):
                args = [*call.args, *(k.value for k in call.keywords if k.arg == "name")]
                if args and isinstance(args[0], ast.Constant) and isinstance(args[0].value, str):
                    return args[0].value
    return None


class ModuleGroupScheduling(LoadScopeScheduling):
    """Each group is one work unit (largest first, as loadscope orders them); any other test is a unit alone."""

    def _split_scope(self, nodeid: str) -> str:
        group = module_group(nodeid.split("::", 1)[0])
        return f"group:{group}" if group else nodeid
