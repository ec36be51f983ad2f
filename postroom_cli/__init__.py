"""postroom's command line: `postroom demo`, `postroom status` and `postroom resume`.

The library never configures logging; this package does, for its own process.
"""

from postroom_common import require_postroom_names

require_postroom_names("supervisor", "actors", "storage")  # before importing them

from postroom_cli.main import main

__all__ = ["main"]
