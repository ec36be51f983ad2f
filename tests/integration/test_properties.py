"""Property tests at the door: what `Enqueue` refuses writes nothing; what it accepts round-trips.

One supervisor serves the whole module (a SQLite file under a module temp dir). Its
clock never moves and its sender answers "rate limited for an hour", so accepted
rows stay exactly as they were written.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pykka
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.validation import Limits
from postroom_common import Message
from supervisor import (
    Broadcast,
    Enqueue,
    EnqueueBatch,
    FakeClock,
    GetHealth,
    GetMessage,
    GetStats,
    ListMessages,
    Priority,
    RateLimited,
    Supervisor,
    ValidationError,
)
from tests.integration.helpers import start

CONTROL = [chr(c) for c in range(32)] + ["\x7f"]
DEFAULT_MAX_ATTEMPTS = 5
MAX_TEXT = 4096
CLOCK_START = datetime(2030, 1, 1, tzinfo=UTC)
PROPERTY = settings(max_examples=200, deadline=None, database=None)


@pytest.fixture(autouse=True)
def _stop_all_actors() -> Iterator[None]:
    """Overrides the conftest fixture: the module's supervisor must outlive each test."""
    yield


def never_delivers(message: Message) -> None:
    raise RateLimited(retry_after=3600)


@pytest.fixture(scope="module")
def ref(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pykka.ActorRef[Supervisor]]:
    """One supervisor for the module, on a SQLite file; stopped (with every actor) at the end."""
    path: Path = tmp_path_factory.mktemp("properties") / "postroom.db"
    supervisor = start(f"sqlite:///{path}", never_delivers, clock=FakeClock(CLOCK_START))
    yield supervisor
    supervisor.stop()
    pykka.ActorRegistry.stop_all(timeout=30)


def rows(ref: pykka.ActorRef[Supervisor]) -> int:
    return int(ref.ask(GetStats()).total)


# -- strategies --------------------------------------------------------------------------

no_surrogates = st.characters(blacklist_categories=("Cs",))
# Identifiers refuse control and format characters (bidi controls, zero-width ones): texts do not.
identifier_chars = st.characters(blacklist_categories=("Cs", "Cc", "Cf"), blacklist_characters=CONTROL)
identifiers = st.one_of(
    st.sampled_from(["+15550001", "+15550002", "+447700900123", "42", "@channel"]),
    st.text(identifier_chars, min_size=1, max_size=40).filter(str.strip),
)
SPECIAL_TEXTS = [
    "\x00", "a\x00b\x00", "👋🏽 hello 👨‍👩‍👧‍👦", "مرحبا بالعالم", "\u202eevil\u202c", "שלום עולם",
    "'; DROP TABLE message_queue; --", "Robert'); DELETE FROM message_queue WHERE ('1'='1",
    "%s %(x)s ? :name $1", "\\x00\\n", "\r\n\t", "\ufeff", "\U0010ffff", "e\u0301",
    "x" * MAX_TEXT, "😀" * MAX_TEXT,
]
long_texts = st.builds(lambda seed, n: (seed * MAX_TEXT)[:n],  # hypothesis rarely draws long text
                       st.text(no_surrogates, min_size=1, max_size=50), st.integers(1000, MAX_TEXT))
texts = st.one_of(st.text(no_surrogates, max_size=MAX_TEXT), long_texts, st.sampled_from(SPECIAL_TEXTS))
far_future = st.datetimes(min_value=datetime(2031, 1, 1), max_value=datetime(2200, 1, 1),
                          timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)),
                                                     timezone(timedelta(hours=-8))]))


@st.composite
def valid_enqueues(draw: st.DrawFn) -> Enqueue:
    """Any command the door must accept (scheduled in the future, or sent and rate limited)."""
    text = draw(texts)
    attachment = draw(st.none() | identifiers) if text else draw(identifiers)
    return Enqueue(
        phone=draw(identifiers), user_id=draw(identifiers), text=text,
        priority=draw(st.sampled_from(Priority)), attachment=attachment,
        scheduled_at=draw(st.none() | far_future),
        max_attempts=draw(st.none() | st.integers(1, 1000)),
    )


@st.composite
def with_surrogate(draw: st.DrawFn, base: st.SearchStrategy[str]) -> str:
    """`base` with one lone surrogate inserted somewhere."""
    value = draw(base)
    at = draw(st.integers(0, len(value)))
    surrogate = draw(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF))
    return value[:at] + surrogate + value[at:]


@st.composite
def with_control(draw: st.DrawFn, base: st.SearchStrategy[str]) -> str:
    value = draw(base)
    at = draw(st.integers(0, len(value)))
    return value[:at] + draw(st.sampled_from(CONTROL)) + value[at:]


@st.composite
def over_long(draw: st.DrawFn, limit: int) -> str:
    return draw(st.sampled_from(["x", "é", "😀", "\x00"])) * draw(st.integers(limit + 1, limit + 500))


def bad_identifiers(limit: int = 255, ints: bool = True) -> st.SearchStrategy[Any]:
    """Values no identifier field may take: empty, blank, not a string (an int too, unless
    `ints` is False: a user_id may be one), control chars, too long."""
    return st.one_of(
        st.sampled_from(["", " ", "   ", "\t", "\n", "\u3000", "\xa0 "]),
        st.none(), st.integers() if ints else st.booleans(), st.floats(allow_nan=False),
        st.binary(min_size=1, max_size=8), st.lists(st.text(max_size=3), max_size=2),
        with_control(identifiers), with_surrogate(identifiers),
        over_long(limit),
    )


def bad_texts() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(), st.integers(), st.binary(max_size=8),
        with_surrogate(st.text(no_surrogates, max_size=200)), over_long(MAX_TEXT),
    )


#: field -> strategy of values that make an otherwise valid Enqueue invalid.
INVALID_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "phone": bad_identifiers(),
    # An int is a chat id, unless its decimal text is too long (or too long to write at all).
    "user_id": st.one_of(bad_identifiers(ints=False), st.integers(min_value=10**256),
                         st.sampled_from([10**5000, -(10**5000)])),
    "text": bad_texts(),
    "attachment": bad_identifiers(4096),
    "idempotency_key": bad_identifiers(),
    "priority": st.one_of(st.integers(), st.sampled_from(["HIGH", "high", None, 1.0]),
                          st.sampled_from([int(p) for p in Priority])),
    "scheduled_at": st.one_of(st.datetimes(), st.sampled_from(["2031-01-01T00:00:00Z", 0])),
    "max_attempts": st.one_of(st.integers(max_value=0), st.integers(min_value=2**31), st.floats(),
                              st.booleans(), st.sampled_from(["3", "three", 2.0])),
}


@st.composite
def invalid_enqueues(draw: st.DrawFn) -> Enqueue:
    """A valid command with one field replaced by a value the door must refuse."""
    valid = draw(valid_enqueues())
    field = draw(st.sampled_from(sorted(INVALID_FIELDS)))
    value = draw(INVALID_FIELDS[field])
    fields = {name: getattr(valid, name) for name in Enqueue.__dataclass_fields__}
    if field in ("attachment", "idempotency_key") and value is None:  # None is valid for these
        value = ""
    fields[field] = value
    return Enqueue(**fields)


@st.composite
def empty_without_attachment(draw: st.DrawFn) -> Enqueue:
    valid = draw(valid_enqueues())
    fields = {name: getattr(valid, name) for name in Enqueue.__dataclass_fields__}
    return Enqueue(**{**fields, "text": "", "attachment": None})


# -- properties ----------------------------------------------------------------------------


@PROPERTY
@given(command=st.one_of(invalid_enqueues(), empty_without_attachment()))
def test_every_invalid_enqueue_is_refused_and_writes_nothing(
        ref: pykka.ActorRef[Supervisor], command: Enqueue) -> None:
    """An Enqueue with any one invalid field raises ValidationError and leaves the row count unchanged."""
    before = rows(ref)
    with pytest.raises(ValidationError):
        ref.ask(command)
    assert rows(ref) == before


@settings(max_examples=50, deadline=None, database=None)
@given(good=st.lists(valid_enqueues(), min_size=1, max_size=5), bad=invalid_enqueues(),
       at=st.integers(0, 5))
def test_one_invalid_message_refuses_the_whole_batch(
        ref: pykka.ActorRef[Supervisor], good: list[Enqueue], bad: Enqueue, at: int) -> None:
    """An EnqueueBatch holding one invalid message raises ValidationError and writes none of them."""
    before = rows(ref)
    with pytest.raises(ValidationError):
        ref.ask(EnqueueBatch([*good[:at], bad, *good[at:]]))
    assert rows(ref) == before


@PROPERTY
@given(command=valid_enqueues())
def test_every_valid_enqueue_round_trips_exactly(
        ref: pykka.ActorRef[Supervisor], command: Enqueue) -> None:
    """Any valid Enqueue (emoji, RTL, NUL, SQL, 4,096 chars) comes back from GetMessage unchanged."""
    before = rows(ref)
    message_id = ref.ask(command)
    stored: Message = ref.ask(GetMessage(message_id))
    assert rows(ref) == before + 1
    assert stored.id == message_id
    assert stored.text == command.text
    assert stored.text.encode("utf-8") == command.text.encode("utf-8")
    assert (stored.phone, stored.user_id, stored.attachment, stored.priority) == (
        command.phone, command.user_id, command.attachment, command.priority)
    assert stored.priority is command.priority
    assert stored.scheduled_at == command.scheduled_at
    assert stored.max_attempts == (command.max_attempts or DEFAULT_MAX_ATTEMPTS)
    assert stored.created_at == CLOCK_START


SEQUENCE_PHONES = itertools.count()
command_kinds = st.lists(st.tuples(st.sampled_from(["enqueue", "batch", "broadcast"]),
                                   st.integers(min_value=1, max_value=400)), min_size=1, max_size=6)


@settings(max_examples=30, deadline=None, database=None)
@given(commands=command_kinds)
def test_one_threads_enqueues_are_written_in_the_order_it_sent_them(
        ref: pykka.ActorRef[Supervisor], commands: list[tuple[str, int]]) -> None:
    """Told one after another (single enqueues, batches, broadcasts of any size), then one
    asked: the account's ids follow the order sent, though single enqueues skip the
    supervisor's thread while batches are checked there (invariant 4)."""
    phone = f"+1777{next(SEQUENCE_PHONES):07d}"
    sent: list[str] = []
    for position, (kind, size) in enumerate(commands):
        users = [f"c{position}-{n}" for n in range(1 if kind == "enqueue" else size)]
        sent.extend(users)
        if kind == "enqueue":
            ref.tell(Enqueue(phone=phone, user_id=users[0], text="x"))
        elif kind == "batch":
            ref.tell(EnqueueBatch([Enqueue(phone=phone, user_id=u, text="x") for u in users]))
        else:
            ref.tell(Broadcast([(phone, u) for u in users], text="x"))
    ref.ask(Enqueue(phone=phone, user_id="last", text="x"))  # behind all of them: all committed
    written = ref.ask(ListMessages(phone, limit=len(sent) + 1))
    assert [m.user_id for m in written] == [*sent, "last"]


@settings(max_examples=50, deadline=None, database=None)
@given(text=with_surrogate(st.text(no_surrogates, max_size=100)))
def test_lone_surrogate_is_refused_and_the_supervisor_keeps_working(
        ref: pykka.ActorRef[Supervisor], text: str) -> None:
    """Text with a lone surrogate raises ValidationError; the next valid message is stored and read back."""
    before = rows(ref)
    with pytest.raises(ValidationError, match="Unicode"):
        ref.ask(Enqueue(phone="+15550001", user_id="42", text=text))
    assert rows(ref) == before
    assert ref.is_alive()
    fine = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    message_id = ref.ask(Enqueue(phone="+15550001", user_id="42", text=fine))
    assert ref.ask(GetMessage(message_id)).text == fine


def test_the_canonical_lone_surrogate_is_refused(ref: pykka.ActorRef[Supervisor]) -> None:
    """The text "\\ud800" raises ValidationError, writes nothing, and the supervisor answers afterwards."""
    before = rows(ref)
    with pytest.raises(ValidationError):
        ref.ask(Enqueue(phone="+15550001", user_id="42", text="\ud800"))
    assert rows(ref) == before
    message_id = ref.ask(Enqueue(phone="+15550001", user_id="42", text="after \U0001f600"))
    assert ref.ask(GetMessage(message_id)).text == "after \U0001f600"


def test_invalid_enqueue_sent_with_tell_does_not_stop_the_supervisor(tmp_path: Path) -> None:
    """An invalid Enqueue sent with tell is refused (logged) and the supervisor keeps answering."""
    own = start(f"sqlite:///{tmp_path}/tell.db", never_delivers, clock=FakeClock(CLOCK_START))
    try:
        own.tell(Enqueue(phone="", user_id="42", text="x"))
        message_id = own.ask(Enqueue(phone="+15550001", user_id="42", text="after"), timeout=10)
        assert own.ask(GetMessage(message_id), timeout=10).text == "after"
    finally:
        if own.is_alive():
            own.stop()


@pytest.mark.postgres
def test_longest_phone_the_door_accepts_is_stored_on_postgres(postgres_url: str) -> None:
    """The longest phone the door accepts round-trips on PostgreSQL; one more is refused."""
    own = start(postgres_url, never_delivers, clock=FakeClock(CLOCK_START))
    try:
        phone = "+" + "1" * (Limits().max_phone_length - 1)
        message_id = own.ask(Enqueue(phone=phone, user_id="42", text="x"), timeout=10)
        assert own.ask(GetMessage(message_id), timeout=10).phone == phone
        with pytest.raises(ValidationError):
            own.ask(Enqueue(phone=phone + "1", user_id="42", text="x"), timeout=10)
    finally:
        own.stop()


def test_edge_values_the_door_accepts_are_stored_on_every_backend(database_url: str) -> None:
    """An int chat id, 2**31 - 1 attempts and year 9999 round-trip on SQLite and PostgreSQL;
    2**63 attempts and a batch that is no sequence are refused at the door, nothing written."""
    own = start(database_url, never_delivers, clock=FakeClock(CLOCK_START))
    try:
        far = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
        message_id = own.ask(Enqueue(phone="+15550001", user_id=-1001234567890, text="x",
                                     max_attempts=2**31 - 1, scheduled_at=far), timeout=10)
        stored = own.ask(GetMessage(message_id), timeout=10)
        assert (stored.user_id, stored.max_attempts, stored.scheduled_at) == (
            "-1001234567890", 2**31 - 1, far)
        with pytest.raises(ValidationError, match="max_attempts"):
            own.ask(Enqueue(phone="+15550001", user_id="42", text="x", max_attempts=2**63), timeout=10)
        with pytest.raises(ValidationError, match="sequence of Enqueue"):
            own.ask(EnqueueBatch(None), timeout=10)  # type: ignore[arg-type]
        assert own.ask(GetStats(), timeout=10).total == 1
        assert own.ask(GetHealth(), timeout=10).degraded is False
    finally:
        own.stop()
