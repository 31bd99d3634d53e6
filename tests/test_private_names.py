"""No module imports another module's private names (issue 21: "no private names imported
across modules"). A leading underscore says "may change without notice"; a name another module
needs is part of its module's interface and is named so."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("edge", "model", "server", "firmware_bridge", "bench", "scripts", "tests")


def private_imports(source: str, name: str) -> list[str]:
    """``module: name`` for each private name that ``source`` imports from this project."""
    found = []
    for node in ast.walk(ast.parse(source, name)):
        if not isinstance(node, ast.ImportFrom):
            continue
        module = node.module or ""
        if not node.level and module.split(".")[0] not in PACKAGES:
            continue  # another project's private names are its own business
        for alias in node.names:
            if alias.name.startswith("_") and not alias.name.startswith("__"):
                found.append(f"{'.' * node.level}{module}: {alias.name}")
    return found


def test_the_check_sees_a_private_import() -> None:
    src = ("from model.training.cv import CvConfig, _work\n"
           "from .sale import _extra_problem\n"
           "from onnxruntime.capi import _pybind_state\n"
           "from model import __version__\n")
    assert private_imports(src, "<test>") == ["model.training.cv: _work", ".sale: _extra_problem"]


def test_no_module_imports_another_modules_private_names() -> None:
    offenders = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "node_modules" in path.parts:
                continue
            rel = path.relative_to(ROOT).as_posix()
            offenders += [f"{rel}: {hit}" for hit in private_imports(path.read_text(), rel)]
    assert not offenders, "private names imported across modules:\n" + "\n".join(offenders)
