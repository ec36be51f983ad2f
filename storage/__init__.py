"""postroom's storage layer: the peewee schema, opening a database by URL, the owner lock,
the queries.

No actors here; peewee never leaves this package (callers get `postroom_common` values).
"""

from storage.database import PostgresSettings, SqliteSettings, is_postgres, open_database
from storage.owner import OwnerLock, holder_name
from storage.store import Storage

__all__ = ["OwnerLock", "PostgresSettings", "SqliteSettings", "Storage", "holder_name", "is_postgres",
           "open_database"]
