"""`reserve-ledger export`: write an audit bundle (services/audit/bundle.py, docs/FORMATS-audit.md) from a source.

One writer, two sources: the local ledger (a data dir or a database, `LedgerSource`) and a running server's
AuditService (services/audit/export_grpc.py). A source takes its snapshot size once, first: events, tree heads and
anchors beyond it are left for the next export, so a running server may keep appending. Events are streamed
page by page; memory stays bounded however long the log. The same log gives byte-identical bundles, whichever
the source and however often it is exported. A failed export leaves no bundle behind.
"""

import pathlib
from typing import Callable, Iterator, Protocol

from ledger import limits
from ledger.anchor_policy import CONFIRMED_STATES
from ledger.anchoring import Outpoint
from ledger.anchors import Anchor
from ledger.application import ReserveLedger
from ledger.audit import HEADERS_MAX, custody_accounts
from ledger.events import parse_canonical_bytes
from ledger.key_history import ROTATION_EVENT, KeyHistory
from ledger.state import InvariantBroken, ReserveState
from ledger.tree_heads import TreeHead
from services.audit import bundle
from services.audit.witnesses import CHECKPOINTS
from services.errors import AlreadyExists, CheckFailed
from services.witness.log import log_vkey_text, origin_of, stored_checkpoint

BUNDLE_FILES = (bundle.MANIFEST, bundle.EVENTS, bundle.TREE_HEADS, bundle.PUBLIC_KEY, bundle.ANCHORS, bundle.HEADERS,
                bundle.CUSTODY, bundle.ANCHOR_GENESIS, CHECKPOINTS)


class BundleDirectoryNotEmpty(AlreadyExists):
    """Refusing to mix a new bundle with files already in the output directory."""


class LogShorterThanItsHead(CheckFailed):
    """The stored log has fewer events than a signed tree head covers: events were deleted."""


class HeaderRangeTooLong(ValueError):
    """More headers between the first anchor and the tip than a bundle carries (HEADERS_MAX)."""


class BundleSource(Protocol):
    """What the writer reads. snapshot_size() is called first and must answer the same every time."""

    def snapshot_size(self) -> int: ...
    def public_key_raw(self) -> bytes: ...
    def event_pages(self, size: int) -> Iterator[list[bytes]]: ...   # canonical bytes of positions 0..size-1
    def tree_heads(self, size: int) -> list[TreeHead]: ...           # heads of at most `size` events, by size
    def anchors(self, size: int) -> list[Anchor]: ...                # by anchor_id, tree_size <= size
    def anchor_genesis(self) -> Outpoint | None: ...                 # after anchors(): the first anchor's coin
    def custody_accounts(self, size: int) -> list[dict]: ...         # after event_pages: as of position size - 1
    def checkpoints(self, sizes: list[int]) -> dict: ...              # the log's vkey and cosigned checkpoints


class LedgerSource:
    """The local ledger: events from storage, custody accounts from the state at the snapshot.

    Every commit signs its own head in its own transaction, so the latest signed head covers the whole log
    and is the snapshot; nothing is signed here. Events stored beyond it were written behind the service's
    back (an integrity alarm): they are exported too, so that `audit` names them as covered by no head.
    """

    def __init__(self, ledger: ReserveLedger, public_key_raw: bytes, log_origin: str | None = None):
        self._ledger = ledger
        self._public_key_raw = public_key_raw
        self._log_origin = log_origin
        self._size: int | None = None

    def snapshot_size(self) -> int:
        if self._size is None:
            size = self._ledger.store.log_size()  # before the head: a commit adds its events and head at once
            head = self._ledger.store.load_tree_head()
            self._size = max(size, 0 if head is None else head.tree_size)
        return self._size

    def public_key_raw(self) -> bytes:
        return self._public_key_raw

    def event_pages(self, size: int) -> Iterator[list[bytes]]:
        position = 0
        while position < size:
            page = self._ledger.read_events(position, min(limits.REPLAY_PAGE_SIZE, size - position))
            if not page:
                raise LogShorterThanItsHead(
                    f"the log ends at position {position} but a signed tree head covers {size} events: events were "
                    "deleted; run `reserve-ledger verify` for details; no bundle written")
            for event, _ in page:
                assert event["position"] == position, (event["position"], position)
                position += 1
            yield [event_bytes for _, event_bytes in page]

    def tree_heads(self, size: int) -> list[TreeHead]:
        return self._ledger.store.list_tree_heads(tree_size_max=size)

    def anchors(self, size: int) -> list[Anchor]:
        return self._ledger.store.list_anchors(tree_size_max=size)

    def anchor_genesis(self) -> Outpoint | None:
        return self._ledger.store.load_anchor_genesis()

    def custody_accounts(self, size: int) -> list[dict]:
        try:
            return custody_accounts(self._ledger.state_as_of(size - 1) if size else ReserveState())
        except InvariantBroken as broken:  # still export every event: the audit names the one the replay refuses
            state = ReserveState()
            for event in self._ledger.iter_events(0, broken.position - 1):
                state.apply(event)
            return custody_accounts(state)


    def checkpoints(self, sizes: list[int]) -> dict:
        """The stored cosigned checkpoints of these sizes (read without the key: each was signed when sent)."""
        notes = [(size, stored_checkpoint(self._ledger.store, size)) for size in sizes]
        found = [{"tree_size": size, "note": text.decode()} for size, text in notes if text is not None]
        origin = self._log_origin or (origin_of(found[0]["note"]) if found else None)
        return {"vkey": log_vkey_text(origin, self._public_key_raw), "checkpoints": found}


def export_bundle(ledger: ReserveLedger, out_dir: str | pathlib.Path, public_key_raw: bytes, backend=None,
                  progress: Callable[[int], None] = lambda n: None) -> dict:
    """Write the bundle of the local ledger and return its manifest. ``backend`` (a ChainBackend) adds headers."""
    return write_bundle(LedgerSource(ledger, public_key_raw), out_dir, backend, progress)


def write_bundle(source: BundleSource, out_dir: str | pathlib.Path, backend=None,
                 progress: Callable[[int], None] = lambda n: None) -> dict:
    """Write the bundle of `source` into a new or empty directory; on any failure remove what was written."""
    out = pathlib.Path(out_dir)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise BundleDirectoryNotEmpty(f"{out} is not empty")
    try:
        return _write(source, out, backend, progress)
    except BaseException:
        _remove_partial_bundle(out, created)
        raise


def _write(source: BundleSource, out: pathlib.Path, backend, progress: Callable[[int], None]) -> dict:
    size = source.snapshot_size()
    keys = _write_events(source.event_pages(size), out, size, progress)
    public_key_raw = keys.first_key_for(source.public_key_raw())  # the log's first key: what an auditor pins
    heads = source.tree_heads(size)
    bundle.write_json(out, bundle.TREE_HEADS, [
        {"tree_size": h.tree_size, "root_hash": h.root_hash.hex(), "timestamp_us": h.timestamp_us,
         "signature": h.signature.hex(), "key_id": h.key_id} for h in heads])
    (out / bundle.PUBLIC_KEY).write_text(public_key_raw.hex() + "\n")
    anchors = [a.to_json() for a in source.anchors(size)]
    bundle.write_json(out, bundle.ANCHORS, anchors)
    genesis = source.anchor_genesis()  # read after the anchors: any anchor listed has its genesis recorded
    bundle.write_json(out, bundle.ANCHOR_GENESIS, None if genesis is None else genesis.to_json())
    custody = source.custody_accounts(size)
    bundle.write_json(out, bundle.CUSTODY, custody)
    wanted = sorted({size, *(a["tree_size"] for a in anchors)} - {0})
    bundle.write_json(out, CHECKPOINTS, source.checkpoints(wanted))
    counts = {"events": size, "tree_heads": len(heads), "anchors": len(anchors), "custody_accounts": len(custody),
              "headers": 0}
    if backend is not None:
        counts["headers"] = _write_headers(out, anchors, backend)
    return bundle.seal(out, counts)


def _observe_rotation(keys: KeyHistory, event_bytes: bytes) -> None:
    try:
        keys.observe(parse_canonical_bytes(event_bytes))
    except ValueError:
        pass  # not a canonical event: the audit names it


def _write_events(pages: Iterator[list[bytes]], out: pathlib.Path, size: int,
                  progress: Callable[[int], None]) -> KeyHistory:
    writer, keys = bundle.EventsWriter(out), KeyHistory()
    try:
        for page in pages:
            for event_bytes in page:
                writer.write(event_bytes)
                if ROTATION_EVENT.encode() in event_bytes:
                    _observe_rotation(keys, event_bytes)
            progress(writer.count)
    finally:
        writer.close()
    if writer.count != size:
        raise LogShorterThanItsHead(f"the source gave {writer.count} events, not the snapshot's {size}; "
                                    "no bundle written")
    return keys


def _remove_partial_bundle(out: pathlib.Path, created: bool) -> None:
    """The directory was empty (or absent) before the export: remove the bundle's files, and it if we made it."""
    for name in BUNDLE_FILES:
        (out / name).unlink(missing_ok=True)
    if created:
        try:
            out.rmdir()
        except OSError:
            pass  # someone put other files there meanwhile: leave them


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
