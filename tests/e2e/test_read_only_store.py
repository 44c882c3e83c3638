"""A server started on a store it cannot write: writes NOT_SERVING in health with the reason in the log, every
write answered UNAVAILABLE with ErrorInfo (never INTERNAL/UNKNOWN), reads served, and SERVING again once the
store takes writes (the store-probe worker notices). SQLite (the database file made read-only) and PostgreSQL
(a role that may only SELECT)."""

import contextlib
import dataclasses
import logging
import os
import pathlib
import subprocess
import uuid

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2

from reserve_ledger.v1 import ledger_pb2 as pb
from services.api.server import SERVICE_NAME, WRITES_HEALTH_NAME
from services.compose import ServerConfig, build_server
from services.store.config import SQLITE_FILE_NAME
from tests.conftest import POSTGRES_URL
from tests.e2e.conftest import Clients
from tests.e2e.helpers import error_reason, funded, purchase
from tests.e2e.test_faults import health_of, wait_for

RECOVERY_TIMEOUT_S = 60.0   # the store-probe worker retries every few seconds; the machine is slow


@contextlib.contextmanager
def read_only_file(path: pathlib.Path):
    """The file cannot be written, even by root (chattr +i on the filesystem that holds it; chmod otherwise)."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(path)], check=True, capture_output=True)
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=True, capture_output=True)
        return
    mode = path.stat().st_mode
    path.chmod(0o444)
    try:
        yield
    finally:
        path.chmod(mode)


def check_reads_served_and_writes_refused(server, certs_dir) -> None:
    clients = Clients(f"127.0.0.1:{server.port}", certs_dir)
    assert health_of(clients.address, certs_dir, WRITES_HEALTH_NAME) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert health_of(clients.address, certs_dir, SERVICE_NAME) == health_pb2.HealthCheckResponse.SERVING
    assert "cold-a" in [a.account_id for a in clients.dave.ListAccounts(pb.ListAccountsRequest(), timeout=30).accounts]
    assert clients.dave.GetBalances(pb.GetBalancesRequest(), timeout=30).position == 1
    with pytest.raises(grpc.RpcError) as caught:
        purchase(clients.alice, "cold-a", 1, f"refused-{uuid.uuid4().hex[:8]}")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, (caught.value.code(), caught.value.details())
    assert error_reason(caught.value) == "STORE_UNAVAILABLE"
    assert "readonly" not in caught.value.details() and "permission" not in caught.value.details()


def check_recovered(server, certs_dir) -> None:
    clients = Clients(f"127.0.0.1:{server.port}", certs_dir)
    wait_for(lambda: health_of(clients.address, certs_dir, WRITES_HEALTH_NAME)
             == health_pb2.HealthCheckResponse.SERVING, RECOVERY_TIMEOUT_S, "writes to be SERVING again")
    assert purchase(clients.alice, "cold-a", 1, "after-recovery").result.position == 2


def test_a_server_started_on_a_read_only_sqlite_file_serves_reads_refuses_writes_and_recovers(
        tmp_path, certs_dir, caplog):
    """Goal: a read-only SQLite file at start is NOT_SERVING for writes (with the reason logged), UNAVAILABLE
    with ErrorInfo for each write, reads still answered, and SERVING again when the file is writable."""
    config = ServerConfig(create_store=True, metrics_listen=None, listen="127.0.0.1:0",
                          data_dir=str(tmp_path / "data"), certs_dir=str(certs_dir),
                          signing_key_path=str(tmp_path / "signing.key"))
    first = build_server(config).start()
    funded(Clients(f"127.0.0.1:{first.port}", certs_dir), "cold-a", 1)
    first.stop(grace_s=1)
    caplog.set_level(logging.WARNING, logger="reserve_ledger.server")
    with read_only_file(tmp_path / "data" / SQLITE_FILE_NAME):
        server = build_server(dataclasses.replace(config, create_store=False)).start()
        try:
            check_reads_served_and_writes_refused(server, certs_dir)
            assert "writes NOT_SERVING" in caplog.text and "readonly" in caplog.text
        except BaseException:
            server.stop(grace_s=1)
            raise
    try:
        check_recovered(server, certs_dir)
    finally:
        server.stop(grace_s=1)


@pytest.fixture
def select_only_role():
    """A PostgreSQL role (unique name) that may read a schema but not write it; dropped afterwards."""
    role = "ro_" + uuid.uuid4().hex[:12]
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
    yield role
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP OWNED BY "{role}"')
        conn.execute(f'DROP ROLE "{role}"')


def grant(schema: str, role: str, privileges: str) -> None:
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"')
        conn.execute(f'GRANT {privileges} ON ALL TABLES IN SCHEMA "{schema}" TO "{role}"')
        conn.execute(f'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA "{schema}" TO "{role}"')


@pytest.mark.postgres
def test_a_server_started_with_a_select_only_postgres_role_serves_reads_refuses_writes_and_recovers(
        tmp_path, certs_dir, select_only_role, caplog):
    """Goal: a PostgreSQL role that may only SELECT is NOT_SERVING for writes (with the reason logged),
    UNAVAILABLE with ErrorInfo for each write, reads still answered, and SERVING again once it is granted
    INSERT, UPDATE and DELETE (no restart)."""
    from tests.conftest import _drop_schema, _postgres_schema
    schema = _postgres_schema()
    try:
        owner_url = f"{POSTGRES_URL}?schema={schema}"
        config = ServerConfig(create_store=True, metrics_listen=None, listen="127.0.0.1:0", data_dir=None,
                              database_url=owner_url, certs_dir=str(certs_dir),
                              signing_key_path=str(tmp_path / "signing.key"))
        first = build_server(config).start()
        funded(Clients(f"127.0.0.1:{first.port}", certs_dir), "cold-a", 1)
        first.stop(grace_s=1)
        grant(schema, select_only_role, "SELECT")
        reader_url = owner_url.replace("postgres@", f"{select_only_role}@", 1)
        caplog.set_level(logging.WARNING, logger="reserve_ledger.server")
        server = build_server(dataclasses.replace(config, create_store=False, database_url=reader_url)).start()
        try:
            check_reads_served_and_writes_refused(server, certs_dir)
            assert "writes NOT_SERVING" in caplog.text and "permission denied" in caplog.text
            grant(schema, select_only_role, "INSERT, UPDATE, DELETE")
            check_recovered(server, certs_dir)
        finally:
            server.stop(grace_s=1)
    finally:
        _drop_schema(schema)
