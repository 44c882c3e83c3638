"""Attacks by an insider who holds the database and the tree-head key (issue 13, item 7), against real witness
processes over HTTP and real servers: the rewritten history is refused by every witness (kept as evidence),
an audit that requires the witnesses fails on its bundle, and two witnesses shown two histories expose the fork.
"""

import json
import subprocess
import sys
import time
import urllib.request

from reserve_ledger.v1 import audit_pb2 as apb
from services.witness import note
from tests.e2e.conftest import Clients
from tests.e2e.helpers import open_account
from tests.witness.helpers import ToyLog, WitnessProcess, init_witness, post
from tests.witness.test_gathering import audit_stub, log_vkey_of, serve, wait_for_cosigners

ORIGIN = "reserve.test/ledger"


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli.main", *args], capture_output=True, text=True,
                          timeout=600)


def record(storage, certs_dir, tmp_path, witnesses, accounts: list[str], wait_cosigners: int):
    """Serve the data dir with the witnesses, open the accounts, wait for the cosigners, stop."""
    server = serve(storage, certs_dir, tmp_path, witnesses, wait_cosigners)
    try:
        clients = Clients(f"127.0.0.1:{server.port}", certs_dir)
        for account in accounts:
            open_account(clients.alice, account)
        stub = audit_stub(clients.address, certs_dir, "dave")
        if wait_cosigners:
            return wait_for_cosigners(stub, len(accounts), wait_cosigners)
        time.sleep(5)  # the feeds try (and are refused) several times
        return stub.GetCheckpoint(apb.GetCheckpointRequest(), timeout=30)
    finally:
        server.stop(grace_s=1)


def audit(bundle_dir, witness_args: list[str], report=None) -> subprocess.CompletedProcess:
    args = ["audit", str(bundle_dir)] + [a for w in witness_args for a in ("--witness", w)]
    return cli(*args, *(["--report", str(report)] if report else []))


def test_a_history_rewritten_with_the_logs_key_is_refused_by_every_witness_and_fails_the_audit(certs_dir, tmp_path):
    """The honest log (4 events) is cosigned by both witnesses and its bundle passes an audit requiring both.
    The insider then rebuilds the database with the same tree-head key and another history of 5 events (the
    whole log rewritten and re-signed, as someone holding the data dir can): both witnesses refuse it (409 for
    the stale size, then 422 for the consistency proof from 4) and keep the signed checkpoints as evidence;
    the rewritten log's bundle fails the audit for lack of cosignatures, while its signatures all verify."""
    honest, rewritten = tmp_path / "honest", tmp_path / "rewritten"
    honest.mkdir(), rewritten.mkdir()
    vkey = log_vkey_of(tmp_path, ORIGIN)
    keys = [init_witness(tmp_path / f"w{i}", f"witness.test/w{i}") for i in (1, 2)]
    witness_args = [f"witness.test/w{i}={k}" for i, k in zip((1, 2), keys)]
    with WitnessProcess(tmp_path / "w1", {ORIGIN: vkey}) as w1, WitnessProcess(tmp_path / "w2", {ORIGIN: vkey}) as w2:
        endpoints = [f"{a}@{w.url}" for a, w in zip(witness_args, (w1, w2))]
        record((str(honest / "data"), None), certs_dir, tmp_path, endpoints,
               ["cold-a", "cold-b", "cold-c", "cold-d"], 2)
        answer = record((str(rewritten / "data"), None), certs_dir, tmp_path, endpoints,
                        ["cold-a", "cold-x", "cold-c", "cold-d", "cold-e"], 0)
    assert not answer.cosignatures
    for i in (1, 2):
        shown = json.loads(cli("witness", "show", "--state", str(tmp_path / f"w{i}")).stdout)
        assert shown["cosigned"][0]["tree_size"] == 4
        statuses = {row["status"] for row in shown["refused"]}
        assert statuses == {409, 422}, statuses
        assert all(f"\n{ORIGIN}\n5\n" in "\n" + row["request"] for row in shown["refused"] if row["status"] == 422)
    for name, expected in (("honest", 0), ("rewritten", 1)):
        bundle_dir = tmp_path / f"bundle-{name}"
        exported = cli("export", "--data-dir", str(tmp_path / name / "data"), "--signing-key",
                       str(tmp_path / "signing.key"), "--out", str(bundle_dir))
        assert exported.returncode == 0, exported.stderr
        assert cli("audit", str(bundle_dir)).returncode == 0              # the log's own signatures all verify
        result = audit(bundle_dir, witness_args, tmp_path / f"{name}.html")
        assert result.returncode == expected, result.stdout + result.stderr
    assert "FAIL witnesses tree size 5" in result.stdout
    html = (tmp_path / "honest.html").read_text()
    assert "witness.test/w1 at" in html and "witness.test/w2 at" in html


def test_two_witnesses_shown_two_histories_of_one_size_expose_the_fork(tmp_path):
    """A split view: the log shows history A to witness 1 and history B (same size, same key) to witness 2.
    Each cosigns what it saw, so the two cosigned checkpoints they publish are, together, a proof signed by the
    log's own key that it forked; each then refuses the other history (422), so no checkpoint reaches a quorum
    of two."""
    history_a = ToyLog(ORIGIN)
    history_b = ToyLog(ORIGIN)
    history_b.signer, history_b.vkey = history_a.signer, history_a.vkey
    history_a.append(6, "a")
    history_b.append(6, "b")
    keys = [init_witness(tmp_path / f"w{i}", f"witness.test/w{i}") for i in (1, 2)]
    with WitnessProcess(tmp_path / "w1", {ORIGIN: history_a.vkey.text()}) as w1, \
            WitnessProcess(tmp_path / "w2", {ORIGIN: history_a.vkey.text()}) as w2:
        assert post(w1.url, history_a.request(0))[0] == 200
        assert post(w2.url, history_b.request(0))[0] == 200
        published = [_published(w) for w in (w1, w2)]
        assert post(w1.url, format_same_size(history_b))[0] == 422
        assert post(w2.url, format_same_size(history_a))[0] == 422
    opened = [note.open_note(text, history_a.vkey) for text in published]
    checkpoints = [note.parse_checkpoint(n.text) for n in opened]
    assert checkpoints[0].tree_size == checkpoints[1].tree_size == 6
    assert checkpoints[0].root_hash != checkpoints[1].root_hash           # the fork, signed by the log's key
    for signed, key in zip(opened, keys):
        (line,) = note.matching(signed, note.parse_vkey(key))
        assert note.cosignature_time_s(signed.text, line, note.parse_vkey(key)) is not None


def _published(witness: WitnessProcess) -> bytes:
    """GET <sha256(origin)>/checkpoint: the witness's last cosigned checkpoint, as monitors read it."""
    import hashlib
    with urllib.request.urlopen(f"{witness.url}/{hashlib.sha256(ORIGIN.encode()).hexdigest()}/checkpoint",
                                timeout=60) as reply:
        return reply.read()


def format_same_size(log: ToyLog) -> bytes:
    from services.witness.witness import format_add_checkpoint
    return format_add_checkpoint(log.store.size, [], log.signed_note())
