"""Keys in a PKCS#11 token (SoftHSM2): generated inside it by `keys init`, never exportable, and used by the
service for tree heads, saved-state seals and anchor transactions the embedded chain (libbitcoinkernel) accepts."""

import re
import subprocess
import sys

import pkcs11
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from pkcs11 import Attribute, KeyType, ObjectClass

from ledger.anchoring import encode_payload, parse_transaction
from ledger.application import ReserveLedger
from ledger.tree_heads import verify_tree_head
from services.bitcoin.anchor_tx import build_anchor_tx, verify_p2wpkh_input
from services.bitcoin.regtest.chain import RegtestChain
from services.compose import ServerConfig, build_server
from services.errors import EXIT_USAGE
from services.store.config import sqlite_env
from services.keys.pkcs11_keys import SECP256K1_ORDER as N
from services.keys.pkcs11_keys import TokenEd25519Signer, generate_key, low_s_der, open_session
from services.keys.signers import open_token_anchor_key, token_uri
from tests.e2e.conftest import Clients
from tests.e2e.helpers import open_account, purchase
from tests.e2e.processes import free_port
from tests.e2e.test_cli_mistakes import assert_one_line

ROOT = bytes(range(32))


def cli(token, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli.main", *map(str, args)], capture_output=True,
                          text=True, timeout=180, env=token.env)


def public_key_printed(result: subprocess.CompletedProcess) -> bytes:
    assert result.returncode == 0, result.stderr
    return bytes.fromhex(re.search(r"public key: ([0-9a-f]+)", result.stdout).group(1))


def test_keys_init_generates_a_tree_head_key_inside_the_token_that_cannot_be_exported(token, label):
    """The private key is sensitive, never extractable: reading its value and wrapping it out are both refused."""
    result = cli(token, "keys", "init", "--pkcs11", token.uri(label), "--pin-file", token.pin_file)
    public_key = public_key_printed(result)
    assert "cannot be exported" in result.stdout and len(public_key) == 32
    with open_session(token_uri(token.uri(label), str(token.pin_file)), rw=True) as session:
        private = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=label)
        assert private.key_type == KeyType.EC_EDWARDS
        assert (private[Attribute.SENSITIVE], private[Attribute.EXTRACTABLE], private[Attribute.NEVER_EXTRACTABLE]) \
            == (True, False, True)
        with pytest.raises(pkcs11.AttributeSensitive):
            private[Attribute.VALUE]
        wrapping = session.generate_key(KeyType.AES, 256, template={Attribute.WRAP: True, Attribute.TOKEN: False})
        with pytest.raises(pkcs11.KeyUnextractable):
            wrapping.wrap_key(private)


def test_keys_init_refuses_to_replace_a_key_and_a_wrong_pin_is_one_line(token, label, tmp_path):
    """A label already in the token is never overwritten; a wrong PIN or a PIN in the URI is one line, exit 2."""
    assert cli(token, "keys", "init", "--pkcs11", token.uri(label, with_pin=True)).returncode == 0
    again = cli(token, "keys", "init", "--pkcs11", token.uri(label, with_pin=True))
    assert_one_line(again, EXIT_USAGE, "already holds a key", label)
    wrong = tmp_path / "wrong.pin"
    wrong.write_text("0000\n")
    wrong.chmod(0o600)
    assert_one_line(cli(token, "keys", "init", "--pkcs11", token.uri("other"), "--pin-file", wrong),
                    EXIT_USAGE, "refuses the PIN")
    assert_one_line(cli(token, "keys", "init", "--pkcs11", token.uri("other") + ";pin-value=1234"),
                    EXIT_USAGE, "process list")


def test_a_token_signer_signs_what_the_public_key_verifies(token, label):
    """sign(message) through CKM_EDDSA verifies with the token's public key (the interface the checkpoint and
    witness code use: sign(message) -> bytes and public_key_bytes)."""
    uri = token_uri(token.uri(label), str(token.pin_file))
    public_key = generate_key(uri, "tree-head")
    signer = TokenEd25519Signer(uri)
    try:
        assert signer.public_key_bytes == public_key
        Ed25519PublicKey.from_public_bytes(public_key).verify(signer.sign(b"a message"), b"a message")
    finally:
        signer.close()


def test_tree_heads_signed_through_the_token_verify_and_no_key_file_is_written(token, label, tmp_path, certs_dir):
    """A real `serve` process signs every commit's head and seal through SoftHSM2; `verify` with the token's
    public key checks them; the data dir holds no tree-head key."""
    public_key = public_key_printed(cli(token, "keys", "init", "--pkcs11", token.uri(label), "--pin-file",
                                        token.pin_file))
    data_dir = tmp_path / "data"
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "services.cli.main", "serve", "--init", "--data-dir", data_dir,
                               "--listen", f"127.0.0.1:{port}", "--metrics-listen", "off", "--certs", certs_dir,
                               "--signing-key", token.uri(label), "--pin-file", token.pin_file],
                              env=token.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "serving on port" in server.stdout.readline(), server.stderr.read() if server.poll() else ""
        clients = Clients(f"127.0.0.1:{port}", certs_dir)
        open_account(clients.alice, "cold-a")
        for n in range(3):
            purchase(clients.alice, "cold-a", 1, f"buy-{n}")
    finally:
        server.terminate()
        server.wait(timeout=60)
    assert not (data_dir / "tree-head-signing.key").exists()
    verified = cli(token, "verify", "--data-dir", data_dir, "--public-key", public_key.hex())
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "OK: 4 events" in verified.stdout
    ledger = ReserveLedger(sqlite_env(data_dir, create=False))
    try:
        head = ledger.store.load_tree_head()
        assert head.tree_size == 4 and verify_tree_head(public_key, head)
    finally:
        ledger.close()


@pytest.fixture
def chain(tmp_path):
    with RegtestChain.create(tmp_path / "chain") as chain:
        yield chain


def test_anchor_transactions_signed_through_the_token_are_mined_on_the_embedded_chain(token, label, chain):
    """Eight chained anchors, each signed by CKM_ECDSA in the token (raw r||s made low-S minimal DER), each
    checked by libbitcoinkernel's script interpreter and mined into a block the chain validates."""
    uri = token.uri(label, with_pin=True)
    generate_key(token_uri(uri), "anchor")
    key = open_token_anchor_key(uri, "regtest")
    chain.send(key.script_pubkey, 100_000)
    chain.mine(1)
    coin = chain.utxos(key.script_pubkey)[0]
    for size in range(1, 9):
        tx = build_anchor_tx(coin, key, encode_payload(size, ROOT), 1, 20_000, chain.tip_height())
        assert verify_p2wpkh_input(tx.raw, key.script_pubkey, coin.value_sats)
        der, sighash = parse_transaction(tx.raw).witnesses[0][0][:-1], parse_transaction(tx.raw).witnesses[0][0][-1]
        r, s = decode_dss_signature(der)
        assert sighash == 1 and s <= N // 2 and encode_dss_signature(r, s) == der  # low S, minimal DER
        chain.broadcast(tx.raw)
        chain.mine(1)
        coin = next(c for c in chain.utxos(key.script_pubkey) if c.txid == tx.txid)
    assert coin.value_sats < 100_000


def test_the_anchor_command_signs_through_the_token(token, label, tmp_path, chain, certs_dir):
    """`reserve-ledger anchor --anchor-key pkcs11:...` anchors the log's head with the token's key."""
    data_dir = tmp_path / "data"
    server = build_server(ServerConfig(create_store=True, metrics_listen=None, listen="127.0.0.1:0",
                                       data_dir=str(data_dir), certs_dir=str(certs_dir))).start()
    try:
        open_account(Clients(f"127.0.0.1:{server.port}", certs_dir).alice, "cold-a")
    finally:
        server.stop(grace_s=1)
    uri = token.uri(label, with_pin=True)
    address = re.search(r"address \(regtest\): (\S+)", cli(token, "keys", "init", "--pkcs11", uri, "--kind",
                                                           "anchor").stdout).group(1)
    key = open_token_anchor_key(uri, "regtest")
    assert key.address == address
    chain.send(key.script_pubkey, 50_000)
    chain.mine(1)
    result = cli(token, "anchor", "--data-dir", data_dir, "--chain", f"regtest:{chain.directory}",
                 "--anchor-key", uri)
    assert result.returncode == 0, result.stderr
    assert "broadcast anchor" in result.stdout
    chain.mine(1)
    assert any(c.value_sats < 50_000 for c in chain.utxos(key.script_pubkey))


def test_token_ecdsa_signatures_are_made_low_s_minimal_der():
    """A high s becomes n - s; leading zero bytes are dropped and a top bit set gets one 0x00 (BIP 62/66)."""
    high_s = N - 5
    der = low_s_der((0x80).to_bytes(32, "big") + high_s.to_bytes(32, "big"))
    assert decode_dss_signature(der) == (0x80, 5)
    assert der == bytes.fromhex("3007" "020200" "80" "020105")
    top_bit = (1 << 255) + 7
    der = low_s_der(top_bit.to_bytes(32, "big") + (1).to_bytes(32, "big"))
    assert der[2:5] == b"\x02\x21\x00" and decode_dss_signature(der) == (top_bit, 1)
    with pytest.raises(ValueError):
        low_s_der(b"\x01" * 63)


def test_serve_with_a_wrong_pin_or_an_unknown_key_is_one_line_and_creates_nothing(token, label, tmp_path, certs_dir):
    """The token key is opened before any storage: a mistake there leaves no data dir behind."""
    wrong = tmp_path / "wrong.pin"
    wrong.write_text("0000\n")
    wrong.chmod(0o600)
    generate_key(token_uri(token.uri(label), str(token.pin_file)), "tree-head")
    common = ("serve", "--init", "--data-dir", tmp_path / "d", "--listen", "127.0.0.1:0", "--metrics-listen", "off",
              "--certs", certs_dir)
    assert_one_line(cli(token, *common, "--signing-key", token.uri(label), "--pin-file", wrong),
                    EXIT_USAGE, "refuses the PIN")
    assert_one_line(cli(token, *common, "--signing-key", token.uri("no-such-key"), "--pin-file", token.pin_file),
                    EXIT_USAGE, "no private key labelled", "keys init")
    assert_one_line(cli(token, *common, "--signing-key", token.uri(label) + ";pin-value=1"), EXIT_USAGE, "process list")
    assert not (tmp_path / "d").exists()
