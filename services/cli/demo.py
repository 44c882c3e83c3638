"""`reserve-ledger demo`: a real server on SQLite, driven through gRPC with mTLS by several identities."""

import hashlib
import pathlib
import shutil
import tempfile
import time

import grpc

from ledger import merkle
from ledger.anchor_policy import AnchorPolicy
from ledger.anchoring import Outpoint
from ledger.event_proofs import verify_event_timestamp
from ledger.limits import SATS_PER_BTC as BTC
from ledger.tree_heads import TreeHead, verify_tree_head
from reserve_ledger.v1 import audit_pb2 as apb
from reserve_ledger.v1 import audit_pb2_grpc
from reserve_ledger.v1 import ledger_pb2 as pb
from services.bitcoin.addresses import script_pubkey_of_address
from services.bitcoin.anchor_tx import AnchorKey
from services.bitcoin.regtest.chain import RegtestChain
from services.api.certs import init_certs
from services.api.client import ledger_stub, secure_channel
from services.audit import report
from services.audit.run import audit_directory, print_result
from services.anchoring.event_proofs import event_proof
from services.audit.export import write_bundle
from services.audit.export_grpc import AuditServiceSource
from services.api.server import LedgerServer
from services.compose import ServerConfig, build_server
from services.errors import AlreadyExists
from services.cli.tables import anchors_table, balances_table, btc, cost_table, fiat, holdings_table

UNRECORDED_SATS = 50_000_000         # the demo's deliberate discrepancy: 0.5 BTC the ledger never recorded
ANCHOR_FUNDING_SATS = 1_000_000      # fees for a few thousand anchors at 1 sat/vB
DEMO_ANCHOR_INTERVAL_S = 3600.0      # the demo steps the worker itself, to show each state


def _say(text: str) -> None:
    print(f"  - {text}")


CUSTODY_ACCOUNTS = (
    ("bny-cold-1", "BNY Mellon", pb.ACCOUNT_KIND_COLD, (3, 5), "BNY cold vault A"),
    ("vault-cold-2", "Central Bank Vault", pb.ACCOUNT_KIND_COLD, (4, 7), "Basement vault 2"),
    ("ops-warm-1", "Central Bank Operations", pb.ACCOUNT_KIND_WARM, (2, 3), "Operations warm wallet"),
    ("vault-cold-3", "Central Bank Vault", pb.ACCOUNT_KIND_COLD, (5, 7), "Vault 3 (2026 ceremony)"))


def _accounts(alice, addresses: dict[str, str]) -> None:
    for account_id, custodian, kind, quorum, label in CUSTODY_ACCOUNTS:
        alice.OpenAccount(pb.OpenAccountRequest(
            request_id=f"open-{account_id}", account_id=account_id, kind=kind, custodian=custodian,
            wallet_label=label, quorum=pb.Quorum(required=quorum[0], total=quorum[1]),
            addresses=[addresses[account_id]]), timeout=10)
        _say(f"alice (operator) opened {account_id} at {custodian}, {quorum[0]}-of-{quorum[1]}")


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
        path = keys_dir / f"{account_id}.wif"
        if not path.exists():
            AnchorKey.generate("regtest").save(path)
        addresses[account_id] = AnchorKey.load(path, "regtest").address
    return addresses


def _mirror_custody_on_chain(chain: RegtestChain, dave, addresses: dict[str, str]) -> None:
    """Put each custody balance on chain at its registered address, plus one movement the ledger never saw."""
    if any(chain.utxos(script_pubkey_of_address(a)) for a in addresses.values()):
        print("\nOn chain: the custody addresses were funded by an earlier run on this data directory.")
        return
    balances = {b.account_id: b.balance_sats for b in dave.GetBalances(pb.GetBalancesRequest(), timeout=10).balances}
    for account_id, address in addresses.items():
        chain.send(script_pubkey_of_address(address), balances[account_id])
    chain.send(script_pubkey_of_address(addresses["ops-warm-1"]), UNRECORDED_SATS)
    chain.mine(1)
    print(f"\nOn chain (embedded regtest, blocks validated by libbitcoinkernel): each custody address now holds its "
          f"ledger balance, and ops-warm-1 received {btc(UNRECORDED_SATS)} BTC the ledger never recorded "
          "(a proof-of-reserves check must find it).")


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


def _auditor_bundle(address: str, certs: pathlib.Path, chain: RegtestChain, directory: pathlib.Path,
                    genesis: Outpoint) -> None:
    """An auditor exports the bundle over gRPC, then audits it against their own node, pinning the anchor genesis
    printed earlier: the reconciliation finds the 0.5 BTC the ledger never recorded."""
    out = directory / "audit-bundle"
    shutil.rmtree(out, ignore_errors=True)  # a re-run on the same data directory exports afresh
    with secure_channel(address, certs, "dave") as channel:
        counts = write_bundle(AuditServiceSource(channel), out, chain)["counts"]
    print(f"\nAuditor (dave) exports a bundle over gRPC: {counts['events']} events, {counts['anchors']} anchor(s), "
          f"{counts['headers']} block headers -> {out}")
    print(f"  and audits it against the chain (reserve-ledger audit {out} --chain regtest:{chain.directory} "
          f"--anchor-genesis {genesis}):")
    result = report.audit_result(audit_directory(out, chain, f"regtest:{chain.directory}", anchor_genesis=genesis))
    print_result(result)
    html_path, _ = report.write_report(result, directory / "audit-report.html")
    _say(f"verdict {result['verdict']}: the only failure is the deliberate unrecorded movement "
         f"({btc(UNRECORDED_SATS)} BTC to ops-warm-1)" if result["failures_total"] == 1 else
         f"verdict {result['verdict']}")
    _say(f"report with charts: {html_path} (and its JSON twin)")


def run_demo(data_dir: str | None) -> int:
    if data_dir and pathlib.Path(data_dir).exists() and (not pathlib.Path(data_dir).is_dir()
                                                         or any(pathlib.Path(data_dir).iterdir())):
        raise AlreadyExists(f"--data-dir {data_dir} is not empty; the demo needs a new or empty directory")
    directory = pathlib.Path(data_dir or tempfile.mkdtemp(prefix="reserve-ledger-demo-"))
    certs = init_certs(directory / "certs")
    chain_dir = directory / "regtest"
    chain = RegtestChain.create(chain_dir)  # the 'network' side: miners and the custodians' wallets
    try:
        server = build_server(ServerConfig(listen="127.0.0.1:0", data_dir=str(directory), certs_dir=str(certs),
                                           create_store=True, metrics_listen=None, chain=f"regtest:{chain_dir}",
                                           anchor_policy=AnchorPolicy(interval_s=DEMO_ANCHOR_INTERVAL_S,
                                                                     block_poll_interval_s=DEMO_ANCHOR_INTERVAL_S))
                              ).start()
    except BaseException:
        chain.close()
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
        _mirror_custody_on_chain(chain, dave, addresses)
        _anchors(server, chain, address, certs, directory)
        _auditor_bundle(address, certs, chain, directory, _anchor_genesis(address, certs))
    finally:
        server.stop()
        chain.close()
    return 0
