"""Storage configuration: a SQLite data directory (default) or a PostgreSQL URL -> eventsourcing env.

The env is complete and explicit: the ledger application does not merge os.environ into it, so a stray
variable (e.g. POSTGRES_ENABLE_DB_FUNCTIONS, which would drop the insert lock) cannot change storage.
"""

import pathlib
import re
from urllib.parse import parse_qs, unquote, urlparse

from services.errors import ConfigurationInvalid

SQLITE_FILE_NAME = "ledger.sqlite"
POSTGRES_LOCK_TIMEOUT_S = 5
# A schema name is an identifier, never SQL: lower-case letters, digits and underscores, at most 63 bytes
# (NAMEDATALEN - 1). Lower case because eventsourcing 9.5.6 looks its composite type up by the unquoted name.
SCHEMA_PATTERN = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# The event store writes each event's canonical bytes as they are (services/store/mapper.py).
MAPPER_TOPIC = "services.store.mapper:CanonicalBytesMapper"


def sqlite_env(data_dir: str | pathlib.Path, create: bool = True) -> dict:
    """With `create`, the directory is made (0700) when missing; the file is created on first open."""
    path = pathlib.Path(data_dir)
    if create:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": str(path / SQLITE_FILE_NAME),
        "SQLITE_LOCK_TIMEOUT": "30",
        "APPLICATION_RECORDER_TOPIC": "services.store.recorders:SQLiteLedgerRecorder",
        "MAPPER_TOPIC": MAPPER_TOPIC,
        "CREATE_TABLE": "y",
    }


def _schema(name: str) -> str:
    if not SCHEMA_PATTERN.match(name):
        raise ConfigurationInvalid(f"schema {name!r} in the database URL must be 1-63 lower-case letters, digits or "
                                  "underscores, not starting with a digit")
    return name


def postgres_env(database_url: str) -> dict:
    """postgresql://user[:password]@host[:port]/dbname[?schema=name]"""
    url = urlparse(database_url)
    if url.scheme not in ("postgresql", "postgres") or not url.path.strip("/"):
        raise ValueError("database URL must look like postgresql://user@host:5432/dbname")
    query = parse_qs(url.query)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": url.path.strip("/"),
        "POSTGRES_HOST": url.hostname or "127.0.0.1",
        "POSTGRES_PORT": str(url.port or 5432),
        "POSTGRES_USER": unquote(url.username or "postgres"),
        "POSTGRES_PASSWORD": unquote(url.password or ""),
        "POSTGRES_SCHEMA": _schema(query.get("schema", ["public"])[0]),
        "POSTGRES_LOCK_TIMEOUT": str(POSTGRES_LOCK_TIMEOUT_S),
        "POSTGRES_CONNECT_TIMEOUT": "10",
        "POSTGRES_POOL_SIZE": "4",
        "POSTGRES_MAX_OVERFLOW": "8",
        "POSTGRES_ENABLE_DB_FUNCTIONS": "n",
        "APPLICATION_RECORDER_TOPIC": "services.store.recorders:PostgresLedgerRecorder",
        "MAPPER_TOPIC": MAPPER_TOPIC,
        "CREATE_TABLE": "y",
    }


# The store's connection pool, sized by the server to the threads that use it (sized_pool); the library's own
# default otherwise (5 kept + 10 more on SQLite).
SQLITE_POOL_SIZE = "SQLITE_POOL_SIZE"
SIZED_SQLITE_FACTORY_TOPIC = "services.store.recorders:SizedSQLiteFactory"
POSTGRES_POOL_KEPT = 4


def sized_pool(env: dict, connections_max: int) -> dict:
    """The env with a connection pool of `connections_max` connections at most. PostgreSQL keeps a few open and
    opens the rest on demand; SQLite (connections are a file handle each) keeps every one it opened."""
    if env["PERSISTENCE_MODULE"] == "eventsourcing.postgres":
        kept = min(POSTGRES_POOL_KEPT, connections_max)
        return {**env, "POSTGRES_POOL_SIZE": str(kept), "POSTGRES_MAX_OVERFLOW": str(connections_max - kept)}
    return {**env, "PERSISTENCE_MODULE": SIZED_SQLITE_FACTORY_TOPIC, SQLITE_POOL_SIZE: str(connections_max)}


def storage_env(data_dir: str | None, database_url: str | None) -> dict:
    if database_url:
        return postgres_env(database_url)
    return sqlite_env(data_dir or "./reserve-data")
