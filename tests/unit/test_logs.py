"""`PostroomLogger.enabled`: asked before a hot path builds an event, answered as the event would be."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import structlog

from postroom_common.logs import get_logger
from tests.conftest import LogCapture

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(autouse=True)
def _structlog_reset() -> Iterator[None]:
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


def test_unconfigured_structlog_follows_the_stdlib_loggers_level(caplog: pytest.LogCaptureFixture) -> None:
    log = get_logger("postroom.test_enabled")
    caplog.set_level(logging.WARNING, logger="postroom")
    assert not log.enabled(logging.INFO) and log.enabled(logging.WARNING)
    caplog.set_level(logging.INFO, logger="postroom")  # the host changes its mind: asked each time
    assert log.enabled(logging.INFO)
    log.info("seen", n=1)
    assert [r.postroom_event for r in caplog.records] == ["seen"]  # type: ignore[attr-defined]


def test_structlog_filtering_and_a_later_reconfiguration() -> None:
    log = get_logger("postroom.test_enabled", account="+1*")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    assert not log.enabled(logging.INFO) and log.enabled(logging.ERROR)
    capture = LogCapture()
    structlog.configure(processors=[capture],
                        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    assert log.enabled(logging.INFO)
    log.info("seen", n=1)
    assert capture.events("seen")[0]["account"] == "+1*"


def test_a_structlog_wrapper_that_cannot_say_takes_every_level() -> None:
    capture = LogCapture()
    structlog.configure(wrapper_class=structlog.BoundLogger, processors=[capture])
    assert get_logger("postroom.test_enabled").enabled(logging.DEBUG)
    assert capture.entries == []  # asking logged nothing (its unknown attributes are log calls)
