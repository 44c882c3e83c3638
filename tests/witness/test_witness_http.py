"""The witness (C2SP tlog-witness) over real HTTP, as a separate process: it cosigns append-only growth only,
persists before answering, refuses rollbacks and forks with the spec's statuses and keeps them as evidence."""

import json
import sqlite3
import subprocess
import sys

import pytest

from ledger import merkle
from services.witness import note
from services.witness.witness import STATE_FILE_NAME, format_add_checkpoint
from tests.witness.helpers import ToyLog, WitnessProcess, init_witness, post


@pytest.fixture
def log():
    made = ToyLog()
    made.append(5)
    return made


@pytest.fixture
def state(tmp_path):
    init_witness(tmp_path / "w1", "witness.test/w1")
    return tmp_path / "w1"


def cosignature_time(log: ToyLog, size: int, witness: WitnessProcess, body: str) -> int | None:
    text = note.checkpoint(log.origin, size, merkle.root_hash(log.store, size)).text()
    (line,) = note.parse_signature_lines(body)
    return note.cosignature_time_s(text, line, witness.vkey)


def test_the_witness_key_is_private_from_its_first_byte(state):
    """witness init makes the key file 0600 and the state directory 0700."""
    assert (state / "witness.key").stat().st_mode & 0o777 == 0o600
    assert state.stat().st_mode & 0o777 == 0o700


def test_append_only_growth_is_cosigned_and_the_cosignature_verifies(state, log):
    """old 0 -> 5, then 5 -> 12 with a consistency proof: both cosigned with a valid cosignature/v1."""
    with WitnessProcess(state, {log.origin: log.vkey.text()}) as witness:
        status, _, body = post(witness.url, log.request(0))
        assert status == 200 and cosignature_time(log, 5, witness, body) is not None
        log.append(7)
        status, _, body = post(witness.url, log.request(5))
        assert status == 200 and cosignature_time(log, 12, witness, body) is not None
        status, _, body = post(witness.url, log.request(12))      # the same checkpoint again: cosigned again
        assert status == 200


def test_a_stale_old_size_gets_409_with_the_size_the_witness_holds(state, log):
    """The client must start from the size the witness last cosigned; the answer names it."""
    with WitnessProcess(state, {log.origin: log.vkey.text()}) as witness:
        assert post(witness.url, log.request(0))[0] == 200
        log.append(3)
        status, content_type, body = post(witness.url, log.request(0))
        assert (status, content_type, body) == (409, "text/x.tlog.size", "5\n")
        assert post(witness.url, log.request(5))[0] == 200


def test_a_rollback_is_refused_and_kept_as_evidence(state, log):
    """After cosigning size 5, a checkpoint of size 3 (old 5 > 3) and one claiming old 3 are both refused."""
    with WitnessProcess(state, {log.origin: log.vkey.text()}) as witness:
        assert post(witness.url, log.request(0))[0] == 200
        assert post(witness.url, format_add_checkpoint(5, [], log.signed_note(3)))[0] == 400
        assert post(witness.url, log.request(0, 3))[0] == 409
    refused = sqlite3.connect(state / STATE_FILE_NAME).execute("SELECT status, request FROM refused").fetchall()
    assert [row[0] for row in refused] == [409] and b"\n3\n" in refused[0][1]


def test_a_fork_is_refused_with_422_and_the_forked_checkpoint_is_kept(state, log):
    """The same key signs another history (edited leaf 2): from size 5 to 8 its proof cannot verify, and at
    size 5 its root differs; the witness refuses both and keeps both signed checkpoints."""
    forked = ToyLog(log.origin, key=None)
    forked.signer, forked.vkey = log.signer, log.vkey
    forked.store.append(merkle.leaf_hash(b"x"))
    forked.append(4)
    with WitnessProcess(state, {log.origin: log.vkey.text()}) as witness:
        assert post(witness.url, log.request(0))[0] == 200
        assert post(witness.url, format_add_checkpoint(5, [], forked.signed_note(5)))[0] == 422
        forked.append(3)
        assert post(witness.url, forked.request(5))[0] == 422
        log.append(3)
        assert post(witness.url, log.request(5))[0] == 200             # the honest history goes on
    statuses = [row[0] for row in sqlite3.connect(state / STATE_FILE_NAME).execute("SELECT status FROM refused")]
    assert statuses == [422, 422]


def test_unknown_logs_bad_signatures_and_bad_proofs_get_the_specs_statuses(state, log):
    """404 unknown origin; 403 no valid signature by the log's key; 422 a proof with a flipped bit; 400 garbage."""
    stranger = ToyLog("other.test/log")
    impostor = ToyLog(log.origin)               # the right origin, another key
    with WitnessProcess(state, {log.origin: log.vkey.text()}) as witness:
        assert post(witness.url, stranger.request(0))[0] == 404
        assert post(witness.url, impostor.request(0))[0] == 403
        assert post(witness.url, b"hello")[0] == 400
        assert post(witness.url, log.request(0))[0] == 200
        log.append(6)
        proof = merkle.consistency_proof(log.store, 5, 11)
        for damaged in ([proof[0][:-1] + bytes([proof[0][-1] ^ 1])] + proof[1:], proof[:-1], proof + [proof[0]]):
            assert post(witness.url, format_add_checkpoint(5, damaged, log.signed_note()))[0] == 422
        assert post(witness.url, log.request(5))[0] == 200
    # nothing signed by someone else is kept: only the 422s of the valid log signature count as evidence
    statuses = [row[0] for row in sqlite3.connect(state / STATE_FILE_NAME).execute("SELECT status FROM refused")]
    assert statuses == [422, 422, 422]


def test_a_witness_killed_right_after_answering_keeps_what_it_cosigned(state, log, tmp_path):
    """It persists before it answers: killed with SIGKILL just after a 200, the restarted witness holds that
    size (409 for old 0) and goes on from it."""
    with WitnessProcess(state, {log.origin: log.vkey.text()}) as witness:
        assert post(witness.url, log.request(0))[0] == 200
        witness.process.kill()
        witness.process.wait(timeout=30)
    log.append(2)
    with WitnessProcess(state, {log.origin: log.vkey.text()}) as witness:
        assert post(witness.url, log.request(0))[:3:2] == (409, "5\n")
        assert post(witness.url, log.request(5))[0] == 200
    shown = subprocess.run([sys.executable, "-m", "services.cli.main", "witness", "show", "--state", str(state)],
                           capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(shown.stdout)["cosigned"][0]["tree_size"] == 7


def test_witness_mistakes_are_one_line_and_exit_2(state, tmp_path):
    """A bad --log, a missing state directory: one line on stderr, exit 2, nothing created."""
    def run(*args):
        return subprocess.run([sys.executable, "-m", "services.cli.main", "witness", *args],
                              capture_output=True, text=True, timeout=120)
    for args in (["serve", "--state", str(state), "--log", "nonsense"],
                 ["serve", "--state", str(tmp_path / "none"), "--log", "a=b+c+d"],
                 ["init", "--state", str(state), "--name", "w2"],
                 ["init", "--state", str(tmp_path / "new"), "--name", "bad name"]):
        done = run(*args)
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, (args, done.stderr)
    assert not (tmp_path / "new").exists() and not (tmp_path / "none").exists()


def test_concurrent_requests_never_roll_the_witness_back(state, log):
    """Twenty requests at once, each from old 0 to another size: exactly one is cosigned, the others get 409
    with that size, and the witness then holds it (the check and the update are one transaction)."""
    from concurrent.futures import ThreadPoolExecutor
    log.append(15)
    with WitnessProcess(state, {log.origin: log.vkey.text()}) as witness:
        with ThreadPoolExecutor(max_workers=20) as pool:
            answers = list(pool.map(lambda size: (size, post(witness.url, log.request(0, size))), range(1, 21)))
        won = [size for size, (status, _, _) in answers if status == 200]
        assert len(won) == 1, answers
        assert {body for _, (status, _, body) in answers if status == 409} == {f"{won[0]}\n"}
        assert post(witness.url, log.request(0))[:3:2] == (409, f"{won[0]}\n")
