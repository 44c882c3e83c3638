"""`reserve-ledger export`: write an audit bundle (services/bundle.py, docs/FORMATS.md) from a data dir or database.

The export is a snapshot at the log size read first: events, tree heads and anchors beyond it are left
for the next export, so a running server may keep appending. Events are streamed page by page; memory
stays bounded however long the log. Exporting the same log twice gives byte-identical bundles.
"""

import pathlib
from typing import Callable

from ledger import limits
from ledger.anchor_policy import CONFIRMED_STATES
from ledger.application import ReserveLedger
from ledger.audit import HEADERS_MAX, custody_accounts
from ledger.state import ReserveState
from services import bundle

ANCHOR_FIELDS = ("anchor_id", "tree_size", "root_hash", "txid", "raw_tx", "state", "replaces", "fee_sats", "vsize",
                 "prev_txid", "prev_vout", "prev_value_sats", "change_vout", "change_value_sats", "block_hash",
                 "block_height", "confirmations", "block_header", "txout_proof")


class BundleDirectoryNotEmpty(ValueError):
    """Refusing to mix a new bundle with files already in the output directory."""


class HeaderRangeTooLong(ValueError):
    """More headers between the first anchor and the tip than a bundle carries (HEADERS_MAX)."""


def export_bundle(ledger: ReserveLedger, out_dir: str | pathlib.Path, public_key_raw: bytes, backend=None,
                  progress: Callable[[int], None] = lambda n: None) -> dict:
    """Write the bundle and return its manifest. ``backend`` (a ChainBackend) adds headers.json."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise BundleDirectoryNotEmpty(f"{out} is not empty")
    size = ledger.store.log_size()
    _write_events(ledger, out, size, progress)
    heads = [head for head in ledger.store.list_tree_heads() if head.tree_size <= size]
    bundle.write_json(out, bundle.TREE_HEADS, [
        {"tree_size": h.tree_size, "root_hash": h.root_hash.hex(), "timestamp_us": h.timestamp_us,
         "signature": h.signature.hex(), "key_id": h.key_id} for h in heads])
    (out / bundle.PUBLIC_KEY).write_text(public_key_raw.hex() + "\n")
    anchors = [_anchor_json(a) for a in ledger.store.list_anchors() if a["tree_size"] <= size]
    bundle.write_json(out, bundle.ANCHORS, anchors)
    state = ledger.state_as_of(size - 1) if size else ReserveState()
    custody = custody_accounts(state)
    bundle.write_json(out, bundle.CUSTODY, custody)
    counts = {"events": size, "tree_heads": len(heads), "anchors": len(anchors), "custody_accounts": len(custody),
              "headers": 0}
    if backend is not None:
        counts["headers"] = _write_headers(out, anchors, backend)
    return bundle.seal(out, counts)


def _write_events(ledger: ReserveLedger, out: pathlib.Path, size: int, progress: Callable[[int], None]) -> None:
    writer = bundle.EventsWriter(out)
    try:
        position = 0
        while position < size:
            page = ledger.read_events(position, min(limits.REPLAY_PAGE_SIZE, size - position))
            if not page:
                raise RuntimeError(f"the log ended at {position}, before its size {size}")
            for event, event_bytes in page:
                assert event["position"] == position, (event["position"], position)
                writer.write(event_bytes)
                position += 1
            progress(position)
    finally:
        writer.close()


def _anchor_json(anchor: dict) -> dict:
    """An anchor row as JSON: bytes as hex; columns an older schema lacks are null."""
    row = {}
    for field in ANCHOR_FIELDS:
        value = anchor.get(field)
        row[field] = value.hex() if isinstance(value, (bytes, bytearray, memoryview)) else value
    return row


def _write_headers(out: pathlib.Path, anchors: list[dict], backend) -> int:
    """Headers from the first confirmed anchor's block to the backend's tip, in height order."""
    heights = [a["block_height"] for a in anchors if a["state"] in CONFIRMED_STATES and a["block_height"] is not None]
    if not heights:
        bundle.write_json(out, bundle.HEADERS, {"start_height": None, "headers": []})
        return 0
    start, tip = min(heights), backend.tip_height()
    if tip - start + 1 > HEADERS_MAX:
        raise HeaderRangeTooLong(f"{tip - start + 1} headers from height {start} to the tip; at most {HEADERS_MAX}")
    headers = [backend.block_header(backend.block_hash(height)).hex() for height in range(start, tip + 1)]
    bundle.write_json(out, bundle.HEADERS, {"start_height": start, "headers": headers})
    return len(headers)
