"""postroom's loggers: quiet until the host configures logging, as a library's must be.

structlog's own default prints every event to stdout. postroom never configures
structlog for its host, so it cannot rely on that default: until the host calls
`structlog.configure()`, events go to the standard library's `logging`, as records
of the `postroom.*` loggers. A host that configured nothing sees nothing below
WARNING (stdlib's last-resort handler prints warnings and errors to stderr); a host
that configured `logging` gets the records at the levels it chose; a host that
configured structlog gets postroom's events through its own processors.

The choice is made at each call, so a host may configure logging after postroom
started, and a disabled level costs one check.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog

__all__ = ["PostroomLogger", "get_logger"]


def get_logger(name: str, **context: Any) -> PostroomLogger:
    """The logger for `name` (a `postroom.*` name), with `context` bound to every event."""
    return PostroomLogger(name, context)


class PostroomLogger:
    """A structlog-style logger (`bind`, `info(event, **fields)`) that stays quiet unconfigured."""

    __slots__ = ("_bound", "_context", "_name", "_stdlib")

    def __init__(self, name: str, context: dict[str, Any]) -> None:
        self._name = name
        self._context = context
        self._stdlib = logging.getLogger(name)
        self._bound: tuple[tuple[Any, ...], Any] | None = None  # (structlog config, its logger)

    def bind(self, **context: Any) -> PostroomLogger:
        """A logger that adds `context` to every event."""
        return PostroomLogger(self._name, {**self._context, **context})

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, "debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, "info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, "warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, "error", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        """An error with the exception being handled (its traceback, never its frames' locals)."""
        self._log(logging.ERROR, "exception", event, fields)

    def enabled(self, level: int) -> bool:
        """Whether an event at `level` (`logging.INFO`, ...) goes anywhere, as `_log` decides:
        a hot path asks first, so that a host that filters the level pays for no event's
        fields (a masked phone is a hash). A structlog logger without `is_enabled_for` takes
        every level."""
        if structlog.is_configured():
            bound = self._structlog()
            # Asked of the class: structlog's plain `BoundLogger` turns any unknown attribute
            # into a log call.
            if getattr(type(bound), "is_enabled_for", None) is None:
                return True
            return bool(bound.is_enabled_for(level))
        return self._stdlib.isEnabledFor(level)

    def _log(self, level: int, method: str, event: str, fields: dict[str, Any]) -> None:
        if structlog.is_configured():
            getattr(self._structlog(), method)(event, **fields)
        elif self._stdlib.isEnabledFor(level):
            every = {**self._context, **fields}
            self._stdlib.log(level, "%s", _render(event, every), exc_info=method == "exception",
                             extra={"postroom_event": event, "postroom_fields": every})

    def _structlog(self) -> Any:
        """The host's structlog logger with our context, rebuilt when the host reconfigures."""
        config = structlog.get_config()
        cached = self._bound
        if cached is not None:
            processors, wrapper, factory, context = cached[0]
            if (config["processors"] is processors and config["wrapper_class"] is wrapper
                    and config["logger_factory"] is factory and config["context_class"] is context):
                return cached[1]
        key = (config["processors"], config["wrapper_class"], config["logger_factory"],
               config["context_class"])
        cached = self._bound = (key, structlog.get_logger(self._name).bind(**self._context))
        return cached[1]


def _render(event: str, fields: dict[str, Any]) -> str:
    """`event key=value ...`: one line a plain `logging` handler prints as it is."""
    return " ".join([event, *(f"{key}={value}" for key, value in fields.items())])
