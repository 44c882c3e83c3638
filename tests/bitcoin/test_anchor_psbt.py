"""The PSBT flow for an external anchor signer and the anchor wallet's rotation, run as real processes on the
embedded chain (and through the Esplora and Core clients over real HTTP where the backend decides).

The external signer is embit (pure Python, independent of the code that builds the PSBT): it parses the PSBT,
signs it with a plain key or with an HD root it finds through the key origin, and the result must be accepted by
libbitcoinkernel on the embedded chain. Every refusal must be one line with its exit code (services/errors.py).
"""

import json
import secrets
import sqlite3
import subprocess
import sys

import pytest
from embit import bip32, ec
from embit.psbt import PSBT as EmbitPsbt

from ledger.anchoring import Outpoint, Utxo, encode_payload, parse_transaction
from services.bitcoin.anchor_tx import AnchorKey, build_anchor_psbt, build_anchor_tx, p2wpkh_script_pubkey
from services.bitcoin.regtest.chain import RegtestChain
from services.bitcoin.regtest.node import RegtestNode
from services.compose import ServerConfig, build_server
from services.errors import EXIT_CHECK_FAILED, EXIT_USAGE
from services.store.config import SQLITE_FILE_NAME
from tests.bitcoin.helpers import ROOT
from tests.e2e.conftest import Clients
from tests.e2e.helpers import open_account, purchase

FUNDING_SATS = 50_000


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli.main", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def _refused(result: subprocess.CompletedProcess, exit_code: int, *words: str) -> str:
    """The command failed with this exit code and exactly one line on stderr naming every word."""
    assert result.returncode == exit_code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


class Ledger:
    """A SQLite data dir; events are added by a real server started for the purpose and stopped again."""

    def __init__(self, data_dir, certs_dir):
        self.data_dir, self.certs_dir, self.events = data_dir, certs_dir, 0

    def add_events(self, count: int) -> None:
        server = build_server(ServerConfig(create_store=True, metrics_listen=None, listen="127.0.0.1:0",
                                           data_dir=str(self.data_dir), certs_dir=str(self.certs_dir))).start()
        try:
            clients = Clients(f"127.0.0.1:{server.port}", self.certs_dir)
            if self.events == 0:
                open_account(clients.alice, "cold-a")
                self.events += 1
            for _ in range(count):
                self.events += 1
                purchase(clients.alice, "cold-a", 1, f"buy-{self.events}")
        finally:
            server.stop(grace_s=1)

    def storage(self) -> list[str]:
        return ["--data-dir", str(self.data_dir)]


class Signer:
    """An external anchor signer: its key lives here, the ledger is given only the public key."""

    def __init__(self, chain, fund: bool = True):
        self.secret = secrets.token_bytes(32)
        self.anchor_key = AnchorKey(self.secret, "regtest")   # only to build a conflicting spend in a test
        self.embit_key = ec.PrivateKey(self.secret)
        self.public_key = self.anchor_key.public_key.hex()
        if fund:
            chain.send(self.anchor_key.script_pubkey, FUNDING_SATS)
            chain.mine(1)

    def sign(self, unsigned_path, signed_path, binary: bool = False, key=None) -> int:
        psbt = EmbitPsbt.from_string(unsigned_path.read_text().strip())
        count = psbt.sign_with(key or self.embit_key)
        if binary:
            signed_path.write_bytes(psbt.serialize())
        else:
            signed_path.write_text(psbt.to_string())
        return count


@pytest.fixture
def chain(tmp_path):
    with RegtestChain.create(tmp_path / "chain") as chain:
        yield chain


@pytest.fixture
def ledger(tmp_path, certs_dir):
    ledger = Ledger(tmp_path / "data", certs_dir)
    ledger.add_events(1)
    return ledger


def _psbt(ledger, spec, signer_public_key, out, *extra) -> subprocess.CompletedProcess:
    return _cli("anchor", "psbt", *ledger.storage(), "--chain", spec, "--public-key", signer_public_key, "--out",
                out, *extra)


def _submit(ledger, spec, signed, request) -> subprocess.CompletedProcess:
    return _cli("anchor", "submit", *ledger.storage(), "--chain", spec, "--signed", signed, "--request", request)


def _txid_of(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout.split()[-1]


def _status(ledger) -> str:
    result = _cli("anchor", "status", *ledger.storage())
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_stale_request_is_refused_and_cannot_replace_the_newer_anchor(ledger, chain, tmp_path):
    """Request A, more events, request B: B is signed and broadcast; A, signed too, is refused before and after
    (it would replace B in the mempool), and the next request is issued as soon as B is mined."""
    spec, signer = f"regtest:{chain.directory}", Signer(chain)
    assert _psbt(ledger, spec, signer.public_key, tmp_path / "a.psbt").returncode == 0
    ledger.add_events(1)
    assert _psbt(ledger, spec, signer.public_key, tmp_path / "b.psbt").returncode == 0
    assert signer.sign(tmp_path / "a.psbt", tmp_path / "a.signed") == 1
    assert signer.sign(tmp_path / "b.psbt", tmp_path / "b.signed") == 1

    _refused(_submit(ledger, spec, tmp_path / "a.signed", tmp_path / "a.psbt.request.json"), EXIT_CHECK_FAILED,
             "stale request", "outstanding request is for tree size 3")
    txid = _txid_of(_submit(ledger, spec, tmp_path / "b.signed", tmp_path / "b.psbt.request.json"))
    _refused(_submit(ledger, spec, tmp_path / "a.signed", tmp_path / "a.psbt.request.json"), EXIT_CHECK_FAILED,
             "no anchor request is outstanding")
    assert chain.mempool_txids() == [txid]
    assert "outstanding PSBT request: none" in _status(ledger)

    chain.mine(1)
    ledger.add_events(1)
    again = _psbt(ledger, spec, signer.public_key, tmp_path / "c.psbt")
    assert again.returncode == 0 and "tree size 4" in again.stdout, again.stdout


def test_the_head_a_request_names_stays_signed_while_new_events_arrive(ledger, chain, tmp_path):
    """Superseded heads are pruned (FORMATS.md §3), but not the one the outstanding request anchors: events
    recorded while the signer signs do not make the request unanswerable."""
    spec, signer = f"regtest:{chain.directory}", Signer(chain)
    ledger.add_events(1)
    assert _psbt(ledger, spec, signer.public_key, tmp_path / "anchor.psbt").returncode == 0
    ledger.add_events(2)
    signer.sign(tmp_path / "anchor.psbt", tmp_path / "signed.psbt")
    txid = _txid_of(_submit(ledger, spec, tmp_path / "signed.psbt", tmp_path / "anchor.psbt.request.json"))
    assert chain.mempool_txids() == [txid]
    assert json.loads((tmp_path / "anchor.psbt.request.json").read_text())["tree_size"] == 3


def test_a_request_edited_in_its_file_or_in_the_store_is_refused(ledger, chain, tmp_path):
    """The request file is checked against the request recorded when it was issued, and that one against the
    ledger's own signed heads: an edited file, and an insider's request for a head of 1000 events that was never
    signed (log of 2), are both refused and nothing is recorded."""
    spec, signer = f"regtest:{chain.directory}", Signer(chain)
    assert _psbt(ledger, spec, signer.public_key, tmp_path / "anchor.psbt").returncode == 0
    request_path = tmp_path / "anchor.psbt.request.json"
    request = json.loads(request_path.read_text())
    signer.sign(tmp_path / "anchor.psbt", tmp_path / "signed.psbt")
    edited = tmp_path / "edited.request.json"
    edited.write_text(json.dumps({**request, "tree_size": 1000}))
    _refused(_submit(ledger, spec, tmp_path / "signed.psbt", edited), EXIT_CHECK_FAILED, "edited", "tree_size")

    coin = Utxo(request["prev_txid"], request["prev_vout"], request["prev_value_sats"])
    doctored_psbt = build_anchor_psbt(coin, signer.anchor_key.public_key, encode_payload(1000, ROOT), 1, 20_000,
                                      chain.tip_height(), chain.raw_transaction(coin.txid))
    doctored = {**request, "psbt": doctored_psbt, "tree_size": 1000, "root_hash": ROOT.hex(),
                "txid": "00" * 32}
    with sqlite3.connect(ledger.data_dir / SQLITE_FILE_NAME) as db:
        db.execute("UPDATE anchor_request SET request = ?, tree_size = 1000", (json.dumps(doctored),))
    (tmp_path / "doctored.psbt").write_text(doctored_psbt)
    (tmp_path / "doctored.request.json").write_text(json.dumps(doctored))
    signer.sign(tmp_path / "doctored.psbt", tmp_path / "doctored.signed")
    _refused(_submit(ledger, spec, tmp_path / "doctored.signed", tmp_path / "doctored.request.json"),
             EXIT_CHECK_FAILED, "tree size 1000", "not a head this ledger signed")
    assert "anchors: 0" in _status(ledger) and chain.mempool_txids() == []


def _anchor_through_psbt(ledger, spec, signer, tmp_path, name: str) -> str:
    assert _psbt(ledger, spec, signer.public_key, tmp_path / f"{name}.psbt").returncode == 0
    signer.sign(tmp_path / f"{name}.psbt", tmp_path / f"{name}.signed")
    return _txid_of(_submit(ledger, spec, tmp_path / f"{name}.signed", tmp_path / f"{name}.psbt.request.json"))


@pytest.mark.parametrize("backend", ["esplora", "core"])
def test_a_psbt_the_node_refuses_is_reported_as_refused_on_every_backend(ledger, chain, tmp_path, backend):
    """Between `psbt` and `submit` the previous anchor's change is spent at a higher fee: Core's test-accept
    refuses the anchor before anything is recorded; Esplora cannot test-accept, so its broadcast is the verdict:
    the anchor is recorded as abandoned, never as broadcast, and the command fails with the node's reason."""
    signer = Signer(chain)
    with RegtestNode(chain) as node:
        spec = f"esplora:{node.esplora_url}" if backend == "esplora" else \
            f"core:{node.rpc_url}?cookie={node.cookie_file}"
        _anchor_through_psbt(ledger, spec, signer, tmp_path, "first")
        chain.mine(1)
        ledger.add_events(1)
        assert _psbt(ledger, spec, signer.public_key, tmp_path / "anchor.psbt").returncode == 0
        signer.sign(tmp_path / "anchor.psbt", tmp_path / "signed.psbt")
        (change,) = chain.utxos(signer.anchor_key.script_pubkey)
        conflict = build_anchor_tx(change, signer.anchor_key, encode_payload(99, ROOT), 30, 20_000,
                                   chain.tip_height())
        chain.broadcast(conflict.raw)
        line = _refused(_submit(ledger, spec, tmp_path / "signed.psbt", tmp_path / "anchor.psbt.request.json"),
                        EXIT_CHECK_FAILED, "refused")
    assert chain.mempool_txids() == [conflict.txid]
    anchors = [line for line in _status(ledger).splitlines() if line[:1].isdigit()]  # the table's rows
    assert len(anchors) == (2 if backend == "esplora" else 1) and "broadcast" not in "".join(anchors[1:])
    if backend == "esplora":
        assert "abandoned" in line and "abandoned" in anchors[1]


def test_a_stuck_external_anchor_is_fee_bumped_by_a_re_request(ledger, chain, tmp_path):
    """An external anchor left unconfirmed gets, once `replace_after_blocks` (3) blocks passed, a replacement
    request spending the same coin at a higher fee for the newest head; submitted, it replaces the stuck one."""
    spec, signer = f"regtest:{chain.directory}", Signer(chain)
    assert _psbt(ledger, spec, signer.public_key, tmp_path / "a.psbt").returncode == 0
    signer.sign(tmp_path / "a.psbt", tmp_path / "a.signed")
    stuck = _txid_of(_submit(ledger, spec, tmp_path / "a.signed", tmp_path / "a.psbt.request.json"))
    ledger.add_events(1)
    chain.mine(1, include_mempool=False)
    early = _psbt(ledger, spec, signer.public_key, tmp_path / "early.psbt")
    assert early.returncode == 0 and "in flight" in early.stdout and not (tmp_path / "early.psbt").exists()

    chain.mine(2, include_mempool=False)
    built_in = _cli("anchor", *ledger.storage(), "--chain", spec)  # its own key cannot bump the external anchor
    assert built_in.returncode == 0 and "replaced" not in built_in.stdout, built_in.stderr
    bump = _psbt(ledger, spec, signer.public_key, tmp_path / "b.psbt")
    assert bump.returncode == 0 and f"replacing the stuck anchor {stuck}" in bump.stdout, bump.stdout
    request = json.loads((tmp_path / "b.psbt.request.json").read_text())
    assert request["replaces"] == stuck and request["tree_size"] == 3
    signer.sign(tmp_path / "b.psbt", tmp_path / "b.signed")
    replacement = _txid_of(_submit(ledger, spec, tmp_path / "b.signed", tmp_path / "b.psbt.request.json"))
    assert chain.mempool_txids() == [replacement]
    status = _status(ledger)
    assert "replaced" in status and "broadcast" in status
    (block_hash,) = chain.mine(1)
    assert chain.transaction_status(replacement) == (block_hash, 1)


def test_an_hd_signer_finds_its_key_through_the_key_origin(ledger, chain, tmp_path):
    """embit holding only an HD root signs nothing without a key origin; with `--key-origin` the PSBT carries the
    BIP-32 derivation on the input and the change, embit signs, and the binary PSBT it writes is accepted by
    libbitcoinkernel on the embedded chain and mined."""
    spec = f"regtest:{chain.directory}"
    root = bip32.HDKey.from_seed(secrets.token_bytes(32))
    path = "m/84h/1h/0h/0/7"
    public_key = root.derive(path).key.get_public_key().sec()
    chain.send(p2wpkh_script_pubkey(public_key), FUNDING_SATS)
    chain.mine(1)
    signer = Signer(chain, fund=False)
    assert _psbt(ledger, spec, public_key.hex(), tmp_path / "plain.psbt").returncode == 0
    assert signer.sign(tmp_path / "plain.psbt", tmp_path / "plain.signed", key=root) == 0

    origin = f"{root.my_fingerprint.hex()}/{path[2:]}"
    assert _psbt(ledger, spec, public_key.hex(), tmp_path / "hd.psbt", "--key-origin", origin).returncode == 0
    parsed = EmbitPsbt.from_string((tmp_path / "hd.psbt").read_text().strip())
    (derivation,) = parsed.inputs[0].bip32_derivations.values()
    assert derivation.fingerprint == root.my_fingerprint and derivation.derivation == bip32.parse_path(path)
    assert list(parsed.outputs[1].bip32_derivations.values()) == [derivation]
    assert signer.sign(tmp_path / "hd.psbt", tmp_path / "hd.signed", binary=True, key=root) == 1
    assert (tmp_path / "hd.signed").read_bytes().startswith(b"psbt\xff")
    txid = _txid_of(_submit(ledger, spec, tmp_path / "hd.signed", tmp_path / "hd.psbt.request.json"))
    (block_hash,) = chain.mine(1)
    assert chain.transaction_status(txid) == (block_hash, 1)


def test_every_refusal_of_the_psbt_flow_is_one_line(ledger, chain, tmp_path):
    """Malformed options and files, a submit with no request outstanding, and a request for a key that is not the
    anchor wallet's: one line each, exit 2 for the command line, 1 for a refused PSBT, never a traceback."""
    spec, signer = f"regtest:{chain.directory}", Signer(chain)
    _refused(_psbt(ledger, spec, "02ab", tmp_path / "x.psbt"), EXIT_USAGE, "--public-key")
    _refused(_psbt(ledger, spec, signer.public_key, tmp_path / "x.psbt", "--key-origin", "xyz/1"), EXIT_USAGE,
             "--key-origin", "fingerprint")
    _refused(_psbt(ledger, spec, signer.public_key, tmp_path / "x.psbt", "--key-origin", "d34db33f/84q"),
             EXIT_USAGE, "--key-origin")
    assert _psbt(ledger, spec, signer.public_key, tmp_path / "anchor.psbt").returncode == 0
    request = tmp_path / "anchor.psbt.request.json"
    for garbage in (b"\xff\xfe not a psbt", b"psbt\xff\x01\x02", b"cHNidP8="):
        (tmp_path / "garbage").write_bytes(garbage)
        _refused(_submit(ledger, spec, tmp_path / "garbage", request), EXIT_CHECK_FAILED, "refused")
    (tmp_path / "not-json").write_bytes(b"\x00\xff")
    _refused(_submit(ledger, spec, tmp_path / "anchor.psbt", tmp_path / "not-json"), EXIT_USAGE, "--request")
    _refused(_submit(ledger, spec, tmp_path / "anchor.psbt", request), EXIT_CHECK_FAILED, "no signature")

    signer.sign(tmp_path / "anchor.psbt", tmp_path / "signed.psbt")
    _txid_of(_submit(ledger, spec, tmp_path / "signed.psbt", request))
    _refused(_submit(ledger, spec, tmp_path / "signed.psbt", request), EXIT_CHECK_FAILED, "no anchor request")
    chain.mine(1)
    ledger.add_events(1)
    other = Signer(chain)
    _refused(_psbt(ledger, spec, other.public_key, tmp_path / "other.psbt"), EXIT_CHECK_FAILED,
             "chain of anchors continues at", "anchor rotate")


def _export_and_audit(ledger, tmp_path, name: str, spec: str, genesis: str) -> subprocess.CompletedProcess:
    out = tmp_path / name
    exported = _cli("export", *ledger.storage(), "--out", out)
    assert exported.returncode == 0, exported.stderr
    return _cli("audit", out, "--chain", spec, "--anchor-genesis", genesis)


def _only_the_unregistered_reserves_fail(audited: subprocess.CompletedProcess) -> None:
    """Every check of the audit holds but the proof of reserves of the fixture's custody account, which has no
    address (the audit names such an account rather than leaving it out): the anchors all pass."""
    failures = [line for line in audited.stdout.splitlines() if line.startswith("FAIL ")]
    assert failures and all(line.startswith("FAIL reserves account cold-a") or line.startswith("FAIL: ")
                            for line in failures), audited.stdout + audited.stderr


def test_the_built_in_key_imported_into_an_external_signer_continues_the_chain(ledger, chain, tmp_path):
    """A data dir anchored by its key file moves to an external signer that holds the same key (imported): the
    next anchor is a PSBT spending the built-in anchor's change, signed outside."""
    spec = f"regtest:{chain.directory}"
    built_in = AnchorKey.generate("regtest")
    built_in.save(ledger.data_dir / "anchor-wallet.wif")
    chain.send(built_in.script_pubkey, FUNDING_SATS)
    chain.mine(1)
    first = _cli("anchor", *ledger.storage(), "--chain", spec)
    assert first.returncode == 0, first.stderr
    chain.mine(1)
    ledger.add_events(1)
    signer = Signer(chain, fund=False)
    assert _psbt(ledger, spec, built_in.public_key.hex(), tmp_path / "next.psbt").returncode == 0
    assert signer.sign(tmp_path / "next.psbt", tmp_path / "next.signed", key=ec.PrivateKey.from_wif(built_in.wif)) == 1
    txid = _txid_of(_submit(ledger, spec, tmp_path / "next.signed", tmp_path / "next.psbt.request.json"))
    (spent,) = parse_transaction(chain.raw_transaction(txid)).inputs
    assert spent.prev_txid_internal[::-1].hex() == first.stdout.split("broadcast anchor ")[1].split()[0]


def test_the_anchor_wallet_moves_from_the_built_in_key_to_external_signers_in_one_unbroken_chain(
        ledger, chain, tmp_path):
    """Built-in key A anchors; `anchor rotate` moves the chain to key file B, which anchors; B moves it to external
    signer C; C anchors through PSBTs and moves it to external signer D with `anchor psbt --rotate-to`; D
    anchors. The old key is refused after each move, and `audit` finds one chain from the genesis on the
    embedded chain and through Core's RPC (which walks back from the unspent coins)."""
    spec = f"regtest:{chain.directory}"
    built_in = AnchorKey.generate("regtest")
    built_in.save(ledger.data_dir / "anchor-wallet.wif")
    chain.send(built_in.script_pubkey, FUNDING_SATS)
    chain.mine(1)
    assert _cli("anchor", *ledger.storage(), "--chain", spec).returncode == 0
    chain.mine(1)
    ledger.add_events(1)
    key_b = AnchorKey.generate("regtest")
    key_b.save(tmp_path / "b.wif")
    moved = _cli("anchor", "rotate", *ledger.storage(), "--chain", spec, "--to-anchor-key", tmp_path / "b.wif")
    assert moved.returncode == 0 and "--anchor-key" in moved.stdout, moved.stderr
    chain.mine(1)
    ledger.add_events(1)
    _refused(_cli("anchor", *ledger.storage(), "--chain", spec), EXIT_CHECK_FAILED, key_b.address, "rotate")
    assert _cli("anchor", *ledger.storage(), "--chain", spec, "--anchor-key", tmp_path / "b.wif").returncode == 0
    chain.mine(1)
    ledger.add_events(1)

    signer_c, signer_d = Signer(chain, fund=False), Signer(chain, fund=False)
    assert _cli("anchor", "rotate", *ledger.storage(), "--chain", spec, "--anchor-key", tmp_path / "b.wif",
                "--to-public-key", signer_c.public_key).returncode == 0
    chain.mine(1)
    ledger.add_events(1)
    _refused(_cli("anchor", *ledger.storage(), "--chain", spec, "--anchor-key", tmp_path / "b.wif"),
             EXIT_CHECK_FAILED, "chain of anchors continues at")
    assert _psbt(ledger, spec, signer_c.public_key, tmp_path / "c.psbt", "--rotate-to",
                 signer_d.public_key).returncode == 0
    signer_c.sign(tmp_path / "c.psbt", tmp_path / "c.signed")
    _txid_of(_submit(ledger, spec, tmp_path / "c.signed", tmp_path / "c.psbt.request.json"))
    chain.mine(1)
    ledger.add_events(1)
    assert _psbt(ledger, spec, signer_d.public_key, tmp_path / "d.psbt").returncode == 0
    signer_d.sign(tmp_path / "d.psbt", tmp_path / "d.signed")
    last = _txid_of(_submit(ledger, spec, tmp_path / "d.signed", tmp_path / "d.psbt.request.json"))
    chain.mine(1)
    assert parse_transaction(chain.raw_transaction(last)).outputs[1].script_pubkey == \
        signer_d.anchor_key.script_pubkey

    verified = _cli("verify", *ledger.storage())
    assert verified.returncode == 0, verified.stdout + verified.stderr
    genesis = _genesis(ledger)
    on_embedded = _export_and_audit(ledger, tmp_path, "bundle", spec, genesis)
    _only_the_unregistered_reserves_fail(on_embedded)
    assert f"anchors on chain from the genesis {genesis}: 6" in on_embedded.stdout, on_embedded.stdout
    with RegtestNode(chain) as node:
        through_core = _cli("audit", tmp_path / "bundle", "--chain", f"core:{node.rpc_url}?cookie={node.cookie_file}",
                            "--anchor-genesis", genesis)
    _only_the_unregistered_reserves_fail(through_core)


def _genesis(ledger) -> str:
    with sqlite3.connect(ledger.data_dir / SQLITE_FILE_NAME) as db:
        txid, vout = db.execute("SELECT txid, vout FROM anchor_genesis").fetchone()
    return str(Outpoint(txid, vout))
