"""Projections on SQLite and PostgreSQL: rebuild equals live, point-in-time equals a stopped replay,
durability settings, and canonical bytes identical across backends and restarts."""

import json
import sqlite3

import pytest

from ledger import application
from ledger.application import ReserveLedger
from ledger.state import InvariantBroken, ReserveState
from tests.contract.scenario import T0_US, drive


@pytest.fixture
def ledger(storage_env):
    app = ReserveLedger(storage_env)
    yield app
    app.close()


def test_rebuild_from_zero_equals_the_live_view_byte_for_byte(ledger, storage_env):
    """The live projection, saved and reloaded after a restart, equals a fresh replay."""
    drive(ledger)
    live = ledger.live_state_bytes()
    assert ledger.rebuild().to_bytes() == live
    ledger.persist_projection()
    reopened = ReserveLedger(storage_env)
    try:
        assert reopened.live_state_bytes() == live
        assert reopened.rebuild().to_bytes() == live
    finally:
        reopened.close()


def test_point_in_time_answers_equal_a_replay_stopped_there(ledger, monkeypatch):
    """as-of position N (through saved checkpoints) equals folding events 0..N; as-of time maps to positions."""
    monkeypatch.setattr(application, "PROJECTION_SAVE_EVERY", 5)
    monkeypatch.setattr(application, "CHECKPOINT_EVERY", 7)
    drive(ledger, rounds=2)
    events = list(ledger.iter_events(0))
    with ledger.reading():
        pass  # saves the projection and its checkpoints
    replay = ReserveState()
    for event in events:
        replay.apply(event)
        assert ledger.state_as_of(event["position"]).to_bytes() == replay.to_bytes()
    assert ledger.position_at_time(T0_US - 1) == -1
    assert ledger.position_at_time(T0_US) == 0
    assert ledger.position_at_time(T0_US + 1_000_000 + 10) == max(
        e["position"] for e in events if e["time_us"] <= T0_US + 1_000_000 + 10)


def test_canonical_bytes_are_the_same_on_every_backend_and_after_a_restart(ledger, storage_env, tmp_path):
    """The same scenario with the same clock yields identical canonical bytes on SQLite and PostgreSQL."""
    drive(ledger, rounds=1)
    ours = [data for _, data in ledger.read_events(0, 1000)]
    from services.store.config import sqlite_env
    reference = ReserveLedger(sqlite_env(tmp_path / "reference"))
    try:
        drive(reference, rounds=1)
        assert [data for _, data in reference.read_events(0, 1000)] == ours
    finally:
        reference.close()
    reopened = ReserveLedger(storage_env)
    try:
        assert [data for _, data in reopened.read_events(0, 1000)] == ours
    finally:
        reopened.close()


def test_sqlite_commits_are_durable_wal_with_full_sync(tmp_path):
    """An acknowledged command survives a power cut: WAL journal and synchronous=FULL on the ledger file."""
    from services.store.config import sqlite_env
    env = sqlite_env(tmp_path)
    app = ReserveLedger(env)
    try:
        drive(app, rounds=1)
        with app.recorder.datastore.transaction(commit=False) as c:
            c.execute("PRAGMA synchronous")
            assert c.fetchone()[0] >= 2  # FULL (2) or EXTRA (3): every commit is fsynced
        journal = sqlite3.connect(env["SQLITE_DBNAME"]).execute("PRAGMA journal_mode").fetchone()[0]
        assert journal == "wal"
    finally:
        app.close()


def test_positions_are_dense_and_every_event_has_one_merkle_leaf(ledger):
    """Leaf indices are the dense position sequence: no gaps, no duplicates, one leaf per event."""
    drive(ledger, rounds=2)
    size = ledger.store.log_size()
    leaves = ledger.store.get_nodes([(0, i) for i in range(size)])
    assert sorted(leaves) == [(0, i) for i in range(size)]
    assert [e["position"] for e in ledger.iter_events(0)] == list(range(size))


def lots_scenario(ledger, purchases: int) -> None:
    """`purchases` small purchases into cold-a (prices 60000, 60001, ...), then about half of them disposed of."""
    from ledger import commands as cmd
    from tests.contract.scenario import APPROVER, OPERATOR, run
    t = T0_US
    run(ledger, cmd.OpenAccount("open-a", "cold-a", "cold", "Vault", "label", 2, 3), OPERATOR, t)
    for n in range(purchases):
        price, fiat = f"{60000 + n}", f"{(60000 + n) / 10**4:.4f}"
        run(ledger, cmd.RecordPurchase(f"buy-{n}", "cold-a", 10_000, price, "USD", fiat, "V", f"T{n}", "2026-11-02"),
            OPERATOR, t + n + 1)
    proposed = run(ledger, cmd.ProposeTransfer("sell", "cold-a", "nominal:disposals", purchases * 5000 + 2500, "sold"),
                   OPERATOR, t + purchases + 1)
    run(ledger, cmd.ApproveTransfer("sell-ok", proposed.data["transfer_id"]), APPROVER, t + purchases + 2)


def sealing_ledger(storage_env, key_path):
    """A ledger that seals and proves saved states, every commit signing its tree head (as the server runs)."""
    from services.compose import sealing_proofs
    from services.store.signing import TreeHeadSigner, load_or_create_signing_key
    ledger = ReserveLedger(storage_env, proofs=sealing_proofs(key_path, create=True))
    signer = TreeHeadSigner(ledger.store, load_or_create_signing_key(key_path), lambda: T0_US)
    assert signer.open_log() is None
    return ledger


def test_saved_states_stay_small_and_reload_exactly_however_many_lots(storage, storage_env, tmp_path, monkeypatch):
    """With lots saved in digest-chained chunks, the saved projection holds at most a chunk of lots whatever the
    number of purchases; a restart loads it (no replay) equal to a replay, point-in-time answers through the
    checkpoints equal a stopped replay, and a chunk altered in the store makes the saved state unproven (replayed
    instead), never a different cost basis."""
    from ledger import lots
    from ledger.state import cost_basis
    from tests.e2e.test_verify_tamper import Tables
    monkeypatch.setattr(lots, "LOT_CHUNK_LOTS", 4)
    monkeypatch.setattr(application, "PROJECTION_SAVE_EVERY", 5)
    monkeypatch.setattr(application, "CHECKPOINT_EVERY", 20)
    key_path = tmp_path / "signing.key"
    ledger = sealing_ledger(storage_env, key_path)
    try:
        lots_scenario(ledger, purchases=61)
        ledger.persist_projection()
        live, basis = ledger.live_state_bytes(), cost_basis(ledger._projection)
        assert len(json.loads(live)["lots"]["tail"]) < 4 and len(basis["lots"]) == 31
        events = list(ledger.iter_events(0))
    finally:
        ledger.close()
    reopened = sealing_ledger(storage_env, key_path)
    try:
        assert reopened.live_state_bytes() == live and not reopened.unproven_rows
        assert cost_basis(reopened._projection) == basis
        replay = ReserveState()
        for event in events:
            replay.apply(event)
            assert reopened.state_as_of(event["position"]).to_bytes() == replay.to_bytes()
        assert not reopened.unproven_rows
    finally:
        reopened.close()
    tables = Tables(*storage)
    chunks = tables.nodes.replace("merkle_nodes", "lot_chunks")
    tables.run(f"UPDATE {chunks} SET chunk = ? WHERE digest = ?",
               (b'{"lots":[],"number":0,"previous":""}', json.loads(live)["lots"]["newest_chunk"]))
    tampered = sealing_ledger(storage_env, key_path)
    try:
        assert tampered.live_state_bytes() == live
        assert tampered.unproven_rows and "does not match its digest" in tampered.unproven_rows[0].reason
    finally:
        tampered.close()


def test_the_projection_decides_again_an_event_changed_after_this_process_committed_it(storage, storage_env):
    """The projection skips deciding again only events this process decided whose stored bytes are exactly the
    decided ones: an approval rewritten in the store (proposer approving their own transfer) is refused."""
    from ledger import commands as cmd
    from ledger.events import canonical_bytes
    from tests.contract.scenario import APPROVER, OPERATOR, run
    from tests.e2e.test_verify_tamper import Tables
    ledger = ReserveLedger(storage_env)
    try:
        lots_scenario(ledger, purchases=2)
        ledger.live_state_bytes()  # the projection is loaded; what follows is folded as this process's own
        proposed = run(ledger, cmd.ProposeTransfer("move", "cold-a", "nominal:disposals", 10), OPERATOR, T0_US + 10)
        approved = run(ledger, cmd.ApproveTransfer("move-ok", proposed.data["transfer_id"]), APPROVER, T0_US + 11)
        tables = Tables(*storage)
        event = json.loads(tables.state(approved.position + 1))
        event["actor"] = "alice"
        tables.set_state(approved.position + 1, canonical_bytes(event))
        with pytest.raises(InvariantBroken, match="APPROVER_MUST_DIFFER_FROM_PROPOSER"):
            ledger.live_state_bytes()
    finally:
        ledger.close()


def test_a_query_without_as_of_reads_the_live_projection_not_a_copy(ledger):
    """Queries of the present read the maintained projection itself (no copy of the whole state per query);
    an as-of query gets its own fold, which leaves the live projection as it was."""
    drive(ledger, rounds=1)
    live = ledger.live_state_bytes()
    with ledger.querying(None) as state:
        assert state is ledger._projection
    with ledger.querying(3) as state:
        assert state is not ledger._projection and state.position == 3
        state.accounts["cold-a"].credits_sats += 1
    assert ledger.live_state_bytes() == live
