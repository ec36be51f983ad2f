"""`postroom migrate`: bring a database's schema to this postroom's version.

It runs the migrations after the database's version in one transaction (on PostgreSQL under
the schema lock, so it is safe beside a supervisor starting); a database without postroom's
tables gets the schema, a newer one is refused and left as it is. No supervisor is started
and no owner lock is taken.
"""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.markup import escape

from storage import Storage, open_database
from storage.schema import SCHEMA_VERSION

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of `postroom migrate` to its subparser."""
    parser.add_argument("--database", required=True, metavar="URL",
                        help="database URL, e.g. sqlite:///postroom.db (a missing SQLite file is created)")


def run(args: argparse.Namespace, console: Console) -> int:
    """Migrate; 0 once the schema is this postroom's version."""
    store = Storage(open_database(args.database), keys=None)  # migrations never read a text
    try:
        found, steps = store.migrate()
    finally:
        store.close_all()
    if found is None:
        console.print(f"Created postroom's schema, version {SCHEMA_VERSION}.")
    elif not steps:
        console.print(f"The schema is at version {SCHEMA_VERSION} already: nothing to do.")
    else:
        console.print(f"Migrated the schema from version {found} to {SCHEMA_VERSION}:")
        for step in steps:
            console.print(f"  {step.version}. {escape(step.summary)}")
    return 0
