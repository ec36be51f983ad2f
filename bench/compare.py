"""`python -m bench.compare REV_A REV_B [--rounds N] [--scenarios a,b] [--json PATH] [bench options]`.

Two versions of postroom measured in one sitting: each revision is checked out into a
temporary worktree (`git worktree add --detach`), and the chosen scenarios run
alternately, A, B, A, B, ... for `--rounds` rounds, each as its own
`python -m bench --json FILE ...` child process in that worktree (with `PYTHONPATH`
set to it), so the two versions never share a process and the machine's drift hits
both alike. The table shows, per figure and system, the median over rounds for A and
for B, B/A, the change in postroom's favour and the spread between rounds (the
run-to-run noise to judge the change against).

Each side runs its own bench/ unless `--bench-from REV` puts that revision's bench/ in
both worktrees, so that a change of the core is measured by one benchmark (the bench's
notes and settings alike).

Options after the revisions that `compare` does not know are passed to both sides'
`python -m bench`; one that only one side's bench knows is left out for both (and
said so). Only the scenarios both sides know run. Both sides use this interpreter
and its installed dependencies. The worktrees are removed at the end, even on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
SYSTEMS = ("postroom", "nodb", "chain", "floor", "seed", "huey")
#: postroom's ratios in a bench JSON figure (above 1 favours postroom), compared like systems.
RATIOS = ("vs_seed", "vs_huey", "of_nodb", "of_chain", "of_floor")
_OPTION = re.compile(r"^ {2}(?:-\w, )?(--[\w-]+)(?: ([A-Z][A-Z0-9_]*))?")
_SCENARIOS = "import json, bench.scenarios as s; print(json.dumps(list(s.SCENARIOS)))"


class CompareError(RuntimeError):
    """Why the comparison cannot run (a revision, an option, a child that gave no figures)."""


@dataclass
class Side:
    """One revision: its worktree, what its bench understands, and each round's figures."""

    label: str
    """A or B."""
    rev: str
    """The revision as given."""
    commit: str
    """Its abbreviated commit."""
    tree: Path
    """Its temporary worktree."""
    options: dict[str, bool] = field(default_factory=dict)
    """Each option its bench accepts -> whether it takes a value."""
    scenarios: list[str] = field(default_factory=list)
    """Its bench's scenario letters."""
    documents: list[dict[str, Any]] = field(default_factory=list)
    """Each round's JSON document."""
    failures: list[str] = field(default_factory=list)
    """Each round whose bench exited non-zero, and why."""


def parse(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    # No abbreviations: a bench option must never be taken for one of compare's (--r, --s).
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rev_a", metavar="REV_A", help="the revision before (a commit, branch or tag)")
    parser.add_argument("rev_b", metavar="REV_B", help="the revision after")
    parser.add_argument("--rounds", type=int, default=3, help="A, B rounds (default 3); figures are "
                        "medians over rounds")
    parser.add_argument("--scenarios", help="comma-separated letters (default: every scenario both know)")
    parser.add_argument("--bench-from", metavar="REV", help="measure both sides with this revision's "
                        "bench/ (the core's API it uses must exist on both); default: each side's own")
    parser.add_argument("--show", default=",".join(SYSTEMS + RATIOS),
                        help="rows per figure, in this order (default all: %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the comparison and every round's figures here")
    args, rest = parser.parse_known_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    args.show = [c.strip() for c in args.show.split(",") if c.strip()]
    unknown = [c for c in args.show if c not in SYSTEMS + RATIOS]
    if unknown:
        parser.error(f"--show: unknown {unknown}; one of {','.join(SYSTEMS + RATIOS)}")
    return args, rest


def main(argv: Sequence[str] | None = None) -> int:
    args, rest = parse(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="postroom-compare-") as temp, \
                _worktrees((args.rev_a, args.rev_b), Path(temp), args.bench_from) as (a, b):
            return _compare(args, rest, a, b, Path(temp))
    except CompareError as error:
        print(f"python -m bench.compare: {error}", file=sys.stderr)
        return 2


def _compare(args: argparse.Namespace, rest: Sequence[str], a: Side, b: Side, directory: Path) -> int:
    """Run the rounds, print the table; 1 if any round of either side had a failed run."""
    scenarios = _common_scenarios(a, b, args.scenarios)
    options = _common_options(a, b, rest)
    for round_ in range(args.rounds):
        for side in (a, b):
            _run_round(side, round_, args.rounds, scenarios, options, directory)
    rows = _rows(a, b, scenarios, args.show)
    _print(rows, a, b, scenarios, options, args.rounds, args.bench_from)
    if args.json is not None:
        _write_json(args.json, rows, a, b, scenarios, options)
    return 1 if a.failures or b.failures else 0


# -- the worktrees ------------------------------------------------------------------------------


def _git(*args: str) -> str:
    done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise CompareError(f"git {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout.strip()


@contextmanager
def _worktrees(revs: Sequence[str], directory: Path,
               bench_from: str | None) -> Iterator[tuple[Side, Side]]:
    """Each revision checked out (detached) under `directory`, with `bench_from`'s bench/ if
    given; removed on exit, whatever happened."""
    commits = [_resolve(rev) for rev in revs]  # before any checkout: a typo costs nothing
    bench = _resolve(bench_from) if bench_from else None
    with ExitStack() as stack:
        sides = []
        for label, rev, commit in zip("AB", revs, commits, strict=True):
            tree = directory / label
            stack.enter_context(_worktree(tree, commit))
            if bench is not None:
                _overlay_bench(tree, bench)
            sides.append(_probe(Side(label, rev, commit[:9], tree)))
        yield sides[0], sides[1]


def _overlay_bench(tree: Path, commit: str) -> None:
    """Replace the worktree's bench/ by `commit`'s: both versions measured by one benchmark."""
    subprocess.run(["git", "-C", str(tree), "rm", "-r", "-q", "--ignore-unmatch", "bench"],
                   capture_output=True, check=False)
    done = subprocess.run(["git", "-C", str(tree), "checkout", commit, "--", "bench"],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise CompareError(f"no bench/ at {commit[:9]} to measure with: {done.stderr.strip()}")


def _resolve(rev: str) -> str:
    try:
        return _git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    except CompareError:
        raise CompareError(f"{rev!r} is not a commit of {ROOT}") from None


@contextmanager
def _worktree(tree: Path, commit: str) -> Iterator[None]:
    _git("worktree", "add", "--detach", "--quiet", str(tree), commit)
    try:
        yield
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                       capture_output=True, check=False)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], capture_output=True, check=False)


# -- what each side's bench understands ------------------------------------------------------------


def _child_env(tree: Path) -> dict[str, str]:
    """This environment, with `tree` first on the import path (before the installed postroom)."""
    path = os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def _probe(side: Side) -> Side:
    """Read the side's bench options (from --help) and scenario letters; refuse one without --json."""
    if not (side.tree / "bench" / "__main__.py").exists():
        first = _git("log", "--diff-filter=A", "--format=%h", "--", "bench/__main__.py").splitlines()
        since = f" (it arrived in {first[-1]})" if first else ""
        raise CompareError(f"{side.label} = {side.rev} ({side.commit}) has no bench/{since}")
    side.options = _options(_in_tree(side, "-m", "bench", "--help"))
    if "--json" not in side.options:
        raise CompareError(f"{side.label} = {side.rev} ({side.commit}): its bench has no --json option, "
                           "so its figures cannot be read; compare revisions whose `python -m bench "
                           "--help` lists --json")
    side.scenarios = list(json.loads(_in_tree(side, "-c", _SCENARIOS).splitlines()[-1]))
    return side


def _in_tree(side: Side, *args: str) -> str:
    done = subprocess.run([sys.executable, *args], cwd=side.tree, env=_child_env(side.tree),
                          capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        raise CompareError(f"{side.label} = {side.rev} ({side.commit}): python {' '.join(args)[:60]} "
                           f"failed: {tail[0]}")
    return done.stdout


def _options(help_text: str) -> dict[str, bool]:
    """Each `--option` argparse's help lists, and whether it takes a value (a METAVAR follows)."""
    found = (_OPTION.match(line) for line in help_text.splitlines())
    return {m.group(1): m.group(2) is not None for m in found if m}


def _common_scenarios(a: Side, b: Side, chosen: str | None) -> list[str]:
    wanted = [s.strip() for s in chosen.split(",") if s.strip()] if chosen else a.scenarios
    both = [s for s in wanted if s in a.scenarios and s in b.scenarios]
    for letter in (s for s in wanted if s not in both):
        owner = "A" if letter in a.scenarios else "B" if letter in b.scenarios else "neither side"
        _say(f"scenario ({letter}) is left out: only {owner} knows it")
    if not both:
        raise CompareError("no scenario to run that both sides know")
    return both


def _common_options(a: Side, b: Side, given: Sequence[str]) -> list[str]:
    """The bench options in `given` that both sides accept (with their values); the others, said."""
    kept: list[str] = []
    tokens = list(given)
    while tokens:
        words = _next_option(tokens, a, b)
        name = words[0].partition("=")[0]
        if name in a.options and name in b.options:
            kept += words
        elif name in a.options or name in b.options:
            only = "A" if name in a.options else "B"
            _say(f"{' '.join(words)} is left out for both: only {only}'s bench knows {name}")
        else:
            raise CompareError(f"neither side's bench knows {name} (see python -m bench --help)")
    return kept


def _next_option(tokens: list[str], a: Side, b: Side) -> list[str]:
    """Take one option, and its value if it has one, off the front of `tokens`."""
    token = tokens.pop(0)
    name = token.partition("=")[0]
    if not name.startswith("--"):
        raise CompareError(f"unexpected argument {token!r}: bench options start with --")
    takes_value = "=" not in token and (a.options.get(name, False) or b.options.get(name, False))
    return [token, tokens.pop(0)] if takes_value and tokens else [token]


# -- the rounds ---------------------------------------------------------------------------------------


def _run_round(side: Side, round_: int, rounds: int, scenarios: Sequence[str], options: Sequence[str],
               directory: Path) -> None:
    """One `python -m bench` of this side; its JSON document kept, a non-zero exit noted."""
    out = directory / f"{side.label}-{round_}.json"
    command = [sys.executable, "-m", "bench", "--json", str(out), "--scenarios", ",".join(scenarios),
               *options]
    _say(f"round {round_ + 1}/{rounds}, {side.label} = {side.rev} ({side.commit}) ...")
    begun = time.perf_counter()
    with open(directory / f"{side.label}-{round_}.out", "w") as table:
        done = subprocess.run(command, cwd=side.tree, env=_child_env(side.tree), stdout=table, check=False)
    _say(f"round {round_ + 1}/{rounds}, {side.label} took {time.perf_counter() - begun:.0f} s")
    if not out.exists():
        raise CompareError(f"{side.label} = {side.rev} ({side.commit}) exited {done.returncode} without "
                           "figures (its errors are above)")
    document: dict[str, Any] = json.loads(out.read_text())
    side.documents.append(document)
    if done.returncode != 0:
        errors = "; ".join(document.get("errors") or [f"exit {done.returncode}"])
        side.failures.append(f"round {round_ + 1}: {errors}")


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- the table ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    """One figure of one system (or ratio): A's and B's medians over rounds, and their spread."""

    scenario: str
    name: str
    unit: str
    of: str
    """A system (its median) or one of RATIOS."""
    higher_is_better: bool
    a: float | None
    b: float | None
    spread: float | None
    """The larger of A's and B's (max - min) / median over rounds; None with one round."""

    @property
    def ratio(self) -> float | None:
        """B / A."""
        return None if self.a is None or self.b is None or self.a == 0 else self.b / self.a

    @property
    def change(self) -> float | None:
        """How much better B is than A (negative: worse), in the figure's own direction."""
        ratio = self.ratio
        if ratio is None or ratio == 0:
            return None
        return ratio - 1 if self.higher_is_better else 1 / ratio - 1


def _rows(a: Side, b: Side, scenarios: Sequence[str], shown: Sequence[str]) -> list[Row]:
    """A row per figure (scenario by scenario, A's order first) and shown column either side has."""
    figures_a, figures_b = _figures(a), _figures(b)
    keys = [*figures_a, *(k for k in figures_b if k not in figures_a)]
    rows = []
    for key in sorted(keys, key=lambda k: scenarios.index(k[0]) if k[0] in scenarios else len(scenarios)):
        fa, fb = figures_a.get(key, {}), figures_b.get(key, {})
        meta = (fa or fb)["meta"]
        for column in (c for c in shown if c in fa or c in fb):
            va, vb = fa.get(column, []), fb.get(column, [])
            better = meta["higher_is_better"] or column in RATIOS  # ratios: above 1 favours postroom
            rows.append(Row(key[0], key[1], meta["unit"] if column in SYSTEMS else "x", column, better,
                            _median(va), _median(vb), _max_spread(va, vb)))
    return rows


def _figures(side: Side) -> dict[tuple[str, str], dict[str, Any]]:
    """(scenario, name) -> {"meta": unit and direction, column: one value per round}.

    A column is a system's median, or one of `RATIOS` (postroom against a system within one
    run, which the machine's drift between runs moves less)."""
    figures: dict[tuple[str, str], dict[str, Any]] = {}
    for document in side.documents:
        for f in document["figures"]:
            entry = figures.setdefault((f["scenario"], f["name"]), {
                "meta": {"unit": f["unit"], "higher_is_better": f.get("higher_is_better", True)}})
            columns = {**f["values"], **{r: f.get(r) for r in RATIOS}}
            for column, value in columns.items():
                if value is not None:
                    entry.setdefault(column, []).append(float(value))
    return figures


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _max_spread(*sides: Sequence[float]) -> float | None:
    spreads = [(max(v) - min(v)) / abs(statistics.median(v)) for v in sides
               if len(v) > 1 and statistics.median(v) != 0]
    return max(spreads) if spreads else None


def _print(rows: Sequence[Row], a: Side, b: Side, scenarios: Sequence[str], options: Sequence[str],
           rounds: int, bench_from: str | None) -> None:
    out = Console(width=None if Console().is_terminal else 200)
    table = Table(title=f"A = {a.rev} ({a.commit}), B = {b.rev} ({b.commit}): medians over {rounds} "
                  "round(s); change > 0: B is better", title_justify="left")
    for header in ("scen.", "figure", "unit", "of", "A", "B", "B/A", "change", "spread"):
        table.add_column(header, justify="left" if header in ("scen.", "figure", "unit", "of")
                         else "right", no_wrap=header != "figure")
    for r in rows:
        table.add_row(r.scenario, r.name, r.unit, r.of, _number(r.a), _number(r.b),
                      "-" if r.ratio is None else f"{r.ratio:.3f}", _percent(r.change, signed=True),
                      _percent(r.spread))
    out.print(table)
    bench = f"bench/ of {bench_from} on both sides" if bench_from else "each side's own bench/"
    passed = " ".join(options) or "none"
    notes = [f"scenarios {','.join(scenarios)}; {bench}; options passed to both: {passed}",
             "of: a system's median, or postroom's ratio to a system measured in the same run "
             "(vs_seed, vs_huey, of_nodb, of_chain, of_floor; above 1 favours postroom)",
             "spread: the larger of A's and B's (max - min) / median over rounds, the noise a change "
             "has to exceed; a figure only one side has shows '-' on the other",
             *(f"{s.label} FAILED {f}" for s in (a, b) for f in s.failures)]
    for note in notes:
        out.print(f"- {note}", highlight=False, soft_wrap=True)


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _percent(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:+.1f}%" if signed else f"{100 * value:.1f}%"


def _write_json(path: Path, rows: Sequence[Row], a: Side, b: Side, scenarios: Sequence[str],
                options: Sequence[str]) -> None:
    sides = {s.label: {"rev": s.rev, "commit": s.commit, "failures": s.failures, "rounds": s.documents}
             for s in (a, b)}
    document = {"scenarios": list(scenarios), "options": list(options), "sides": sides,
                "rows": [{**{k: getattr(r, k) for k in Row.__slots__}, "ratio": r.ratio,
                          "change": r.change} for r in rows]}
    path.write_text(json.dumps(document, indent=2))


if __name__ == "__main__":
    sys.exit(main())
