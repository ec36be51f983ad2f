"""A module of a bot's own that takes one of postroom's top-level names is named at import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def _python(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.mark.parametrize(("own", "shadowed"), [
    ("storage.py", "storage"),  # a bot's own storage module
    ("actors/__init__.py", "actors"),  # a bot's own actors package
])
def test_importing_supervisor_beside_a_module_of_the_same_name_says_which_file(
        tmp_path: Path, own: str, shadowed: str) -> None:
    """`import supervisor` in a directory holding its own `storage.py` (or `actors/`) raises an
    ImportError that names that file and what to do, not `cannot import name`."""
    (tmp_path / own).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / own).write_text("RECORDS = {}\n")
    result = _python(tmp_path, "-c", "import supervisor")
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: the top-level name")
    assert f"{shadowed!r} is taken by {(tmp_path / own).resolve()}" in last
    assert "rename your own module" in last and "cannot import name" not in result.stderr


def test_the_command_line_names_a_supervisor_module_that_is_not_postroom(tmp_path: Path) -> None:
    """`python -m postroom_cli` beside a `supervisor.py` of someone else's names that file."""
    (tmp_path / "supervisor.py").write_text("# supervisord's, or the bot's own\n")
    result = _python(tmp_path, "-m", "postroom_cli", "--help")
    assert result.returncode != 0
    assert f"'supervisor' is taken by {(tmp_path / 'supervisor.py').resolve()}" in result.stderr


def test_without_a_clash_the_names_import(tmp_path: Path) -> None:
    """In a directory with no clashing file, postroom imports as usual."""
    result = _python(tmp_path, "-c", "import supervisor, actors, storage, postroom_cli")
    assert result.returncode == 0, result.stderr
