"""Output helpers shared by the commands."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

#: Exit code for a problem with the command line or the environment (bad URL, no database).
EXIT_USAGE = 2


def fail(message: str) -> int:
    """Print an error on stderr; the exit code to return."""
    Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False,
                                soft_wrap=True)
    return EXIT_USAGE
