"""`reserve-ledger verify` checks the lot chunks saved states name (ledger/lots.py): a chunk row deleted or
altered with raw SQL on the real store is reported on one line naming the chunk's digest and the saved states'
position, exit 1; untouched chunks pass; the restarted server replaces the saved states by a replay, which
stores the chunk again."""

import json

import pytest

from ledger import lots
from ledger.application import PROJECTION_NAME
from tests.e2e.test_saved_state_tamper import cli, record_some, saved_table, start, storage_args
from tests.e2e.test_verify_tamper import Tables

CHUNK_LOTS = 4
PURCHASES = 10   # lots 0..9: full chunks of lots 0..3 and 4..7, a tail of two; no lot consumed


def saved_projection(tables: Tables) -> tuple[int, dict]:
    position, state = tables.run(f"SELECT position, state FROM {saved_table(tables, 'projections')} WHERE name = ?",
                                 (PROJECTION_NAME,))[0]
    return position, json.loads(bytes(state))


def delete_newest(tables: Tables, chunks: str, newest: str, older: str) -> str:
    tables.run(f"DELETE FROM {chunks} WHERE digest = ?", (newest,))
    return f"lot chunk {newest} (lots from 4) is not stored"


def alter_older(tables: Tables, chunks: str, newest: str, older: str) -> str:
    chunk = bytes(tables.run(f"SELECT chunk FROM {chunks} WHERE digest = ?", (older,))[0][0])
    tables.run(f"UPDATE {chunks} SET chunk = ? WHERE digest = ?", (chunk.replace(b"60000", b"60001", 1), older))
    return f"lot chunk {older} (lots from 0) does not match its digest"


@pytest.mark.parametrize("tamper", [delete_newest, alter_older], ids=lambda f: f.__name__)
def test_verify_names_a_deleted_or_altered_lot_chunk_and_the_saved_states_that_need_it(
        storage, certs_dir, tmp_path, monkeypatch, capsys, tamper):
    """verify passes on the untouched store; after one chunk row is deleted or altered it fails with exactly one
    line for it, naming the chunk's full digest and the position of the saved states (projection, checkpoint)
    that need it, although their own bytes and seals are intact; a restart (which replays and saves the
    replay's chunks) repairs the chunk, and verify passes again."""
    monkeypatch.setattr(lots, "LOT_CHUNK_LOTS", CHUNK_LOTS)
    key = tmp_path / "signing.key"
    record_some(storage, certs_dir, key, purchases=PURCHASES)
    code, out = cli(capsys, "verify", *storage_args(storage), "--signing-key", str(key))
    assert code == 0, out

    tables = Tables(*storage)
    position, state = saved_projection(tables)
    assert state["lots"]["created"] == PURCHASES and state["lots"]["head"] == 0
    chunks = saved_table(tables, "lot_chunks")
    newest = state["lots"]["newest_chunk"]
    older = json.loads(bytes(tables.run(f"SELECT chunk FROM {chunks} WHERE digest = ?", (newest,))[0][0]))["previous"]
    expected = tamper(tables, chunks, newest, older)

    code, out = cli(capsys, "verify", *storage_args(storage), "--signing-key", str(key))
    failures = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert code == 1, out
    assert len(failures) == 1 and expected in failures[0], out
    assert f"projection {PROJECTION_NAME!r} at position {position}" in failures[0], out

    server, _ = start(storage, certs_dir, key)
    server.stop(grace_s=1)
    code, out = cli(capsys, "verify", *storage_args(storage), "--signing-key", str(key))
    assert code == 0, out
