"""Log rendering for the command line: the library only logs, the CLI decides how it looks.

Console lines in a terminal, JSON lines otherwise (one event per line, with an ISO
UTC timestamp, the level, the event name and the bound context). Records from the
standard library (pykka, peewee) go through the same renderer.
"""

from __future__ import annotations

import io
import logging
import sys
from typing import TextIO, cast

import structlog
from structlog.typing import Processor

__all__ = ["FORMATS", "LEVELS", "StderrProxy", "configure_logging"]

#: Values of `--log-format`.
FORMATS = ("auto", "console", "json")
#: Values of `--log-level`.
LEVELS = ("debug", "info", "warning", "error", "critical")


class StderrProxy(io.TextIOBase):
    """Writes to whatever `sys.stderr` is at the time of the write.

    rich's live display swaps `sys.stderr` for a proxy that prints above the progress
    bar; a logger holding the original stream would draw over the bar instead.
    """

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()

    def writable(self) -> bool:
        return True


def configure_logging(fmt: str = "auto", stream: TextIO | None = None, level: str = "info") -> None:
    """Configure structlog (and the stdlib root logger) to render to `stream` (default stderr)."""
    out = stream if stream is not None else cast(TextIO, StderrProxy())
    json_lines = _wants_json(fmt, out)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer = _renderer(json_lines, out)
    structlog.configure(
        processors=[*shared, *renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_level_number(level)),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        # Loggers are created at import time in the library; caching would freeze them
        # to whatever configuration was current at their first use.
        cache_logger_on_first_use=False,
    )
    _configure_stdlib(out, shared, renderer, level)


def _wants_json(fmt: str, stream: TextIO) -> bool:
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {FORMATS}, not {fmt!r}")
    return not stream.isatty() if fmt == "auto" else fmt == "json"


def _renderer(json_lines: bool, stream: TextIO) -> list[Processor]:
    if json_lines:
        # Tracebacks become a string field, so an exception stays on its event's line.
        return [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    # Never the frames' locals (rich's default): they hold phones, texts and keys.
    tracebacks = structlog.dev.RichTracebackFormatter(show_locals=False)
    return [structlog.dev.ConsoleRenderer(colors=stream.isatty(), exception_formatter=tracebacks)]


def _level_number(level: str) -> int:
    if level.lower() not in LEVELS:
        raise ValueError(f"log level must be one of {LEVELS}, not {level!r}")
    return logging.getLevelNamesMapping()[level.upper()]


def _configure_stdlib(stream: TextIO, shared: list[Processor], renderer: list[Processor],
                      level: str) -> None:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
    ))
    # A no-op when the host (or pytest) already configured the root logger.
    logging.basicConfig(level=_level_number(level), handlers=[handler])
    # pykka logs every actor start and stop at DEBUG; only its warnings matter here.
    logging.getLogger("pykka").setLevel(logging.WARNING)
