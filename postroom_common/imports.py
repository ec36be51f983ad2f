"""postroom installs the top-level names `supervisor`, `actors` and `storage`, as its design
asks; others use them too (supervisord installs a `supervisor` package, a bot may have its
own `storage.py` or `actors/`). Whichever comes first on `sys.path` wins, and postroom then
fails with a bare `cannot import name ...`. This check, run before postroom imports one of
its names, says which file took the name and what to do.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

#: Where each name lives beside this package in an installation (or a checkout) of postroom.
_HOMES = {"supervisor": "supervisor.py", "actors": "actors/__init__.py", "storage": "storage/__init__.py"}
_ROOT = Path(__file__).resolve().parent.parent


def require_postroom_names(*names: str) -> None:
    """Raise ImportError naming the file that took any of `names`, if it is not postroom's."""
    for name in names:
        expected = _ROOT / _HOMES[name]
        spec = importlib.util.find_spec(name)
        found = Path(spec.origin).resolve() if spec is not None and spec.origin else None
        if found != expected:
            raise ImportError(_advice(name, found, expected), name=name)


def _advice(name: str, found: Path | None, expected: Path) -> str:
    where = f"{found}" if found is not None else "something that is not a file (a namespace package?)"
    return (f"the top-level name {name!r} is taken by {where}, not by postroom ({expected}). "
            f"postroom installs 'supervisor', 'actors' and 'storage': rename your own module or "
            f"package of that name, run from a directory that does not hold one, or install "
            f"postroom in a virtual environment of its own (pip's 'supervisor' package, "
            f"supervisord, cannot share one with it).")
