"""postroom's benchmark suite (issue #4): `python -m bench`, or `python -m bench --quick` in CI.

Every scenario runs postroom beside two baselines on the same machine in the same
process run: the seed design (`bench.seed`: one committed write per state change)
and huey (`bench.huey_baseline`: SqliteHuey, a no-op task), and scenario (a) also
postroom's own actors without a database (`bench.nodb`) and a plain chain of pykka
actors making the same hand-offs (`bench.chain`), in each of the ways a user enqueues
and sends. It prints one table of medians with the ratios and postroom's
targets; `--json PATH` keeps every run. `python -m bench.compare REV_A REV_B`
measures two revisions in one sitting (`bench.compare`).
"""

from bench.report import Figure
from bench.scenarios import SCENARIOS, Params

__all__ = ["SCENARIOS", "Figure", "Params"]
