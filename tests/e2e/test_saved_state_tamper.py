"""Saved projections and checkpoints are evidence, never authority: an insider edits one with raw SQL on the
real SQLite file or PostgreSQL tables; the restarted real server neither serves nor decides from it, says so
(WARNING, health), keeps the edited row for inspection, and the log stays valid. `rebuild` never erases
a differing row unless told to, and then keeps it."""

import json
import logging

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ledger import application
from ledger.application import PROJECTION_NAME, SET_ASIDE_PREFIX
from ledger.limits import SATS_PER_BTC as BTC
from reserve_ledger.v1 import ledger_pb2 as pb
from services.api.client import secure_channel
from services.api.server import SAVED_STATES_HEALTH_NAME
from services.cli.main import main
from services.compose import ServerConfig, build_server
from tests.e2e.conftest import Clients
from tests.e2e.helpers import balance_of, funded, open_account, rpc_error
from tests.e2e.test_verify_tamper import Tables

EXTRA_SATS = BTC  # what the insider adds to one account in a saved state


def start(storage, certs_dir, key):
    data_dir, database_url = storage
    server = build_server(ServerConfig(create_store=True, metrics_listen=None, listen="127.0.0.1:0", data_dir=data_dir,
                                       database_url=database_url, certs_dir=str(certs_dir),
                                       signing_key_path=str(key))).start()
    return server, Clients(f"127.0.0.1:{server.port}", certs_dir)


def record_some(storage, certs_dir, key, purchases: int = 1) -> int:
    """cold-a funded with 5 BTC (and `purchases` - 1 more of 1 BTC), warm-b open; the server stopped
    (which saves the sealed projection and signs a head). Returns the last position."""
    server, clients = start(storage, certs_dir, key)
    try:
        funded(clients, "cold-a", 5)
        open_account(clients.alice, "warm-b")
        for n in range(purchases - 1):
            clients.alice.RecordPurchase(pb.RecordPurchaseRequest(
                request_id=f"more-{n}", account_id="cold-a", quantity_sats=BTC, price_per_btc="60000",
                currency_code="USD", fiat_total="60000", counterparty="C", trade_reference=f"M{n}",
                trade_date="2026-11-02"), timeout=10)
        return clients.dave.GetBalances(pb.GetBalancesRequest(), timeout=10).position
    finally:
        server.stop(grace_s=1)


def inflate(state: bytes, account_id: str = "cold-a") -> bytes:
    """The saved state with EXTRA_SATS more credited to one account (still well-formed JSON)."""
    fields = json.loads(state)
    for account in fields["accounts"]:
        if account["account_id"] == account_id:
            account["credits_sats"] += EXTRA_SATS
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def saved_table(tables: Tables, name: str) -> str:
    return tables.nodes.replace("merkle_nodes", name)


def edit_projection(storage) -> int:
    tables = Tables(*storage)
    projections = saved_table(tables, "projections")
    position, state = tables.run(f"SELECT position, state FROM {projections} WHERE name = ?", (PROJECTION_NAME,))[0]
    tables.run(f"UPDATE {projections} SET state = ? WHERE name = ?", (inflate(bytes(state)), PROJECTION_NAME))
    return position


def storage_args(storage) -> list[str]:
    data_dir, database_url = storage
    return ["--database", database_url] if database_url else ["--data-dir", str(data_dir)]


def cli(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    code = main(list(args))
    return code, capsys.readouterr().out


def health_of(clients, certs_dir) -> int:
    stub = health_pb2_grpc.HealthStub(secure_channel(clients.address, certs_dir, "dave"))
    return stub.Check(health_pb2.HealthCheckRequest(service=SAVED_STATES_HEALTH_NAME), timeout=10).status


def test_an_edited_projection_is_not_served_nor_decided_from_and_the_log_stays_valid(
        storage, certs_dir, tmp_path, caplog, capsys):
    """1 BTC added to cold-a in the saved projection row only: verify names that row and nothing else; the
    restarted server serves the true balance, refuses a transfer only the false balance would cover, reports
    the row (WARNING, health NOT_SERVING) and keeps it for inspection; verify then passes."""
    key = tmp_path / "signing.key"
    record_some(storage, certs_dir, key)
    position = edit_projection(storage)

    code, out = cli(capsys, "verify", *storage_args(storage), "--signing-key", str(key))
    failures = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert code == 1 and failures, out
    assert all(f"projection {PROJECTION_NAME!r} at position {position}" in line for line in failures), out

    caplog.set_level(logging.WARNING, logger="reserve_ledger.projections")
    server, clients = start(storage, certs_dir, key)
    try:
        assert balance_of(clients, "cold-a").balance_sats == 5 * BTC
        error = rpc_error(clients.alice.ProposeTransfer, pb.ProposeTransferRequest(
            request_id="too-much", debit_account_id="cold-a", credit_account_id="warm-b",
            amount_sats=5 * BTC + BTC // 2, memo="covered only by the edited row"))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert health_of(clients, certs_dir) == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        server.stop(grace_s=1)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"projection {PROJECTION_NAME} at position {position}" in w for w in warnings), warnings

    code, out = cli(capsys, "verify", *storage_args(storage), "--signing-key", str(key))
    assert code == 0, out
    assert f"{SET_ASIDE_PREFIX}{PROJECTION_NAME}@{position}" in out, out
    tables = Tables(*storage)
    kept = tables.run(f"SELECT state FROM {saved_table(tables, 'projections')} WHERE name LIKE ?",
                      (f"{SET_ASIDE_PREFIX}%",))
    assert [json.loads(bytes(row[0])) for row in kept] == [json.loads(inflate(kept_state(storage, position)))]


def kept_state(storage, position: int) -> bytes:
    """The true state at `position`, as a replay computes it (what the edited row was made from)."""
    from services.store.config import storage_env
    ledger = application.ReserveLedger(storage_env(*storage))
    try:
        return ledger.state_as_of(position).to_bytes()
    finally:
        ledger.close()


def test_an_edited_checkpoint_is_not_served_as_of_its_position(storage, certs_dir, tmp_path, caplog, monkeypatch):
    """A checkpoint row inflated by 1 BTC: a point-in-time query through it answers from a replay instead,
    and the server reports the row (WARNING naming it and its position, health NOT_SERVING)."""
    monkeypatch.setattr(application, "PROJECTION_SAVE_EVERY", 2)
    monkeypatch.setattr(application, "CHECKPOINT_EVERY", 3)
    key = tmp_path / "signing.key"
    server, clients = start(storage, certs_dir, key)
    try:
        funded(clients, "cold-a", 5)
        open_account(clients.alice, "warm-b")
        open_account(clients.alice, "warm-c")
        true_balances = clients.dave.GetBalances(pb.GetBalancesRequest(), timeout=10)
        open_account(clients.alice, "warm-d")
        balance_of(clients, "cold-a")  # catches up: saves the projection and checkpoints
    finally:
        server.stop(grace_s=1)
    tables = Tables(*storage)
    checkpoints = saved_table(tables, "checkpoints")
    position, state = tables.run(f"SELECT position, state FROM {checkpoints} ORDER BY position DESC LIMIT 1")[0]
    assert position == true_balances.position, "the scenario must leave a checkpoint at the queried position"
    tables.run(f"UPDATE {checkpoints} SET state = ? WHERE position = ?", (inflate(bytes(state)), position))

    caplog.set_level(logging.WARNING, logger="reserve_ledger.projections")
    server, clients = start(storage, certs_dir, key)
    try:
        as_of = clients.dave.GetBalances(pb.GetBalancesRequest(as_of=pb.AsOf(position=position)), timeout=10)
        assert list(as_of.balances) == list(true_balances.balances)
        assert health_of(clients, certs_dir) == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        server.stop(grace_s=1)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"checkpoint at position {position}" in w for w in warnings), warnings


def test_rebuild_keeps_a_differing_projection_unless_told_to_replace_it(storage, certs_dir, tmp_path, capsys):
    """`rebuild` reports the edited projection and leaves it as it is (exit 1); `rebuild --replace` saves the
    replay in its place and keeps the old row for inspection under the name it prints."""
    key = tmp_path / "signing.key"
    record_some(storage, certs_dir, key)
    position = edit_projection(storage)
    tables = Tables(*storage)
    projections = saved_table(tables, "projections")
    edited = bytes(tables.run(f"SELECT state FROM {projections} WHERE name = ?", (PROJECTION_NAME,))[0][0])

    code, out = cli(capsys, "rebuild", *storage_args(storage), "--signing-key", str(key))
    assert code == 1 and f"the saved {PROJECTION_NAME} at position {position} DIFFERS" in out, out
    assert bytes(tables.run(f"SELECT state FROM {projections} WHERE name = ?", (PROJECTION_NAME,))[0][0]) == edited

    code, out = cli(capsys, "rebuild", *storage_args(storage), "--signing-key", str(key), "--replace")
    kept_name = f"{SET_ASIDE_PREFIX}{PROJECTION_NAME}@{position}"
    assert code == 1 and kept_name in out, out
    rows = dict(tables.run(f"SELECT name, state FROM {projections}"))
    kept = [name for name in rows if name.startswith(kept_name)]
    assert len(kept) == 1 and bytes(rows[kept[0]]) == edited and kept[0] in out
    assert bytes(rows[PROJECTION_NAME]) == kept_state(storage, position)

    code, out = cli(capsys, "rebuild", *storage_args(storage), "--signing-key", str(key))
    assert code == 0, out
    code, out = cli(capsys, "verify", *storage_args(storage), "--signing-key", str(key))
    assert code == 0 and kept[0] in out, out


def test_a_projection_in_an_old_format_is_replaced_by_a_replay_not_a_crash(storage, certs_dir, tmp_path):
    """A saved projection of another STATE_FORMAT_VERSION (as an older release wrote it) is unproven: the
    server starts, replays, and serves the true balance."""
    key = tmp_path / "signing.key"
    record_some(storage, certs_dir, key)
    tables = Tables(*storage)
    projections = saved_table(tables, "projections")
    state = json.loads(bytes(tables.run(f"SELECT state FROM {projections} WHERE name = ?", (PROJECTION_NAME,))[0][0]))
    state["format_version"] = 1
    tables.run(f"UPDATE {projections} SET state = ? WHERE name = ?", (json.dumps(state).encode(), PROJECTION_NAME))
    server, clients = start(storage, certs_dir, key)
    try:
        assert balance_of(clients, "cold-a").balance_sats == 5 * BTC
    finally:
        server.stop(grace_s=1)
