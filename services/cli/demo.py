"""`reserve-ledger demo`: a real server on SQLite, driven through gRPC with mTLS by several identities."""

import hashlib
import pathlib
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import grpc

from ledger import merkle
from ledger.anchor_policy import AnchorPolicy
from ledger.anchoring import Outpoint
from ledger.event_proofs import verify_event_timestamp
from ledger.limits import SATS_PER_BTC as BTC
from ledger.tree_heads import TreeHead, verify_tree_head
from reserve_ledger.v1 import alerts_pb2 as apb_alerts
from reserve_ledger.v1 import audit_pb2 as apb
from reserve_ledger.v1 import audit_pb2_grpc
from reserve_ledger.v1 import ledger_pb2 as pb
from services.bitcoin.addresses import script_pubkey_of_address
from services.bitcoin.anchor_tx import AnchorKey
from services.bitcoin.regtest.chain import RegtestChain
from services.api.certs import init_certs
from services.api.client import alert_stub, ledger_stub, secure_channel
from services.audit import report
from services.audit.run import audit_directory, print_result
from services.anchoring.event_proofs import event_proof
from services.audit.export import write_bundle
from services.audit.export_grpc import AuditServiceSource
from services.api.server import LedgerServer
from services.compose import ServerConfig, build_server
from services.errors import AlreadyExists
from services.witness.gatherer import parse_witness
from services.reserves.challenge import (CHALLENGE_FILE, SIGNATURES_DIR, build_challenge, control_report,
                                         write_challenge)
from services.reserves.descriptors import expand
from services.reserves.dev_signer import DevKeys, dev_multisig, sign_challenge, write_signatures
from services.cli.tables import anchors_table, balances_table, btc, cost_table, fiat, holdings_table

DEMO_LOG_ORIGIN = "demo.reserve-ledger.example/ledger"
DEMO_WITNESS_NAME = "witness.audit-office.example/w1"
WITNESS_WAIT_S = 60.0
UNRECORDED_SATS = 50_000_000         # the demo's deliberate discrepancy: 0.5 BTC the ledger never recorded
ANCHOR_FUNDING_SATS = 1_000_000      # fees for a few thousand anchors at 1 sat/vB
DEMO_ANCHOR_INTERVAL_S = 3600.0      # the demo steps the worker itself, to show each state
DEMO_MONITOR_INTERVAL_S = 0.5        # the reserves monitor runs on its own, polling the tip this often
ALERT_WAIT_S = 60.0
ALERT_SETTLE_S = 0.5


def _say(text: str) -> None:
    print(f"  - {text}")


CUSTODY_ACCOUNTS = (
    ("bny-cold-1", "BNY Mellon", pb.ACCOUNT_KIND_COLD, (3, 5), "BNY cold vault A"),
    ("vault-cold-2", "Central Bank Vault", pb.ACCOUNT_KIND_COLD, (2, 3), "Basement vault 2 (2-of-3 descriptor)"),
    ("ops-warm-1", "Central Bank Operations", pb.ACCOUNT_KIND_WARM, (2, 3), "Operations warm wallet"),
    ("vault-cold-3", "Central Bank Vault", pb.ACCOUNT_KIND_COLD, (5, 7), "Vault 3 (2026 ceremony)"))


MULTISIG_ACCOUNT = "vault-cold-2"   # a ranged 2-of-3 wsh(sortedmulti) descriptor instead of an address
MULTISIG_COSIGNERS = ("vault-2-governor", "vault-2-treasurer", "vault-2-auditor-escrow")
MULTISIG_FUNDING = ((0, 0, 4 * BTC), (0, 4, 3 * BTC), (1, 1, 1 * BTC))   # (branch, index, sats): receive and change


def _accounts(alice, addresses: dict[str, str]) -> None:
    for account_id, custodian, kind, quorum, label in CUSTODY_ACCOUNTS:
        registered = ({"descriptor": addresses[account_id]} if account_id == MULTISIG_ACCOUNT
                      else {"addresses": [addresses[account_id]]})
        alice.OpenAccount(pb.OpenAccountRequest(
            request_id=f"open-{account_id}", account_id=account_id, kind=kind, custodian=custodian,
            wallet_label=label, quorum=pb.Quorum(required=quorum[0], total=quorum[1]), **registered), timeout=10)
        _say(f"alice (operator) opened {account_id} at {custodian}, {quorum[0]}-of-{quorum[1]}"
             + (f", descriptor {addresses[account_id][:30]}…{addresses[account_id][-9:]}" if "descriptor" in registered
                else ""))


def _purchases(alice, bob) -> None:
    trades = (("buy-1", "bny-cold-1", 5 * BTC, "61234.50", "USD", "306172.50", "Coinbase Prime", "2026-11-02"),
              ("buy-2", "vault-cold-2", 8 * BTC, "56780.25", "EUR", "454242.00", "Bitstamp Institutional", "2026-11-05"),
              ("buy-3", "bny-cold-1", 25 * BTC, "62010.00", "USD", "1550250.00", "Cumberland OTC", "2026-11-09"))
    for request_id, account, sats, price, currency, total, venue, date in trades:
        reply = alice.RecordPurchase(pb.RecordPurchaseRequest(
            request_id=request_id, account_id=account, quantity_sats=sats, price_per_btc=price,
            currency_code=currency, fiat_total=total, counterparty=venue, trade_reference=f"T-{request_id}",
            trade_date=date), timeout=10)
        note = "waits for approval (above threshold)" if reply.pending_approval else "posted"
        _say(f"alice recorded {btc(sats)} BTC at {fiat(price, currency)} {currency}/BTC from {venue}: {note}")
        if reply.pending_approval:
            bob.ApprovePurchase(pb.ApprovePurchaseRequest(request_id=f"approve-{request_id}",
                                                          purchase_id=reply.purchase_id), timeout=10)
            _say(f"bob (approver) approved {reply.purchase_id}")


def _transfers(alice, bob, carol) -> None:
    first = alice.ProposeTransfer(pb.ProposeTransferRequest(
        request_id="move-1", debit_account_id="bny-cold-1", credit_account_id="ops-warm-1",
        amount_sats=2 * BTC, memo="top up operations wallet"), timeout=10)
    _say(f"alice proposed {first.transfer_id}: {btc(2 * BTC)} BTC bny-cold-1 -> ops-warm-1 (held until approved)")
    try:
        alice.ApproveTransfer(pb.ApproveTransferRequest(request_id="self-approve", transfer_id=first.transfer_id),
                              timeout=10)
    except grpc.RpcError as error:
        _say(f"alice tried to approve it: {error.code().name} ({error.details()})")
    carol.ApproveTransfer(pb.ApproveTransferRequest(request_id="approve-move-1", transfer_id=first.transfer_id),
                          timeout=10)
    _say(f"carol (approver) approved {first.transfer_id}")
    second = alice.ProposeTransfer(pb.ProposeTransferRequest(
        request_id="move-2", debit_account_id="vault-cold-2", credit_account_id="ops-warm-1",
        amount_sats=BTC, memo="unplanned top-up"), timeout=10)
    bob.RejectTransfer(pb.RejectTransferRequest(request_id="reject-move-2", transfer_id=second.transfer_id,
                                                reason="not in the liquidity plan"), timeout=10)
    _say(f"bob rejected {second.transfer_id} ({btc(BTC)} BTC vault-cold-2 -> ops-warm-1): hold released")


def _four_eyes(frank_operator, frank_approver) -> None:
    proposal = frank_operator.ProposeTransfer(pb.ProposeTransferRequest(
        request_id="frank-move", debit_account_id="vault-cold-2", credit_account_id="ops-warm-1",
        amount_sats=BTC // 2, memo="frank's proposal"), timeout=10)
    _say(f"frank (operator certificate) proposed {proposal.transfer_id}")
    try:
        frank_approver.ApproveTransfer(pb.ApproveTransferRequest(request_id="frank-approves-himself",
                                                                 transfer_id=proposal.transfer_id), timeout=10)
    except grpc.RpcError as error:
        _say(f"frank (approver certificate) tried to approve it himself: {error.code().name} ({error.details()})")
    frank_approver.RejectTransfer(pb.RejectTransferRequest(request_id="frank-withdraws",
                                                           transfer_id=proposal.transfer_id,
                                                           reason="withdrawn: needs a second approver"), timeout=10)


def _custody_change(alice, bob) -> None:
    txid = hashlib.sha256(b"demo custody move").hexdigest()
    change = alice.ProposeCustodyChange(pb.ProposeCustodyChangeRequest(
        request_id="ceremony-2026", from_account_id="bny-cold-1", to_account_id="vault-cold-3",
        amount_sats=10 * BTC, reason="repatriate to own vault after key ceremony",
        key_ceremony_reference="KC-2026-11-20", new_quorum=pb.Quorum(required=5, total=7), txid=txid,
        network_fee_sats=2_500), timeout=10)
    bob.ApproveCustodyChange(pb.ApproveCustodyChangeRequest(request_id="approve-ceremony-2026",
                                                            custody_change_id=change.custody_change_id), timeout=10)
    _say(f"custody change {change.custody_change_id}: {btc(10 * BTC)} BTC BNY -> vault-cold-3 (5-of-7), "
         f"fee {btc(2_500)} BTC, "
         "proposed by alice, approved by bob")


def _report(dave) -> None:
    balances = dave.GetBalances(pb.GetBalancesRequest(), timeout=10)
    rows = [{"account_id": b.account_id, "kind": pb.AccountKind.Name(b.kind).removeprefix("ACCOUNT_KIND_").lower(),
             "balance_sats": b.balance_sats, "held_sats": b.held_sats, "available_sats": b.available_sats}
            for b in balances.balances]
    print(f"\nBalances as of position {balances.position} (as seen by dave, auditor):")
    print(balances_table(rows))
    holdings = dave.GetHoldings(pb.GetHoldingsRequest(), timeout=10)
    print("\nHoldings per custodian:")
    print(holdings_table({"custodians": [{"custodian": c.custodian, "wallet_count": c.wallet_count,
                                          "balance_sats": c.balance_sats, "held_sats": c.held_sats}
                                         for c in holdings.custodians], "total_sats": holdings.total_sats}))
    cost = dave.GetCostBasis(pb.GetCostBasisRequest(), timeout=10)
    print("\nCost basis:")
    print(cost_table({"currencies": [{"currency_code": c.currency_code, "quantity_sats": c.quantity_sats,
                                      "fiat_total": c.fiat_total, "average_price_per_btc": c.average_price_per_btc,
                                      "remaining_sats": c.remaining_sats, "remaining_cost_fifo": c.remaining_cost_fifo}
                                     for c in cost.currencies]}))


def _audit(address: str, certs) -> None:
    """dave checks, with ledger/ verifiers only, a signed tree head, an inclusion and a consistency proof."""
    audit = audit_pb2_grpc.AuditServiceStub(secure_channel(address, certs, "dave"))
    public_key = audit.GetPublicKey(apb.GetPublicKeyRequest(), timeout=10).ed25519_public_key
    proto = audit.GetTreeHead(apb.GetTreeHeadRequest(), timeout=10).tree_head
    head = TreeHead(proto.tree_size, proto.root_hash, proto.timestamp_us, proto.signature, proto.key_id)
    position = head.tree_size // 2
    leaf = audit.GetEventBytes(apb.GetEventBytesRequest(position=position), timeout=10).leaf
    path = audit.GetInclusionProof(apb.GetInclusionProofRequest(position=position, tree_size=head.tree_size),
                                   timeout=10).hashes
    print(f"\nAudit (dave): tree head of {head.tree_size} events, root {head.root_hash.hex()[:16]}…, "
          f"signature {'valid' if verify_tree_head(public_key, head) else 'INVALID'} (key {head.key_id[:16]}…)")
    included = merkle.verify_inclusion(merkle.leaf_hash(leaf.canonical_bytes), position, head.tree_size,
                                       list(path), head.root_hash)
    print(f"  event {position} ({len(leaf.canonical_bytes)} canonical bytes) is in that tree: "
          f"{'proof valid' if included else 'PROOF INVALID'} ({len(path)} hashes)")


def _custody_addresses(directory: pathlib.Path) -> dict[str, str]:
    """A watch-only regtest address per custody account (the custodians' keys are not the ledger's business;
    the demo keeps them in DATA_DIR/custody-keys so that a rerun on the same directory finds the same ones)."""
    keys_dir = directory / "custody-keys"
    keys_dir.mkdir(mode=0o700, exist_ok=True)
    addresses = {}
    for account_id, *_ in CUSTODY_ACCOUNTS:
        if account_id == MULTISIG_ACCOUNT:
            addresses[account_id] = _multisig_descriptor(keys_dir)
            continue
        path = keys_dir / f"{account_id}.wif"
        if not path.exists():
            AnchorKey.generate("regtest").save(path)
        addresses[account_id] = AnchorKey.load(path, "regtest").address
    return addresses


def _multisig_descriptor(keys_dir: pathlib.Path) -> str:
    """The 2-of-3 descriptor of vault-cold-2; the cosigners' (development) keys go to custody-keys/*.xprv, where
    only the demo's signer of control challenges reads them."""
    descriptor, keys = dev_multisig(list(MULTISIG_COSIGNERS), 2)
    for name, key in zip(MULTISIG_COSIGNERS, keys):
        path = keys_dir / f"{name}.xprv"
        if not path.exists():
            path.write_text(key.to_string() + "\n")
            path.chmod(0o600)
    return descriptor


def _custody_scripts(account_id: str, registered: str, balance_sats: int) -> list[tuple[bytes, int]]:
    """Where each custody balance is put on chain: the address, or for the descriptor account several derived
    scripts on its receive and change branches (the audit must expand the descriptor to find them)."""
    if account_id != MULTISIG_ACCOUNT:
        return [(script_pubkey_of_address(registered), balance_sats)]
    expanded = expand(registered)
    assert sum(sats for *_, sats in MULTISIG_FUNDING) == balance_sats, balance_sats
    return [(expanded.scripts(branch, [index])[0].script_pubkey, sats) for branch, index, sats in MULTISIG_FUNDING]


def _mirror_custody_on_chain(chain: RegtestChain, dave, addresses: dict[str, str]) -> None:
    """Put each custody balance on chain at its registered address, plus one movement the ledger never saw."""
    if any(chain.utxos(script_pubkey_of_address(a)) for i, a in addresses.items() if i != MULTISIG_ACCOUNT):
        print("\nOn chain: the custody addresses were funded by an earlier run on this data directory.")
        return
    balances = {b.account_id: b.balance_sats for b in dave.GetBalances(pb.GetBalancesRequest(), timeout=10).balances}
    for account_id, address in addresses.items():
        for script, sats in _custody_scripts(account_id, address, balances[account_id]):
            chain.send(script, sats)
    chain.send(script_pubkey_of_address(addresses["ops-warm-1"]), UNRECORDED_SATS)
    chain.mine(1)
    print(f"\nOn chain (embedded regtest, blocks validated by libbitcoinkernel): each custody address now holds its "
          f"ledger balance ({MULTISIG_ACCOUNT}'s spread over {len(MULTISIG_FUNDING)} scripts derived from its 2-of-3 "
          f"descriptor, receive and change), and ops-warm-1 received {btc(UNRECORDED_SATS)} BTC the ledger never "
          "recorded (a proof-of-reserves check must find it).")


def _follow_alerts(address: str, certs: pathlib.Path):
    """dave (auditor) follows the reserves monitor's alerts from now on (StreamAlerts), on a reader thread."""
    stub = alert_stub(address, certs, "dave")
    position = ledger_stub(address, certs, "dave").GetBalances(pb.GetBalancesRequest(), timeout=10).position + 1
    call = stub.StreamAlerts(apb_alerts.StreamAlertsRequest(start_position=position))
    events: queue.Queue = queue.Queue()

    def read() -> None:
        try:
            for response in call:
                for event in response.events:
                    events.put(event)
        except grpc.RpcError:
            pass  # cancelled once the demo has shown the alert

    threading.Thread(target=read, name="demo-alerts", daemon=True).start()
    return events, call


def _show_alert(events, call, chain: RegtestChain, mined_s: float) -> None:
    """The live monitor's alerts for the block just mined (the unrecorded 0.5 BTC), as dave received them, and how
    long after the block the first one arrived."""
    try:
        raised = [events.get(timeout=ALERT_WAIT_S)]
        latency_ms = (time.perf_counter() - mined_s) * 1000
        time.sleep(ALERT_SETTLE_S)   # the other alerts of the same block, if any, arrive in the same step
        while not events.empty():
            raised.append(events.get_nowait())
    except queue.Empty:
        _say(f"live monitor: no alert within {ALERT_WAIT_S:.0f} s")
        return
    finally:
        call.cancel()
    print("\nLive reserves monitor (in the server; dave follows StreamAlerts):")
    for event in raised:
        alert = event.alert
        _say(f"alert {alert.discrepancy_id} (position {event.position}): {alert.account_id}: "
             f"{btc(alert.movement_sats)} BTC moved in block {alert.block_height} ({alert.block_hash[:16]}…, tx "
             f"{alert.txids[0][:16]}…) with no ledger event explaining it ({alert.finding}); on chain "
             f"{btc(alert.onchain_sats)} BTC vs ledger {btc(alert.ledger_sats)} BTC")
    _say(f"raised {latency_ms:.0f} ms after the block was mined, before any later block (tip still "
         f"{chain.tip_height()}; the monitor polls every {DEMO_MONITOR_INTERVAL_S:g} s); an alert stays open until a "
         "correction approved by a second identity closes it")


def _anchors(server: LedgerServer, chain: RegtestChain, address: str, certs: pathlib.Path,
             directory: pathlib.Path) -> None:
    """The service's anchor worker, stepped now instead of waiting for its period; the 'network' mines blocks."""
    worker = server.anchor_worker
    if not chain.utxos(worker.key.script_pubkey):
        chain.send(worker.key.script_pubkey, ANCHOR_FUNDING_SATS)
        chain.mine(1)
    print(f"\nAnchoring (fee-only wallet {worker.key.address}; it never holds reserve coins):")
    started_s = time.perf_counter()
    built = worker.step().built
    chain.mine(1)
    worker.step()
    first_confirmation_ms = (time.perf_counter() - started_s) * 1000
    chain.mine(5)
    worker.step()
    anchors = server.ledger.store.list_anchors()
    print(anchors_table(anchors))
    print(f"  anchor genesis (the coin the first anchor spent; auditors pin it): {_anchor_genesis(address, certs)}")
    if built:
        _say(f"tree head -> anchor broadcast -> first confirmation took {first_confirmation_ms:.0f} ms on the embedded "
             "chain (blocks mined on demand; on mainnet expect ~10 minutes per block)")
    _proof(server, chain, directory)


def _anchor_genesis(address: str, certs: pathlib.Path) -> Outpoint:
    """What an auditor (dave) asks the service for once, and pins in every later audit."""
    with secure_channel(address, certs, "dave") as channel:
        answer = audit_pb2_grpc.AuditServiceStub(channel).GetAnchorGenesis(apb.GetAnchorGenesisRequest(), timeout=10)
    return Outpoint(answer.txid, answer.vout)


def _proof(server: LedgerServer, chain: RegtestChain, directory: pathlib.Path) -> None:
    position = server.ledger.store.log_size() // 2
    proof = event_proof(server.ledger, chain, position)
    out = directory / "proofs" / f"event-{position}"
    proof.write(out)
    header = chain.block_header(proof.block_hash)
    height = verify_event_timestamp(proof.event_bytes, proof.ots, header)
    _say(f"event {position} proven to block {height} ({proof.block_hash[:16]}…): {out}/event.bin.ots, "
         f"{len(proof.ots)} bytes, checked against the block header")
    _say("the stock client checks it against a node that has the block: serve the chain with `reserve-ledger "
         f"regtest-node --dir {chain.directory}`, then `ots --btc-regtest --bitcoin-node URL verify -f "
         f"{out}/event.bin {out}/event.bin.ots` with the RPC URL it prints")


class DemoWitness:
    """An independent witness (as another agency would run it): its own process, state directory and key."""

    def __init__(self, directory: pathlib.Path, log_vkey: str):
        from services.witness.witness import init_state
        state = directory / "witness"
        self.vkey = init_state(state, DEMO_WITNESS_NAME).text()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", "witness", "serve", "--state", str(state), "--listen",
             "127.0.0.1:0", "--log", f"{DEMO_LOG_ORIGIN}={log_vkey}"], stdout=subprocess.PIPE, text=True)
        self.process.stdout.readline()
        listening = self.process.stdout.readline()
        if not listening.startswith("listening on "):
            self.stop()
            raise RuntimeError("the demo's witness process did not start")
        self.url = listening.split()[-1]
        self.argument = f"{DEMO_WITNESS_NAME}={self.vkey}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def _log_vkey(directory: pathlib.Path) -> str:
    """The tree-head key is made before the server starts, so the witness can be told the log's vkey."""
    from services.store.signing import SIGNING_KEY_FILE_NAME, load_or_create_signing_key
    from services.witness import note
    from services.witness.log import LogCheckpoints
    key = load_or_create_signing_key(directory / SIGNING_KEY_FILE_NAME)
    return LogCheckpoints(DEMO_LOG_ORIGIN, note.KeySigner(key)).vkey.text()


def _witnessed(address: str, certs: pathlib.Path, witness: DemoWitness) -> None:
    """Wait until the witness has cosigned the latest head (the server sends it within about a second)."""
    audit = audit_pb2_grpc.AuditServiceStub(secure_channel(address, certs, "dave"))
    size = audit.GetTreeHead(apb.GetTreeHeadRequest(), timeout=10).tree_head.tree_size
    started_s = time.perf_counter()
    while True:
        answer = audit.GetCheckpoint(apb.GetCheckpointRequest(), timeout=10)
        if answer.tree_size >= size and answer.cosignatures:
            break
        if time.perf_counter() - started_s > WITNESS_WAIT_S:
            raise RuntimeError(f"the witness did not cosign the head of {size} events within {WITNESS_WAIT_S:.0f} s")
        time.sleep(0.1)
    print(f"\nWitness ({DEMO_WITNESS_NAME}, a separate process at {witness.url}) cosigned the head of "
          f"{answer.tree_size} events (C2SP checkpoint; waited {time.perf_counter() - started_s:.1f} s):")
    print("".join(f"    {line}".rstrip() + "\n" for line in answer.note.splitlines()), end="")
    _say("it keeps its own record of the last head it cosigned and refuses any history that does not extend it")


def _auditor_bundle(address: str, certs: pathlib.Path, chain: RegtestChain, directory: pathlib.Path,
                    genesis: Outpoint, witness: DemoWitness) -> None:
    """An auditor exports the bundle over gRPC, then audits it against their own node, pinning the anchor genesis
    printed earlier: the reconciliation finds the 0.5 BTC the ledger never recorded."""
    out = directory / "audit-bundle"
    shutil.rmtree(out, ignore_errors=True)  # a re-run on the same data directory exports afresh
    with secure_channel(address, certs, "dave") as channel:
        counts = write_bundle(AuditServiceSource(channel), out, chain)["counts"]
    print(f"\nAuditor (dave) exports a bundle over gRPC: {counts['events']} events, {counts['anchors']} anchor(s), "
          f"{counts['headers']} block headers -> {out}")
    proofs = _control_challenge(out, chain, directory)
    print(f"  and audits it against the chain, requiring the witness's cosignature (reserve-ledger audit {out} "
          f"--chain regtest:{chain.directory} --anchor-genesis {genesis} --witness {witness.argument} "
          f"--control-proofs {proofs}):")
    result = report.audit_result(audit_directory(out, chain, f"regtest:{chain.directory}", anchor_genesis=genesis,
                                                 witnesses=(parse_witness(witness.argument, with_url=False),),
                                                 witness_quorum=1, control_proofs=proofs))
    print_result(result)
    html_path, _ = report.write_report(result, directory / "audit-report.html")
    _say(f"verdict {result['verdict']}: the only failure is the deliberate unrecorded movement "
         f"({btc(UNRECORDED_SATS)} BTC to ops-warm-1)" if result["failures_total"] == 1 else
         f"verdict {result['verdict']}")
    _say(f"report with charts: {html_path} (and its JSON twin)")


def _control_challenge(bundle_dir: pathlib.Path, chain: RegtestChain, directory: pathlib.Path) -> pathlib.Path:
    """Proof of key control (BIP-322): dave challenges the custodians over the bundle's custody accounts; they
    answer with signatures (here the demo's development signer, with the keys in custody-keys/); dave checks
    each one with Bitcoin Core's interpreter (libbitcoinkernel)."""
    proofs = directory / "control-proofs"
    shutil.rmtree(proofs, ignore_errors=True)
    proofs.mkdir()
    challenge = build_challenge(bundle_dir, chain, "regtest")
    write_challenge(challenge, proofs / CHALLENGE_FILE)
    funded = sum(len(a["funded_scripts"]) for a in challenge["accounts"])
    print(f"\nProof of key control: dave writes a challenge (reserve-ledger reserves challenge --bundle {bundle_dir} "
          f"--chain regtest:{chain.directory} --out {proofs / CHALLENGE_FILE}): nonce {challenge['nonce'][:16]}…, tree "
          f"size {challenge['tree_size']}, height {challenge['height']}, {funded} funded scripts in "
          f"{len(challenge['accounts'])} accounts")
    answers = sign_challenge(challenge, DevKeys.load(directory / "custody-keys"))
    signed = write_signatures(answers, proofs / SIGNATURES_DIR)
    _say(f"the custodians answer with BIP-322 signatures ({len(signed)} files in {proofs / SIGNATURES_DIR}; "
         f"the 2-of-3 vault signs each of its scripts with two cosigners, as a spend would)")
    result = control_report(proofs / CHALLENGE_FILE, proofs / SIGNATURES_DIR, chain)
    for account in result["accounts"]:
        _say(f"{account['account_id']}: control proven for {btc(account['proven_sats'])} of "
             f"{btc(account['funded_sats'])} BTC ({len(account['scripts'])} script(s), checked by libbitcoinkernel)")
    _say(f"control proven for {btc(result['proven_sats'])} of {btc(result['funded_sats'])} BTC at height "
         f"{result['coins_read_at_height']}")
    return proofs


def run_demo(data_dir: str | None) -> int:
    if data_dir and pathlib.Path(data_dir).exists() and (not pathlib.Path(data_dir).is_dir()
                                                         or any(pathlib.Path(data_dir).iterdir())):
        raise AlreadyExists(f"--data-dir {data_dir} is not empty; the demo needs a new or empty directory")
    directory = pathlib.Path(data_dir or tempfile.mkdtemp(prefix="reserve-ledger-demo-"))
    certs = init_certs(directory / "certs")
    chain_dir = directory / "regtest"
    chain = RegtestChain.create(chain_dir)  # the 'network' side: miners and the custodians' wallets
    witness = None
    try:
        witness = DemoWitness(directory, _log_vkey(directory))
        server = build_server(ServerConfig(listen="127.0.0.1:0", data_dir=str(directory), certs_dir=str(certs),
                                           create_store=True, metrics_listen=None, chain=f"regtest:{chain_dir}",
                                           anchor_policy=AnchorPolicy(interval_s=DEMO_ANCHOR_INTERVAL_S,
                                                                     block_poll_interval_s=DEMO_ANCHOR_INTERVAL_S),
                                           monitor_interval_s=DEMO_MONITOR_INTERVAL_S,
                                           log_origin=DEMO_LOG_ORIGIN, witnesses=(f"{witness.argument}@{witness.url}",),
                                           witness_quorum=1)
                              ).start()
    except BaseException:
        chain.close()
        if witness is not None:
            witness.stop()
        raise
    address = f"127.0.0.1:{server.port}"
    print(f"Reserve Ledger demo: server on {address} (mTLS), SQLite data in {directory}, "
          f"embedded regtest chain in {chain_dir}")
    try:
        alice, bob, carol, dave = (ledger_stub(address, certs, name) for name in ("alice", "bob", "carol", "dave"))
        addresses = _custody_addresses(directory)
        _accounts(alice, addresses)
        _purchases(alice, bob)
        _transfers(alice, bob, carol)
        _four_eyes(ledger_stub(address, certs, "frank-operator"), ledger_stub(address, certs, "frank-approver"))
        _custody_change(alice, bob)
        _report(dave)
        _audit(address, certs)
        alerts = _follow_alerts(address, certs)
        _mirror_custody_on_chain(chain, dave, addresses)
        _show_alert(*alerts, chain, time.perf_counter())
        _witnessed(address, certs, witness)
        _anchors(server, chain, address, certs, directory)
        _auditor_bundle(address, certs, chain, directory, _anchor_genesis(address, certs), witness)
    finally:
        server.stop()
        chain.close()
        witness.stop()
    return 0
