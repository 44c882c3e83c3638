"""Shared fixtures: storage on SQLite and PostgreSQL (never skipped), certificates, a real mTLS server."""

import os
import pathlib
import uuid

import psycopg
import pytest

from services.api.certs import init_certs
from services.store.config import postgres_env, sqlite_env

POSTGRES_URL = os.environ.get("RESERVE_LEDGER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
IDENTITIES = (("alice", "operator"), ("oscar", "operator"), ("bob", "approver"), ("carol", "approver"),
              ("dave", "auditor"), ("erin", "admin"), ("frank", "operator"), ("frank", "approver"))


def _postgres_schema() -> str:
    """A fresh schema in the test database; fails (never skips) when PostgreSQL is unreachable."""
    schema = "t_" + uuid.uuid4().hex[:12]
    try:
        with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
    except psycopg.OperationalError as error:
        pytest.fail(f"PostgreSQL at {POSTGRES_URL} is unreachable: {error}")
    return schema


def _drop_schema(schema: str) -> None:
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def storage(request, tmp_path):
    """(data_dir, database_url) for one backend; the contract suite runs every test on both."""
    if request.param == "sqlite":
        yield str(tmp_path / "data"), None
        return
    schema = _postgres_schema()
    yield None, f"{POSTGRES_URL}?schema={schema}"
    _drop_schema(schema)


@pytest.fixture
def storage_env(storage):
    data_dir, database_url = storage
    return postgres_env(database_url) if database_url else sqlite_env(data_dir)


@pytest.fixture(scope="session")
def certs_dir(tmp_path_factory) -> pathlib.Path:
    return init_certs(tmp_path_factory.mktemp("certs"), IDENTITIES)
