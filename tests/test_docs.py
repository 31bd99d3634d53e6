"""What the docs show works as shown: every stall config loads, the README's commands leave the
checkout clean, and CI runs the README's test command."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edge.catalogue import Catalogue
from edge.config import load_config
from tests.conftest import REPO

FENCE = re.compile(r"^[ \t]*```(\w*)[ \t]*\n(.*?)^[ \t]*```", re.MULTILINE | re.DOTALL)


def _docs() -> list[str]:
    """Every Markdown file of the repository (as git tracks them)."""
    out = subprocess.run(["git", "ls-files", "-z", "--", "*.md"], cwd=REPO, capture_output=True,
                         check=True).stdout.decode()
    return sorted(name for name in out.split("\0") if name)


def _blocks(lang: str) -> list[tuple[str, int, str]]:
    """(doc, block number, text) of each fenced block in ``lang`` in the docs."""
    found = []
    for doc in _docs():
        text = (REPO / doc).read_text(encoding="utf-8")
        blocks = [m.group(2) for m in FENCE.finditer(text) if m.group(1) == lang]
        found += [(doc, i + 1, block) for i, block in enumerate(blocks)]
    return found


TOML_BLOCKS = _blocks("toml")


def test_the_readme_shows_a_stall_config() -> None:
    assert "README.md" in _docs()
    assert any(doc == "README.md" for doc, _, _ in TOML_BLOCKS)


@pytest.mark.parametrize(("doc", "number", "text"), TOML_BLOCKS,
                         ids=[f"{doc}#{n}" for doc, n, _ in TOML_BLOCKS])
def test_every_config_in_the_docs_loads(tmp_path: Path, doc: str, number: int, text: str) -> None:
    """Loaded by the stall's own loader, which validates every field and creates nothing:
    paths such as ``data_dir = "/var/lib/..."`` are only checked, not made."""
    path = tmp_path / "stall.toml"
    path.write_text(text, encoding="utf-8")
    cfg = load_config(path)
    catalogue = Catalogue(cfg.catalogue)  # what the stall builds at start (refuses a PLU twice)
    assert len(catalogue) == len(cfg.catalogue)


def _readme_sh_block(containing: str) -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = [m.group(2) for m in FENCE.finditer(readme) if m.group(1) == "sh" and containing in m.group(2)]
    assert len(blocks) == 1, f"one README sh block with {containing!r}, found {len(blocks)}"
    return blocks[0]


def _untracked_or_changed(paths: list[str]) -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--", *paths],
                          cwd=REPO, capture_output=True, text=True, check=True).stdout


def test_readme_receipt_commands_leave_the_checkout_clean() -> None:
    """Run as the README shows, from the repository root: what they write lands in ignored
    folders."""
    block = _readme_sh_block("wetmarket receipt ")
    written = re.findall(r"--(?:out|png) (\S+)", block)
    assert written, block
    for path in written:
        (REPO / path).unlink(missing_ok=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    p = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    for path in written:
        assert (REPO / path).stat().st_size > 0
    assert _untracked_or_changed(written) == ""
    ignored = subprocess.run(["git", "check-ignore", *written], cwd=REPO, capture_output=True, text=True)
    assert ignored.stdout.split() == written


def test_ci_runs_the_readme_test_command() -> None:
    two = _readme_sh_block("make demo")
    readme_test = next(line.split("#")[0].strip() for line in two.splitlines() if "make test" in line)
    ci = [line.strip() for line in (REPO / ".ci/run").read_text().splitlines()
          if line.strip() and not line.lstrip().startswith(("#", "set ", "cd "))]
    # Then the dependency audit, which the README documents too (it needs the advisory data:
    # where CI cannot reach it, it says NOT AUDITED and CI goes on knowingly).
    audit = "WETMARKET_AUDIT_UNREACHABLE_OK=${WETMARKET_AUDIT_UNREACHABLE_OK:-1} make audit"
    assert ci == [readme_test, audit]
    assert "make audit" in (REPO / "README.md").read_text(encoding="utf-8")
