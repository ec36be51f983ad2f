"""postroom's command line: `postroom demo` and `postroom status`.

The library never configures logging; this package does, for its own process.
"""

from postroom_common import require_postroom_names

require_postroom_names("supervisor", "actors", "storage")  # before importing them

from postroom_cli.main import main

__all__ = ["main"]
