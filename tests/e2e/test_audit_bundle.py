"""`reserve-ledger export` and `reserve-ledger audit` on bundles from a real demo run: the clean bundle passes;
each kind of tampering (events, tree heads, anchors, custody, coins moved on chain) fails with exit 1 and a
FAIL line that names the check and the place. One demo per module; every test tampers with its own copy."""

import contextlib
import dataclasses
import json
import pathlib
import shutil
import subprocess
import sys

import pytest

from reserve_ledger.v1 import audit_pb2 as apb
from reserve_ledger.v1 import audit_pb2_grpc
from reserve_ledger.v1 import ledger_pb2 as pb
from services.audit import bundle
from services.bitcoin.addresses import script_pubkey_of_address
from services.bitcoin.regtest.chain import RegtestChain
from services.api.client import secure_channel
from tests.e2e.helpers import BTC, log_size, open_account, purchase

UNRECORDED_SATS = 50_000_000          # the demo's own unrecorded movement to ops-warm-1 (services/cli/demo.py)
MOVED_SATS = 12_345_678               # what these tests move to vault-cold-2 behind the ledger's back


def cli(*args: str, timeout_s: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout_s)


def audit(directory: pathlib.Path, *extra: str) -> subprocess.CompletedProcess:
    return cli("audit", str(directory), *extra)


def fail_lines(result: subprocess.CompletedProcess) -> list[str]:
    """The per-finding lines (`FAIL <check> <where>: <message>`), not the `FAIL: n failure(s)` summary."""
    return [line for line in result.stdout.splitlines() if line.startswith("FAIL ")]


def assert_named(result: subprocess.CompletedProcess, check: str, where: str, *message_parts: str) -> str:
    """Exit 1 and a FAIL line for this check at this place (whose message holds every part); returns it."""
    assert result.returncode == 1, result.stdout + result.stderr
    prefix = f"FAIL {check} {where}: "
    for line in fail_lines(result):
        if line.startswith(prefix) and all(part in line for part in message_parts):
            return line
    raise AssertionError(f"no line {prefix}... with {message_parts} in:\n{result.stdout}{result.stderr}")


def read_frames(directory: pathlib.Path) -> list[bytes]:
    return list(bundle.iter_events(directory / bundle.EVENTS))


def write_frames(directory: pathlib.Path, frames: list[bytes]) -> None:
    with open(directory / bundle.EVENTS, "wb") as file:
        for frame in frames:
            file.write(bundle.FRAME_HEADER.pack(len(frame)) + frame)


def reseal(directory: pathlib.Path) -> None:
    """What a careful forger does: recompute manifest.json so that its hashes and counts match the edited files."""
    def length(name: str) -> int:
        return len(json.loads((directory / name).read_bytes()))
    headers_path = directory / bundle.HEADERS
    headers = json.loads(headers_path.read_bytes())["headers"] if headers_path.exists() else []
    bundle.seal(directory, {"events": len(read_frames(directory)), "tree_heads": length(bundle.TREE_HEADS),
                            "anchors": length(bundle.ANCHORS), "custody_accounts": length(bundle.CUSTODY),
                            "headers": len(headers)})


def edit_json(directory: pathlib.Path, name: str, edit) -> None:
    value = json.loads((directory / name).read_bytes())
    edit(value)
    bundle.write_json(directory, name, value)


@dataclasses.dataclass(frozen=True)
class Demo:
    data_dir: pathlib.Path
    bundle: pathlib.Path
    chain_dir: pathlib.Path
    anchor_txid: str
    other_raw_tx: str      # a valid transaction of the same chain that is not the anchor
    events: int            # events in the demo's log (the anchor and the last signed head commit to all of them)

    @property
    def chain_spec(self) -> str:
        return f"regtest:{self.chain_dir}"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Demo:
    """One demo run (real mTLS server, SQLite, embedded regtest chain) and its bundle with headers."""
    root = tmp_path_factory.mktemp("audit-bundle")
    data_dir, out = root / "data", root / "bundle"
    run = cli("demo", "--data-dir", str(data_dir))
    assert run.returncode == 0, run.stderr[-3000:]
    export = cli("export", "--data-dir", str(data_dir), "--out", str(out), "--chain", f"regtest:{data_dir / 'regtest'}")
    assert export.returncode == 0, export.stdout + export.stderr
    (anchor,) = json.loads((out / bundle.ANCHORS).read_bytes())
    assert anchor["state"] == "anchored" and anchor["block_hash"], anchor
    chain_copy = root / "chain-read"
    shutil.copytree(data_dir / "regtest", chain_copy)
    with RegtestChain.open(chain_copy) as chain:
        other_raw_tx = chain.raw_transaction(anchor["prev_txid"]).hex()   # the anchor wallet's funding
    return Demo(data_dir, out, data_dir / "regtest", anchor["txid"], other_raw_tx, len(read_frames(out)))


@pytest.fixture
def copy(demo, tmp_path) -> pathlib.Path:
    """A private copy of the demo bundle to tamper with."""
    return pathlib.Path(shutil.copytree(demo.bundle, tmp_path / "bundle"))


# --- the clean bundle ------------------------------------------------------------------------------------

def test_an_untampered_bundle_passes_the_offline_audit(demo):
    result = audit(demo.bundle)
    assert result.returncode == 0, result.stdout + result.stderr
    assert fail_lines(result) == []
    assert result.stdout.splitlines()[-1].startswith(f"OK: {demo.events} events, 2 signed tree heads, 1 anchors")


def test_exporting_twice_gives_byte_identical_bundles(demo, tmp_path):
    again = tmp_path / "again"
    export = cli("export", "--data-dir", str(demo.data_dir), "--out", str(again), "--chain", demo.chain_spec)
    assert export.returncode == 0, export.stdout + export.stderr
    names = sorted(path.name for path in demo.bundle.iterdir())
    assert names == sorted(path.name for path in again.iterdir())
    assert {bundle.MANIFEST, bundle.HEADERS, *bundle.REQUIRED_FILES} <= set(names)
    for name in names:
        assert (again / name).read_bytes() == (demo.bundle / name).read_bytes(), name


def test_export_refuses_an_out_directory_that_is_not_empty(demo, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    export = cli("export", "--data-dir", str(demo.data_dir), "--out", str(out))
    assert export.returncode == 2, export.stdout + export.stderr
    assert "not empty" in export.stderr
    assert sorted(path.name for path in out.iterdir()) == ["notes.txt"]


def test_the_untampered_bundle_against_the_chain_names_only_the_unrecorded_demo_movement(demo):
    result = audit(demo.bundle, "--chain", demo.chain_spec)
    line = assert_named(result, "reserves", "account ops-warm-1", f"difference {UNRECORDED_SATS:+,d} sats")
    assert fail_lines(result) == [line], result.stdout


# --- events ----------------------------------------------------------------------------------------------

def test_a_flipped_byte_in_an_event_is_caught_by_the_manifest_when_not_resealed(copy):
    frames = read_frames(copy)
    frames[5] = frames[5].replace(b'"quantity_sats":800000000', b'"quantity_sats":900000000')
    write_frames(copy, frames)
    assert_named(audit(copy), "manifest", "file events.bin", "SHA-256")


def test_a_flipped_byte_that_breaks_the_canonical_form_names_the_event(copy):
    frames = read_frames(copy)
    frames[5] = bytes([frames[5][0] ^ 0x01]) + frames[5][1:]      # '{' becomes 'z'
    write_frames(copy, frames)
    reseal(copy)
    result = audit(copy)
    assert_named(result, "events", "event 5", "not a canonical event")
    assert_named(result, "tree_heads", f"tree size {len(frames)}", "signed root does not match")
    assert not any(line.startswith("FAIL manifest") for line in fail_lines(result)), result.stdout


def test_a_flipped_digit_that_keeps_the_event_canonical_is_named_by_the_tree_head_anchor_and_replay(demo, copy):
    """The bytes still parse, so only the signed root, the anchored root and the replay's rules can tell (the
    quantity no longer matches the purchase's fiat total)."""
    frames = read_frames(copy)
    forged = frames[5].replace(b'"quantity_sats":800000000', b'"quantity_sats":900000000')
    assert forged != frames[5] and len(forged) == len(frames[5])
    frames[5] = forged
    write_frames(copy, frames)
    reseal(copy)
    result = audit(copy)
    assert_named(result, "tree_heads", f"tree size {demo.events}", "signed root does not match")
    assert_named(result, "anchors", f"anchor {demo.anchor_txid}", f"not the root of the first {demo.events} events")
    assert_named(result, "replay", "event 5", "position 5: FIAT_TOTAL_MISMATCH")
    assert not any(line.startswith(("FAIL manifest", "FAIL events")) for line in fail_lines(result)), result.stdout


def test_a_dropped_event_is_named(copy):
    frames = read_frames(copy)
    write_frames(copy, frames[:5] + frames[6:])
    reseal(copy)
    result = audit(copy)
    assert_named(result, "events", "event 5", "expected position 5, the event says 6")
    assert_named(result, "tree_heads", f"tree size {len(frames)}",
                 f"covers more events than the bundle holds ({len(frames) - 1})")
    assert not any(line.startswith("FAIL manifest") for line in fail_lines(result)), result.stdout


def test_two_swapped_events_are_both_named(copy):
    frames = read_frames(copy)
    frames[5], frames[6] = frames[6], frames[5]
    write_frames(copy, frames)
    reseal(copy)
    result = audit(copy)
    assert_named(result, "events", "event 5", "expected position 5, the event says 6")
    assert_named(result, "events", "event 6", "expected position 6, the event says 5")
    assert_named(result, "tree_heads", f"tree size {len(frames)}", "signed root does not match")
    assert not any(line.startswith("FAIL manifest") for line in fail_lines(result)), result.stdout


def test_events_truncated_at_the_end_are_named_as_removed_from_the_end(demo, copy):
    frames = read_frames(copy)
    write_frames(copy, frames[:-3])
    reseal(copy)
    result = audit(copy)
    size = len(frames)
    assert_named(result, "tree_heads", f"tree size {size}", f"covers more events than the bundle holds ({size - 3})",
                 "events were removed")
    assert_named(result, "anchors", f"anchor {demo.anchor_txid}",
                 f"commits to {size} events; the bundle holds {size - 3}", "events were removed")
    assert not any(line.startswith(("FAIL manifest", "FAIL events")) for line in fail_lines(result)), result.stdout


# --- anchors ---------------------------------------------------------------------------------------------

def test_an_anchor_replaced_by_another_valid_transaction_is_named(demo, copy):
    def replace(anchors):
        anchors[0]["raw_tx"] = demo.other_raw_tx
    edit_json(copy, bundle.ANCHORS, replace)
    reseal(copy)
    result = audit(copy)
    where = f"anchor {demo.anchor_txid}"
    assert_named(result, "anchors", where, "the raw transaction's txid is")
    assert_named(result, "anchors", where, "carries no Reserve Ledger payload")
    assert_named(result, "anchors", where, "merkleblock does not contain this transaction")
    assert all(where in line for line in fail_lines(result)), result.stdout


def test_an_anchor_whose_payload_root_is_altered_is_named(demo, copy):
    root_hex = json.loads((copy / bundle.ANCHORS).read_bytes())[0]["root_hash"]
    forged_hex = f"{int(root_hex[:2], 16) ^ 0x01:02x}" + root_hex[2:]

    def alter(anchors):
        assert anchors[0]["raw_tx"].count(root_hex) == 1
        anchors[0]["raw_tx"] = anchors[0]["raw_tx"].replace(root_hex, forged_hex)
    edit_json(copy, bundle.ANCHORS, alter)
    reseal(copy)
    result = audit(copy)
    where = f"anchor {demo.anchor_txid}"
    assert_named(result, "anchors", where, f"the payload's root is not the root of the first {demo.events} events")
    assert_named(result, "anchors", where, "the listed root differs from the payload's")
    assert all(where in line for line in fail_lines(result)), result.stdout


# --- tree heads ------------------------------------------------------------------------------------------

def test_a_forged_tree_head_signature_is_named(demo, copy):
    def forge(heads):
        signature = bytearray.fromhex(heads[-1]["signature"])
        signature[10] ^= 0x04
        heads[-1]["signature"] = signature.hex()
    edit_json(copy, bundle.TREE_HEADS, forge)
    reseal(copy)
    result = audit(copy)
    line = assert_named(result, "tree_heads", f"tree size {demo.events}", "signature does not verify")
    assert fail_lines(result) == [line], result.stdout


def test_a_tree_head_with_a_changed_root_is_named(demo, copy):
    def change(heads):
        root = bytearray.fromhex(heads[-1]["root_hash"])
        root[0] ^= 0x80
        heads[-1]["root_hash"] = root.hex()
    edit_json(copy, bundle.TREE_HEADS, change)
    reseal(copy)
    result = audit(copy)
    assert_named(result, "tree_heads", f"tree size {demo.events}", "signed root does not match")
    assert_named(result, "tree_heads", f"tree size {demo.events}", "signature does not verify")
    assert all(line.startswith(f"FAIL tree_heads tree size {demo.events}: ")
               for line in fail_lines(result)), result.stdout


# --- custody ---------------------------------------------------------------------------------------------

def test_an_edited_custody_balance_names_the_account(copy):
    def inflate(accounts):
        (account,) = [a for a in accounts if a["account_id"] == "ops-warm-1"]
        account["balance_sats"] += UNRECORDED_SATS
    edit_json(copy, bundle.CUSTODY, inflate)
    reseal(copy)
    result = audit(copy)
    line = assert_named(result, "custody", "account ops-warm-1", f"balance_sats = {2 * BTC + UNRECORDED_SATS}",
                        f"the events say {2 * BTC}")
    assert fail_lines(result) == [line], result.stdout


def test_an_edited_custody_balance_without_resealing_is_also_caught_by_the_manifest(copy):
    edit_json(copy, bundle.CUSTODY, lambda accounts: accounts[0].update(balance_sats=accounts[0]["balance_sats"] - 1))
    result = audit(copy)
    assert_named(result, "manifest", "file custody.json", "SHA-256")
    assert_named(result, "custody", f"account {json.loads((copy / bundle.CUSTODY).read_bytes())[0]['account_id']}",
                 "balance_sats")


# --- the chain -------------------------------------------------------------------------------------------

def test_coins_moved_on_chain_without_a_ledger_event_name_the_account_and_the_difference(demo, tmp_path):
    chain_dir = pathlib.Path(shutil.copytree(demo.chain_dir, tmp_path / "regtest"))
    custody = {a["account_id"]: a for a in json.loads((demo.bundle / bundle.CUSTODY).read_bytes())}
    with RegtestChain.open(chain_dir) as chain:
        chain.send(script_pubkey_of_address(custody["bny-cold-1"]["addresses"][0]), MOVED_SATS)
        chain.mine(1)
    result = audit(demo.bundle, "--chain", f"regtest:{chain_dir}")
    moved = assert_named(result, "reserves", "account bny-cold-1",
                         f"ledger: {custody['bny-cold-1']['balance_sats']:,} sats", f"difference {MOVED_SATS:+,d} sats")
    demo_line = assert_named(result, "reserves", "account ops-warm-1", f"difference {UNRECORDED_SATS:+,d} sats")
    assert sorted(fail_lines(result)) == sorted([moved, demo_line]), result.stdout


# --- both storage backends -------------------------------------------------------------------------------

def test_export_reads_each_storage_backend_and_its_bundle_audits_clean(storage, server, clients, certs_dir, tmp_path):
    """The exporter runs on SQLite and on PostgreSQL (the `storage` fixture), against a live server."""
    data_dir, database_url = storage
    open_account(clients.alice, "cold-a")
    open_account(clients.alice, "warm-b", custodian="Operations", kind=pb.ACCOUNT_KIND_WARM)
    purchase(clients.alice, "cold-a", 3, "buy-1")
    purchase(clients.alice, "cold-a", 2, "buy-2", price="58000.00", currency="EUR")
    proposal = clients.alice.ProposeTransfer(pb.ProposeTransferRequest(
        request_id="move-1", debit_account_id="cold-a", credit_account_id="warm-b", amount_sats=BTC,
        memo="top up"), timeout=10)
    clients.bob.ApproveTransfer(pb.ApproveTransferRequest(request_id="approve-move-1",
                                                          transfer_id=proposal.transfer_id), timeout=10)
    size = log_size(clients)
    audit_stub = audit_pb2_grpc.AuditServiceStub(secure_channel(clients.address, certs_dir, "dave"))
    assert audit_stub.GetTreeHead(apb.GetTreeHeadRequest(), timeout=10).tree_head.tree_size == size
    out = tmp_path / "bundle"
    source = ["--database", database_url] if database_url else ["--data-dir", data_dir]
    RegtestChain.create(tmp_path / "regtest").close()  # a fresh chain: no anchor is confirmed in it
    chain_spec = f"regtest:{tmp_path / 'regtest'}"
    export = cli("export", *source, "--signing-key", str(tmp_path / "signing.key"), "--out", str(out),
                 "--chain", chain_spec)
    assert export.returncode == 0, export.stdout + export.stderr
    manifest = json.loads((out / bundle.MANIFEST).read_bytes())
    assert manifest["counts"]["events"] == size == 6 and manifest["counts"]["tree_heads"] >= 1
    assert json.loads((out / bundle.HEADERS).read_bytes()) == {"start_height": None, "headers": []}
    balances = {a["account_id"]: a["balance_sats"] for a in json.loads((out / bundle.CUSTODY).read_bytes())}
    assert balances == {"cold-a": 4 * BTC, "warm-b": BTC}
    result = audit(out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1].startswith(f"OK: {size} events")
    on_chain = audit(out, "--chain", chain_spec)   # the accounts registered nothing: named, never left out
    assert fail_lines(on_chain) == [
        f"FAIL reserves account cold-a: ledger balance {4 * BTC:,} sats not reconciled: no addresses or descriptor",
        f"FAIL reserves account warm-b: ledger balance {BTC:,} sats not reconciled: no addresses or descriptor"], (
        on_chain.stdout + on_chain.stderr)


# --- bundles that are not well formed --------------------------------------------------------------------

def test_a_manifest_that_is_not_an_object_fails_without_a_traceback(copy):
    (copy / bundle.MANIFEST).write_text("[]\n")
    result = audit(copy)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stdout + result.stderr
    assert fail_lines(result) == ["FAIL bundle: manifest.json is not an object with a counts object"]


def test_an_anchor_entry_that_is_not_an_object_is_named_without_a_traceback(copy):
    edit_json(copy, bundle.ANCHORS, lambda anchors: anchors.append(7))
    reseal(copy)
    result = audit(copy)
    assert "Traceback" not in result.stderr, result.stderr
    line = assert_named(result, "anchors", "anchor #1", "malformed entry")
    assert fail_lines(result) == [line], result.stdout


@pytest.mark.parametrize("kind", ["core", "esplora"])
def test_the_production_clients_give_the_same_chain_verdict_over_http(demo, tmp_path, kind):
    """Bitcoin Core RPC (scantxoutset) and Esplora (address UTXOs) against the regtest node serving the demo chain."""
    from services.bitcoin.regtest.node import RegtestNode
    chain_dir = pathlib.Path(shutil.copytree(demo.chain_dir, tmp_path / "regtest"))
    with RegtestChain.open(chain_dir) as chain, RegtestNode(chain) as node:
        spec = (f"core:{node.rpc_url}?cookie={node.cookie_file}" if kind == "core" else f"esplora:{node.esplora_url}")
        over_http = audit(demo.bundle, "--chain", spec)
    embedded = audit(demo.bundle, "--chain", f"regtest:{chain_dir}")
    line = assert_named(over_http, "reserves", "account ops-warm-1", f"difference {UNRECORDED_SATS:+,d} sats")
    assert fail_lines(over_http) == [line] == fail_lines(embedded), over_http.stdout + over_http.stderr
    confirmations = [row for row in over_http.stdout.splitlines() if row.startswith(("anchor ", "reserves "))]
    assert confirmations == [row for row in embedded.stdout.splitlines() if row.startswith(("anchor ", "reserves "))]
    assert any("6 confirmations on the best chain" in row for row in confirmations)


def test_events_written_without_the_service_are_exported_unsigned_and_named_by_the_audit(demo, tmp_path):
    """An event appended by the library alone (as an insider could) is under no head: every commit of the service
    signs its own, and nothing else signs. An export, with the private key at hand or only the public one,
    signs nothing, takes the whole log, and the audit names the unsigned event."""
    from ledger import commands as cmd
    from ledger.application import ReserveLedger
    from services.store.config import storage_env
    data_dir = pathlib.Path(shutil.copytree(demo.data_dir, tmp_path / "data", ignore=shutil.ignore_patterns("regtest")))
    ledger = ReserveLedger(storage_env(str(data_dir), None))
    ledger.execute([(cmd.FreezeAccount("late-freeze", "ops-warm-1", "after the last head"),
                     cmd.Caller("erin", "admin"))], 1_900_000_000_000_000)
    size = ledger.store.log_size()
    ledger.close()
    public_key = (demo.bundle / bundle.PUBLIC_KEY).read_text().strip()
    watch_only = cli("export", "--data-dir", str(data_dir), "--out", str(tmp_path / "public"), "--public-key",
                     public_key)
    keyed = cli("export", "--data-dir", str(data_dir), "--out", str(tmp_path / "keyed"))
    assert watch_only.returncode == 0 and keyed.returncode == 0, watch_only.stderr + keyed.stderr
    for out in ("public", "keyed"):
        assert len(read_frames(tmp_path / out)) == size
        assert max(head["tree_size"] for head in bundle.read_json(tmp_path / out, bundle.TREE_HEADS)) == size - 1
        assert_named(audit(tmp_path / out), "tree_heads", f"event {size - 1}",
                     f"events {size - 1} to {size - 1} are covered by no signed tree head")


# --- anchors are found on chain, not in the bundle (the anchor genesis) ----------------------------------

def genesis_of(directory: pathlib.Path) -> str:
    """The bundle's anchor genesis as TXID:VOUT, as a report prints it for the next audit to pin."""
    genesis = json.loads((directory / bundle.ANCHOR_GENESIS).read_bytes())
    return f"{genesis['txid']}:{genesis['vout']}"


def run_sql(data_dir: pathlib.Path, *statements: str) -> None:
    """What an insider with write access to the data dir does behind the service's back."""
    import sqlite3
    with sqlite3.connect(data_dir / "ledger.sqlite") as db:
        for statement in statements:
            db.execute(statement)


@pytest.fixture
def insider(demo, tmp_path) -> pathlib.Path:
    """A private copy of the demo's data dir, keys and chain included, to tamper with."""
    return pathlib.Path(shutil.copytree(demo.data_dir, tmp_path / "data",
                                        ignore=shutil.ignore_patterns("audit-bundle", "proofs", "*.html", "*.json")))


def export_with_headers(data_dir: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    export = cli("export", "--data-dir", str(data_dir), "--out", str(out), "--chain", f"regtest:{data_dir / 'regtest'}")
    assert export.returncode == 0, export.stdout + export.stderr
    return out


@contextlib.contextmanager
def chain_spec(kind: str, chain_dir: pathlib.Path):
    """The auditor's node: the embedded chain, or the regtest node over HTTP through the Core or Esplora client."""
    from services.bitcoin.regtest.node import RegtestNode
    if kind == "regtest":
        yield f"regtest:{chain_dir}"
        return
    with RegtestChain.open(chain_dir) as chain, RegtestNode(chain) as node:
        yield f"core:{node.rpc_url}?cookie={node.cookie_file}" if kind == "core" else f"esplora:{node.esplora_url}"


@pytest.mark.parametrize("kind", ["regtest", "core", "esplora"])
def test_the_clean_bundle_passes_with_its_genesis_pinned_on_every_backend(demo, tmp_path, kind):
    chain_dir = pathlib.Path(shutil.copytree(demo.chain_dir, tmp_path / "regtest"))
    genesis = genesis_of(demo.bundle)
    with chain_spec(kind, chain_dir) as spec:
        result = audit(demo.bundle, "--chain", spec, "--anchor-genesis", genesis)
    line = assert_named(result, "reserves", "account ops-warm-1", f"difference {UNRECORDED_SATS:+,d} sats")
    assert fail_lines(result) == [line], result.stdout
    assert f"anchors on chain from the genesis {genesis}: 1" in result.stdout


def test_deleted_anchor_rows_are_named_by_verify_and_found_on_chain_by_the_audit(demo, insider, tmp_path):
    genesis = genesis_of(demo.bundle)
    run_sql(insider, "DELETE FROM anchors")
    verify = cli("verify", "--data-dir", str(insider))
    assert verify.returncode == 1, verify.stdout + verify.stderr
    assert f"FAIL the anchor genesis {genesis} is recorded but no anchor row spends it" in verify.stdout
    out = export_with_headers(insider, tmp_path / "bundle")
    assert json.loads((out / bundle.ANCHORS).read_bytes()) == []
    result = audit(out, "--chain", f"regtest:{insider / 'regtest'}")
    assert_named(result, "chain", f"anchor {demo.anchor_txid}", "anchor on chain missing from the bundle",
                 f"commits to tree size {demo.events}")


def test_a_log_cut_short_with_its_later_heads_deleted_is_caught(demo, insider, tmp_path):
    """The events after the first 12, their log rows, leaves and subtrees and every head above 12 are gone; the
    saved projections too. Only the anchor, committed to every event on chain, remembers."""
    keep = 12
    run_sql(insider, f"DELETE FROM stored_events WHERE originator_version > {keep}",
            f"DELETE FROM ledger_log WHERE position >= {keep}",
            f"DELETE FROM merkle_nodes WHERE ((idx + 1) << level) > {keep}",
            f"DELETE FROM tree_heads WHERE tree_size > {keep}", "DELETE FROM projections", "DELETE FROM checkpoints")
    verify = cli("verify", "--data-dir", str(insider))
    assert verify.returncode == 1, verify.stdout + verify.stderr
    assert f"commits to tree size {demo.events}, beyond the log's {keep} events: the log was truncated" in verify.stdout
    out = export_with_headers(insider, tmp_path / "bundle")   # the data dir's key signs a head of the 12 events
    assert len(read_frames(out)) == keep and json.loads((out / bundle.ANCHORS).read_bytes()) == []
    result = audit(out, "--chain", f"regtest:{insider / 'regtest'}")
    assert_named(result, "chain", f"anchor {demo.anchor_txid}", "anchor on chain missing from the bundle",
                 f"beyond the bundle's {keep} events")


@pytest.mark.parametrize("kind", ["regtest", "core", "esplora"])
def test_a_bundle_without_anchors_fails_against_a_chain_that_has_them(demo, copy, tmp_path, kind):
    """The anchors are dropped from the bundle; then the genesis too, which the auditor's pin still knows."""
    chain_dir = pathlib.Path(shutil.copytree(demo.chain_dir, tmp_path / "regtest"))
    genesis = genesis_of(demo.bundle)
    edit_json(copy, bundle.ANCHORS, lambda anchors: anchors.clear())
    reseal(copy)
    assert audit(copy).returncode == 0   # offline, nothing contradicts an empty list
    with chain_spec(kind, chain_dir) as spec:
        without_anchors = audit(copy, "--chain", spec)
        (copy / bundle.ANCHOR_GENESIS).write_text("null\n")
        reseal(copy)
        without_genesis = audit(copy, "--chain", spec, "--anchor-genesis", genesis)
    for result in (without_anchors, without_genesis):
        assert_named(result, "chain", f"anchor {demo.anchor_txid}", "anchor on chain missing from the bundle",
                     "its root is the bundle's root at that size")
    assert_named(without_genesis, "anchors", "anchor genesis", f"the bundle names no genesis, not the pinned {genesis}")


def test_a_rewritten_history_re_anchored_from_the_same_wallet_fails_against_the_pinned_genesis(demo, tmp_path):
    """An insider with the data dir's keys starts the ledger over with other events, signs its heads with the same
    key and anchors them from the same fee wallet (its next coin is the old anchor's change). Its bundle is
    consistent in itself; the earlier anchor, on chain from the genesis an earlier report printed, is not in it."""
    from ledger.anchor_policy import AnchorPolicy
    from services.compose import ServerConfig, build_server
    from services.api.client import ledger_stub
    data_dir = tmp_path / "rewritten"
    chain_dir = pathlib.Path(shutil.copytree(demo.chain_dir, data_dir / "regtest"))
    for key in ("tree-head-signing.key", "anchor-wallet.wif"):
        shutil.copy2(demo.data_dir / key, data_dir / key)
    server = build_server(ServerConfig(
        create_store=True, metrics_listen=None, listen="127.0.0.1:0", data_dir=str(data_dir), certs_dir=str(demo.data_dir / "certs"),
        chain=f"regtest:{chain_dir}", anchor_policy=AnchorPolicy(interval_s=3600, block_poll_interval_s=3600))).start()
    try:
        alice = ledger_stub(f"127.0.0.1:{server.port}", demo.data_dir / "certs", "alice")
        open_account(alice, "bny-cold-1")
        for number in range(demo.events):   # a longer history than the demo's, none of its events the same
            purchase(alice, "bny-cold-1", 1, f"rewritten-buy-{number}")
        assert server.anchor_worker.step().built
        with RegtestChain.open(chain_dir) as chain:
            chain.mine(6)
        server.anchor_worker.step()
    finally:
        server.stop(grace_s=1)
    out = export_with_headers(data_dir, tmp_path / "bundle")
    assert genesis_of(out) != genesis_of(demo.bundle)
    result = audit(out, "--chain", f"regtest:{chain_dir}", "--anchor-genesis", genesis_of(demo.bundle))
    assert_named(result, "anchors", "anchor genesis", f"not the pinned {genesis_of(demo.bundle)}")
    assert_named(result, "chain", f"anchor {demo.anchor_txid}", "anchor on chain missing from the bundle",
                 "its root is not the bundle's root at that size (history was rewritten)")
