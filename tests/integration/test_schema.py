"""Schema versions: a new database is created at this code's version, an older one is
migrated on start (or by `postroom migrate`) keeping every row, a newer one is refused
without a write, and a producer-side check names `postroom migrate`."""

from __future__ import annotations

import shutil
from pathlib import Path

import psycopg
import pytest
from peewee import SqliteDatabase

from postroom_cli.main import main as cli
from storage import Storage, open_database
from storage.models import TABLES
from storage.schema import SCHEMA_VERSION
from supervisor import Enqueue, GetStats, SchemaMismatch, Status, Supervisor
from tests.conftest import eventually
from tests.integration.helpers import RecordingSender

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
#: The rows the 0.1.0 fixtures hold (made by tests/fixtures/README.md's recipe).
OLD_COUNTS = {Status.PENDING: 3, Status.PROCESSING: 1, Status.COMPLETED: 1, Status.RETRYING: 1,
              Status.FAILED: 1, Status.CANCELLED: 1}


def _old_database(database_url: str, tmp_path: Path) -> str:
    """A database as postroom 0.1.0 left it (unversioned), on the fixture's backend."""
    if database_url.startswith("sqlite"):
        shutil.copy(FIXTURES / "schema-0.1.0.db", tmp_path / "old.db")
        return f"sqlite:///{tmp_path}/old.db"
    dump = (FIXTURES / "schema-0.1.0.sql").read_text()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(dump.encode())
    return database_url


def test_a_new_database_is_created_at_this_version_and_ids_start_at_one(database_url: str) -> None:
    """A database without postroom's tables gets this code's schema, recorded as its version,
    and its first message is id 1 on both backends."""
    store = Storage(open_database(database_url))
    try:
        assert store.schema_version() is None
        assert store.migrate() == (None, ())
        assert store.schema_version() == SCHEMA_VERSION
        store.check_schema()
        with store.write_transaction():
            assert store.insert([_new()]) == [1]
    finally:
        store.close_all()


@pytest.mark.timeout(60)
def test_a_0_1_0_database_is_upgraded_on_start_keeps_its_rows_and_sends_its_pending(
        database_url: str, tmp_path: Path) -> None:
    """The supervisor migrates the unversioned schema of 0.1.0 on start: every row is kept,
    the row a crash left processing is settled, the due pending messages are sent (HIGH
    first), the paused account and the far schedule wait, and new ids follow the old ones."""
    url = _old_database(database_url, tmp_path)
    before = Storage(open_database(url))
    assert before.schema_version() == 0
    with pytest.raises(SchemaMismatch, match="postroom migrate"):
        before.check_schema()
    old_ids = sorted(m.id for phone in ("+15550001", "+15550002", "+15550003", "+15550004")
                     for m in before.list_messages(phone))
    before.close_all()

    sender = RecordingSender()
    ref = Supervisor.start(database=url, sender=sender)
    try:
        first_pending = old_ids[0]
        assert sender.wait_for(2) == [first_pending + 1, first_pending]  # HIGH, then NORMAL
        stats = eventually(lambda: (s := ref.ask(GetStats())).by_status[Status.COMPLETED]
                           == OLD_COUNTS[Status.COMPLETED] + 2 and s)
        assert stats.total == len(old_ids)
        assert stats.by_status[Status.RETRYING] == 2  # the interrupted one joined the retrying one
        assert ref.ask(Enqueue(phone="+15550009", user_id="1", text="new")) == old_ids[-1] + 1
    finally:
        ref.stop()
    after = Storage(open_database(url))
    try:
        assert after.schema_version() == SCHEMA_VERSION
        after.check_schema()
    finally:
        after.close_all()


def test_a_database_newer_than_the_code_is_refused_and_never_written(database_url: str) -> None:
    """A schema version above this code's: the supervisor refuses to start with SchemaMismatch
    and writes nothing (no epoch taken, no row changed); so does `postroom migrate`."""
    store = Storage(open_database(database_url))
    store.create_schema()
    with store.write_transaction():
        store.insert([_new()])
    store.db.execute_sql(f"UPDATE postroom_meta SET value = {SCHEMA_VERSION + 1}"
                         " WHERE key = 'schema_version'")
    snapshot = _snapshot(store)
    with pytest.raises(SchemaMismatch, match="newer"):
        Supervisor.start(database=database_url, sender=RecordingSender())
    assert cli(["migrate", "--database", database_url]) == 2
    with pytest.raises(SchemaMismatch, match="upgrade postroom"):
        store.check_schema()
    assert _snapshot(store) == snapshot
    store.close_all()


def test_postroom_migrate_upgrades_an_old_database_and_says_what_it_did(
        database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`postroom migrate` on a 0.1.0 database runs each migration, names them, and a second
    run has nothing to do."""
    url = _old_database(database_url, tmp_path)
    assert cli(["migrate", "--database", url]) == 0
    assert f"from version 0 to {SCHEMA_VERSION}" in capsys.readouterr().out
    assert cli(["migrate", "--database", url]) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_an_upgraded_database_has_the_schema_of_a_new_one(database_url: str, tmp_path: Path) -> None:
    """Columns and indexes of a migrated 0.1.0 database are those of a database created new."""
    old = Storage(open_database(_old_database(database_url, tmp_path)))
    old.create_schema()
    upgraded = _shape(old)
    old.close_all()
    if database_url.startswith("postgresql"):
        from tests.conftest import reset_postgres

        reset_postgres()
        new_url = database_url
    else:
        new_url = f"sqlite:///{tmp_path}/new.db"
    new = Storage(open_database(new_url))
    new.create_schema()
    assert _shape(new) == upgraded
    new.close_all()


def _shape(store: Storage) -> dict[str, tuple[list[tuple[str, bool, bool]], set[str]]]:
    """Per table: (column name, not null, primary key) and index names."""
    shape = {}
    for table in TABLES:
        columns = [(c.name, not c.null, c.primary_key) for c in store.db.get_columns(table)]
        indexes = {i.name for i in store.db.get_indexes(table) if not i.name.endswith("_pkey")
                   and not i.name.startswith("sqlite_autoindex")}
        shape[table] = (sorted(columns), indexes)
    return shape


def _snapshot(store: Storage) -> list[tuple[object, ...]]:
    rows = []
    for table in ("message_queue", "postroom_meta", "postroom_owner"):
        if store.db.table_exists(table):
            rows += [(table, *row) for row in store.db.execute_sql(f"SELECT * FROM {table}").fetchall()]
    return sorted(rows, key=repr)


def _new():  # type: ignore[no-untyped-def]
    from tests.integration.test_fencing import _new as new

    return new()


def test_sqlite_fixture_is_what_its_name_says() -> None:
    """The committed 0.1.0 SQLite fixture is unversioned and holds a row in every status."""
    store = Storage(SqliteDatabase(str(FIXTURES / "schema-0.1.0.db")))
    try:
        assert store.schema_version() == 0
        assert store.stats().by_status == OLD_COUNTS
    finally:
        store.close()
