"""Rotating the tree-head key (`reserve-ledger keys rotate`): a SigningKeyRotated event signed by the old and
the new key; heads up to it verify with the old key, after it with the new; `verify` and `audit` follow the key
history from the first key, which the auditor pins (`audit --log-key`)."""

import subprocess
import sys

import pytest

from ledger import commands as cmd
from ledger.application import ReserveLedger
from ledger.errors import RequestInvalid
from ledger.key_history import KeyHistory, rotation_message
from ledger.tree_heads import raw_public_key, verify_tree_head
from services.compose import ServerConfig, build_server
from services.keys.signers import FileEd25519Signer
from services.store.config import sqlite_env
from services.store.signing import load_or_create_signing_key
from tests.conftest import POSTGRES_URL, _drop_schema, _postgres_schema
from tests.e2e.conftest import Clients
from tests.e2e.helpers import open_account, purchase


def cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli.main", *map(str, args)], capture_output=True,
                          text=True, timeout=180, env=env)


def serve_and_write(data_dir, key, certs_dir, account_id: str, purchases: int, database_url=None, **config) -> None:
    server = build_server(ServerConfig(create_store=True, metrics_listen=None, listen="127.0.0.1:0",
                                       data_dir=None if database_url else str(data_dir), database_url=database_url,
                                       certs_dir=str(certs_dir), signing_key_path=str(key), **config)).start()
    try:
        clients = Clients(f"127.0.0.1:{server.port}", certs_dir)
        open_account(clients.alice, account_id)
        for n in range(purchases):
            purchase(clients.alice, account_id, 1, f"buy-{account_id}-{n}")
    finally:
        server.stop(grace_s=1)


def public_hex(key_path) -> str:
    return raw_public_key(load_or_create_signing_key(key_path).public_key()).hex()


@pytest.fixture
def rotated(tmp_path, certs_dir):
    """A log of 3 events under key A, rotated to key B (event 3), then 3 more events under B."""
    data_dir, old, new = tmp_path / "data", tmp_path / "a.key", tmp_path / "b.key"
    serve_and_write(data_dir, old, certs_dir, "cold-a", 2)
    result = cli("keys", "rotate", "--data-dir", data_dir, "--signing-key", old, "--new-signing-key", new)
    assert result.returncode == 0, result.stderr
    assert "SigningKeyRotated at position 3" in result.stdout
    serve_and_write(data_dir, new, certs_dir, "cold-b", 2)
    return data_dir, old, new


def test_heads_before_the_rotation_verify_with_the_old_key_and_after_it_with_the_new(rotated):
    """The head that includes the rotation (size 4) is the new key's; every head up to size 3, the old key's."""
    data_dir, old, new = rotated
    ledger = ReserveLedger(sqlite_env(data_dir, create=False))
    try:
        heads = ledger.store.list_tree_heads()
        event = next(e for e in ledger.iter_events() if e["type"] == "SigningKeyRotated")
    finally:
        ledger.close()
    assert event["position"] == 3 and event["data"]["public_key"] == public_hex(new)
    old_raw, new_raw = bytes.fromhex(public_hex(old)), bytes.fromhex(public_hex(new))
    assert {h.tree_size for h in heads} == {1, 3, 7}  # the old key's last head is kept
    for head in heads:
        expected, other = (old_raw, new_raw) if head.tree_size <= 3 else (new_raw, old_raw)
        assert verify_tree_head(expected, head) and not verify_tree_head(other, head), head.tree_size


@pytest.mark.postgres
def test_a_postgresql_ledger_is_rotated_like_a_sqlite_one(tmp_path, certs_dir):
    """`keys rotate --database`: the same event and key history on the shared store of several replicas."""
    schema = _postgres_schema()
    url, old, new = f"{POSTGRES_URL}?schema={schema}", tmp_path / "a.key", tmp_path / "b.key"
    try:
        serve_and_write(None, old, certs_dir, "cold-a", 1, database_url=url)
        rotated = cli("keys", "rotate", "--database", url, "--signing-key", old, "--new-signing-key", new)
        assert rotated.returncode == 0, rotated.stderr
        serve_and_write(None, new, certs_dir, "cold-b", 1, database_url=url)
        verified = cli("verify", "--database", url, "--public-key", public_hex(old))
        assert verified.returncode == 0 and "OK: 5 events" in verified.stdout, verified.stdout + verified.stderr
    finally:
        _drop_schema(schema)


def test_verify_follows_the_key_history_from_the_first_key_or_from_the_key_in_force(rotated):
    """Given the first key (what an auditor pins) or the current key file (what the operator holds), every head,
    seal and the rotation itself check out."""
    data_dir, old, new = rotated
    for args in (("--public-key", public_hex(old)), ("--signing-key", new)):
        result = cli("verify", "--data-dir", data_dir, *args)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "OK: 7 events" in result.stdout and "rotated 1 time(s)" in result.stdout


def test_an_export_carries_the_first_key_and_audit_pins_it(rotated, tmp_path):
    """The bundle's public key is the log's first key even when exported with the new key; `audit --log-key`
    with the first key passes, with any other key fails naming it."""
    data_dir, old, new = rotated
    export = cli("export", "--data-dir", data_dir, "--signing-key", new, "--out", tmp_path / "bundle")
    assert export.returncode == 0, export.stderr
    assert (tmp_path / "bundle" / "public_key.hex").read_text().strip() == public_hex(old)
    passed = cli("audit", tmp_path / "bundle", "--log-key", public_hex(old), "--report", tmp_path / "r.html")
    assert passed.returncode == 0, passed.stdout
    assert f"first tree-head key {public_hex(old)} with 1 rotation(s)" in passed.stdout
    html = (tmp_path / "r.html").read_text()
    assert "through 1 key rotation(s); at position 3 to" in html and public_hex(new) in html
    refused = cli("audit", tmp_path / "bundle", "--log-key", public_hex(new))
    assert refused.returncode == 1 and "not the pinned" in refused.stdout


def test_a_service_started_with_the_old_key_after_a_rotation_raises_the_integrity_alarm(rotated, certs_dir):
    """The latest head is the new key's: the old key cannot go on signing as if nothing happened."""
    data_dir, old, _ = rotated
    server = build_server(ServerConfig(metrics_listen=None, listen="127.0.0.1:0", data_dir=str(data_dir),
                                       certs_dir=str(certs_dir), signing_key_path=str(old)))
    try:
        alarm = server.signer.open_log()
        assert alarm is not None and "does not verify under this service's key" in str(alarm)
    finally:
        server.ledger.close()


def _keys(tmp_path, *names):
    return [FileEd25519Signer(load_or_create_signing_key(tmp_path / f"{name}.key")) for name in names]


def _rotation(old, new, signer_of_old=None, signer_of_new=None) -> dict:
    message = rotation_message(old.public_key_bytes, new.public_key_bytes)
    return {"type": "SigningKeyRotated", "position": 5, "data": {
        "previous_public_key": old.public_key_bytes.hex(), "public_key": new.public_key_bytes.hex(),
        "previous_key_signature": (signer_of_old or old).sign(message).hex(),
        "new_key_signature": (signer_of_new or new).sign(message).hex()}}


def test_a_rotation_the_old_key_did_not_sign_leaves_later_heads_without_a_key(tmp_path):
    """An insider holding the database but not the key in force cannot hand the log over to a key of theirs:
    the command is refused, and a forged event written behind the back gives later heads no key at all."""
    first, forger = _keys(tmp_path, "first", "forger")
    forged = _rotation(first, forger, signer_of_old=forger)
    with pytest.raises(RequestInvalid) as refused:
        cmd.RotateSigningKey("r-1", **forged["data"]).validate()
    assert "ROTATION_SIGNATURE_INVALID" in str(refused.value.violations)
    history = KeyHistory()
    history.observe(forged)
    assert history.key_at(5, first.public_key_bytes) == first.public_key_bytes  # heads up to the event
    assert history.key_at(6, first.public_key_bytes) is None                    # and none after it
    assert history.problems(first.public_key_bytes)[0][0] == 5


def test_a_rotation_from_another_key_than_the_one_in_force_is_a_finding(tmp_path):
    """A correctly signed rotation that starts from a key the log never had breaks the history at its position."""
    first, other, new = _keys(tmp_path, "first", "other", "new")
    history = KeyHistory()
    history.observe(_rotation(other, new))
    assert history.key_at(6, first.public_key_bytes) is None
    assert "does not start from the key in force" in history.problems(first.public_key_bytes)[0][1]
    assert history.key_at(6, other.public_key_bytes) == new.public_key_bytes


def test_a_rotation_to_the_same_key_is_refused(tmp_path):
    (key,) = _keys(tmp_path, "only")
    with pytest.raises(RequestInvalid) as refused:
        cmd.RotateSigningKey("r-1", **_rotation(key, key)["data"]).validate()
    assert "KEY_NOT_NEW" in str(refused.value.violations)


def test_a_file_key_is_rotated_into_a_token_key(tmp_path, certs_dir, token, label):
    """The usual move into an HSM: `keys init` makes the new key in the token, `keys rotate` hands over to it,
    the service then signs through the token, and `verify` from the first (file) key passes."""
    data_dir, old = tmp_path / "data", tmp_path / "a.key"
    serve_and_write(data_dir, old, certs_dir, "cold-a", 1)
    made = cli("keys", "init", "--pkcs11", token.uri(label), "--pin-file", token.pin_file, env=token.env)
    assert made.returncode == 0, made.stderr
    rotated = cli("keys", "rotate", "--data-dir", data_dir, "--signing-key", old, "--new-signing-key",
                  token.uri(label), "--pin-file", token.pin_file, env=token.env)
    assert rotated.returncode == 0, rotated.stderr
    serve_and_write(data_dir, token.uri(label), certs_dir, "cold-b", 1, pkcs11_pin_file=str(token.pin_file))
    verified = cli("verify", "--data-dir", data_dir, "--public-key", public_hex(old))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "OK: 5 events" in verified.stdout
