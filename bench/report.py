"""Figures and the table that shows them: one row per figure, one column per system, ratios, targets."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["HEADERS", "Figure", "print_report", "write_json"]

#: The table's column headers (the CI test looks for them).
HEADERS = ("scen.", "figure", "unit", "postroom", "no-db", "chain", "floor", "seed", "huey", "vs seed",
           "vs huey", "of no-db", "of chain", "of floor", "target", "met")


@dataclass
class Figure:
    """One measured quantity, its median per system, and the target postroom should reach."""

    scenario: str
    """The scenario letter of issue #4."""
    name: str
    """What is measured, with its parameters."""
    unit: str
    """msg/s, ms, s, MiB, per msg, %."""
    values: dict[str, float | None]
    """Median per system (postroom, nodb, chain, seed, huey); a missing system does not apply."""
    samples: dict[str, list[float | None]] = field(default_factory=dict)
    """Every run's value per system."""
    higher_is_better: bool = True
    """Decides the direction of the ratios (a ratio above 1 always favours postroom)."""
    target: str = ""
    """postroom's target, in words."""
    met: bool | None = None
    """Whether postroom's median meets the target (None: no target)."""
    note: str = ""
    """Printed under the table (a timeout, how far a run got)."""
    failures: list[str] = field(default_factory=list)
    """Runs that failed, per system (their figure is left out; listed once under the table)."""

    def ratio(self, baseline: str) -> float | None:
        """How many times better postroom is than `baseline` (above 1: postroom is better);
        against no-db, the share of its own pipeline's performance postroom keeps; against the
        chain, the share of a plain pykka actor chain's."""
        ours, theirs = self.values.get("postroom"), self.values.get(baseline)
        if ours is None or theirs is None or ours == 0 or theirs == 0:
            return None
        return ours / theirs if self.higher_is_better else theirs / ours


def print_report(figures: list[Figure], notes: list[str], console: Console | None = None) -> None:
    """The table, then the notes that say how each figure was obtained."""
    out = console or Console(width=None if Console().is_terminal else 200)
    table = Table(title="postroom benchmark (medians; ratios above 1 favour postroom)", title_justify="left")
    for header in HEADERS:
        left = header in ("scen.", "figure", "unit", "target")
        # Only the long columns wrap: a header split over two lines is not found by CI's check.
        table.add_column(header, justify="left" if left else "right",
                         no_wrap=header not in ("figure", "target"))
    for figure in figures:
        table.add_row(*_row(figure))
    out.print(table)
    for f in figures:
        if f.note:
            out.print(f"- ({f.scenario}) {f.name}: {f.note}", highlight=False, soft_wrap=True)
    for note in notes:
        out.print(f"- {note}", highlight=False, soft_wrap=True)


def _row(f: Figure) -> list[str]:
    met = "" if f.met is None else ("yes" if f.met else "NO")
    values = (_number(f.values.get(s)) for s in ("postroom", "nodb", "chain", "floor", "seed", "huey"))
    return [f.scenario, f.name, f.unit, *values, _ratio(f.ratio("seed")), _ratio(f.ratio("huey")),
            _share(f.ratio("nodb")), _share(f.ratio("chain")), _share(f.ratio("floor")), f.target, met]


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def write_json(path: Path, figures: list[Figure], notes: list[str], params: dict[str, Any],
               errors: list[str], seconds: float) -> None:
    """Everything printed, plus every run's samples and the parameters."""
    document = {"params": params, "seconds": seconds, "errors": errors, "notes": notes,
                "figures": [asdict(f) | {"vs_seed": f.ratio("seed"), "vs_huey": f.ratio("huey"),
                                          "of_nodb": f.ratio("nodb"), "of_chain": f.ratio("chain"),
                                          "of_floor": f.ratio("floor")}
                            for f in figures]}
    path.write_text(json.dumps(document, indent=2, default=str))
