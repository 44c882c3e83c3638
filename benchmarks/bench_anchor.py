"""Anchoring costs: the anchor transaction, time from a new tree head to its first confirmation on the
embedded regtest chain, and the size of one event's proofs in a large log.

    python benchmarks/bench_anchor.py --events 1000000 [--data-dir DIR] [--block-txs 3000]

Fills the ledger if it holds fewer events (as bench_replay.py does), then on a fresh embedded chain: funds the
anchor wallet, steps the anchor worker (signs a head over every event, builds, signs and broadcasts the
anchor), puts `--block-txs` other transactions in the mempool (so the anchor's block has a mainnet-like
merkle branch), mines one block, steps again (the anchor is `included`), and writes the proof of the event
in the middle of the log. On mainnet the wait for a block (~10 min) dominates; this measures our part.
"""

import argparse
import json
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from bench_replay import fill  # noqa: E402

from ledger.anchor_policy import AnchorPolicy  # noqa: E402
from ledger.application import ReserveLedger  # noqa: E402
from ledger.event_proofs import dumps_proof, verify_event_timestamp  # noqa: E402
from services.anchoring.worker import AnchorWorker  # noqa: E402
from services.bitcoin.anchor_tx import AnchorKey  # noqa: E402
from services.bitcoin.regtest.chain import ANYONE_CAN_SPEND, RegtestChain  # noqa: E402
from services.store.config import storage_env  # noqa: E402
from services.anchoring.event_proofs import event_proof  # noqa: E402
from services.compose import clock_us  # noqa: E402
from services.store.signing import SIGNING_KEY_FILE_NAME, TreeHeadSigner, load_or_create_signing_key  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--block-txs", type=int, default=0, help="other transactions in the anchor's block")
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    data_dir = pathlib.Path(args.data_dir or tempfile.mkdtemp(prefix="bench-anchor-"))
    ledger = ReserveLedger(storage_env(str(data_dir), None))
    signer = TreeHeadSigner(ledger.store, load_or_create_signing_key(data_dir / SIGNING_KEY_FILE_NAME), clock_us)
    if signer.open_log() is not None:  # from now on each commit signs its own head, as in the server
        raise SystemExit(f"{data_dir}: {signer.alarm}")
    if ledger.store.log_size() < args.events:
        fill(ledger, args.events)
    size = ledger.store.log_size()
    with tempfile.TemporaryDirectory(prefix="bench-anchor-chain-") as chain_dir, RegtestChain.create(chain_dir) as chain:
        key = AnchorKey.generate("regtest")
        chain.send(key.script_pubkey, 1_000_000)
        chain.mine(1)
        worker = AnchorWorker(ledger.store, signer, chain, key, AnchorPolicy(), clock_us)
        _fill_mempool(chain, args.block_txs)

        started_s = time.perf_counter()
        (txid,) = worker.step().built
        broadcast_s = time.perf_counter()
        chain.mine(1)
        mined_s = time.perf_counter()
        worker.step()
        included_s = time.perf_counter()
        anchor = next(a for a in ledger.store.list_anchors() if a.txid == txid)
        assert anchor.state == "included", anchor.state
        print(f"log size: {size:,} events; anchor block holds {args.block_txs + 2} transactions")
        print(f"anchor transaction: {anchor.vsize} vB, fee {anchor.fee_sats} sats at "
              f"{chain.estimate_fee_sat_per_vb(6)} sat/vB, {len(anchor.raw_tx)} bytes raw")
        print(f"tree head -> first confirmation: {(included_s - started_s) * 1000:.1f} ms "
              f"(sign+build+broadcast {(broadcast_s - started_s) * 1000:.1f} ms, mine {(mined_s - broadcast_s) * 1000:.1f}"
              f" ms, confirm {(included_s - mined_s) * 1000:.1f} ms)")

        position = size // 2
        proof = event_proof(ledger, chain, position)
        height = verify_event_timestamp(proof.event_bytes, proof.ots, chain.block_header(proof.block_hash))
        assert height == anchor.block_height
        print(f"event {position:,}: {len(proof.event_bytes)} event bytes, .ots {len(proof.ots)} bytes, "
              f"proof.json {len(dumps_proof(proof.proof))} bytes compact / "
              f"{len(json.dumps(proof.proof, indent=2))} bytes indented, "
              f"{len(proof.proof['inclusion_proof'])} log hashes")
    ledger.close()


def _fill_mempool(chain: RegtestChain, count: int) -> None:
    for _ in range(count):
        chain.send(ANYONE_CAN_SPEND, 10_000)


if __name__ == "__main__":
    main()
