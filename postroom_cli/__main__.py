"""`python -m postroom_cli`: the same as the `postroom` console script."""

from postroom_cli.main import main

raise SystemExit(main())
