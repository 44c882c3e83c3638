"""The export's second source: a running server's AuditService, read with auditor (or admin) credentials.

The snapshot is the latest signed tree head (GetTreeHead signs one for the current log first), so the bundle's
events are covered by a head of exactly their number. Events come from StreamLeaves in streams of at most
STREAM_EVENTS_MAX events, each with its own deadline; tree heads and anchors from the paged ListTreeHeads and
ListAnchors up to the snapshot size; the anchor genesis from GetAnchorGenesis. Custody accounts are not asked
for: they are the fold (ledger/state.py) of the very events written to the bundle, replayed here as they stream
by, as `reserve-ledger audit` will.
"""

from typing import Iterator

import grpc

from ledger import limits
from ledger.anchoring import Outpoint, OutpointInvalid, parse_outpoint
from ledger.anchors import BUNDLE_FIELDS, Anchor
from ledger.audit import custody_accounts
from ledger.events import parse_canonical_bytes
from ledger.state import ReserveState
from ledger.tree_heads import TreeHead
from reserve_ledger.v1 import audit_pb2 as pb
from reserve_ledger.v1 import audit_pb2_grpc
from services.witness.log import log_vkey_text, origin_of

CALL_TIMEOUT_S = 30.0
STREAM_TIMEOUT_S = 300.0
STREAM_EVENTS_MAX = 100_000   # events per StreamLeaves call; the next call continues where it stopped


class ServerAnswerInvalid(RuntimeError):
    """The server answered something no correct server sends (a leaf out of order, a short stream)."""


def anchor_of_proto(anchor: pb.Anchor) -> Anchor:
    """The anchor the local store would give (its local-only fields left at their defaults): unset optional
    fields (a NULL column) are None."""
    fields = pb.Anchor.DESCRIPTOR.fields_by_name
    return Anchor(**{name: None if fields[name].has_presence and not anchor.HasField(name) else getattr(anchor, name)
                     for name in BUNDLE_FIELDS})


class AuditServiceSource:
    """services/export.BundleSource over an mTLS channel of an auditor or admin identity."""

    def __init__(self, channel, page_size: int = limits.PAGE_SIZE_MAX, leaf_batch_size: int = limits.LEAF_BATCH_MAX,
                 stream_events_max: int = STREAM_EVENTS_MAX):
        self._stub = audit_pb2_grpc.AuditServiceStub(channel)
        self._page_size, self._leaf_batch_size, self._stream_events_max = page_size, leaf_batch_size, stream_events_max
        self._size: int | None = None
        self._state = ReserveState()

    def snapshot_size(self) -> int:
        if self._size is None:
            self._size = self._stub.GetTreeHead(pb.GetTreeHeadRequest(), timeout=CALL_TIMEOUT_S).tree_head.tree_size
        return self._size

    def public_key_raw(self) -> bytes:
        return self._stub.GetPublicKey(pb.GetPublicKeyRequest(), timeout=CALL_TIMEOUT_S).ed25519_public_key

    def event_pages(self, size: int) -> Iterator[list[bytes]]:
        position = 0
        while position < size:
            stop = min(size, position + self._stream_events_max)
            stream = self._stub.StreamLeaves(pb.StreamLeavesRequest(start_position=position,
                                                                    batch_size=self._leaf_batch_size),
                                             timeout=STREAM_TIMEOUT_S)
            try:
                for batch in stream:
                    page = [self._replayed(leaf, position + n) for n, leaf in enumerate(batch.leaves[:stop - position])]
                    position += len(page)
                    yield page
                    if position == stop:
                        break
            finally:
                stream.cancel()  # the stream runs to the log's end; the snapshot may end before it
            if position < stop:
                raise ServerAnswerInvalid(f"StreamLeaves ended at position {position}, before the snapshot's {size}")

    def _replayed(self, leaf: pb.Leaf, position: int) -> bytes:
        if leaf.position != position:
            raise ServerAnswerInvalid(f"StreamLeaves sent position {leaf.position} where {position} was due")
        self._state.apply(parse_canonical_bytes(leaf.canonical_bytes))
        return leaf.canonical_bytes

    def tree_heads(self, size: int) -> list[TreeHead]:
        return [TreeHead(h.tree_size, h.root_hash, h.timestamp_us, h.signature, h.key_id) for h in
                self._pages(self._stub.ListTreeHeads, pb.ListTreeHeadsRequest, "tree_heads", size)]

    def anchors(self, size: int) -> list[Anchor]:
        return [anchor_of_proto(a) for a in self._pages(self._stub.ListAnchors, pb.ListAnchorsRequest, "anchors", size)]

    def anchor_genesis(self) -> Outpoint | None:
        try:
            answer = self._stub.GetAnchorGenesis(pb.GetAnchorGenesisRequest(), timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:  # ANCHOR_GENESIS_NOT_RECORDED: no anchor yet
                return None
            raise
        try:
            return parse_outpoint(f"{answer.txid}:{answer.vout}")
        except OutpointInvalid as error:
            raise ServerAnswerInvalid(f"GetAnchorGenesis: {error}") from None

    def custody_accounts(self, size: int) -> list[dict]:
        assert self._state.position == size - 1, (self._state.position, size)  # event_pages replayed them all
        return custody_accounts(self._state)

    def checkpoints(self, sizes: list[int]) -> dict:
        """The server's checkpoints of these sizes that carry at least one cosignature (as a local export)."""
        published = self._stub.GetPublicKey(pb.GetPublicKeyRequest(), timeout=CALL_TIMEOUT_S)
        found = []
        for size in sizes:
            try:
                answer = self._stub.GetCheckpoint(pb.GetCheckpointRequest(tree_size=size), timeout=CALL_TIMEOUT_S)
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND:  # a head pruned since: nothing to carry
                    continue
                raise
            if answer.cosignatures:
                found.append({"tree_size": size, "note": answer.note})
        # as a local export: the checkpoints' own origin names the vkey when there are any
        vkey = log_vkey_text(origin_of(found[0]["note"]), published.ed25519_public_key) if found else published.vkey
        return {"vkey": vkey, "checkpoints": found}

    def _pages(self, call, request_type, field: str, size: int) -> Iterator:
        token = ""
        while True:  # bounded by the server's rows: each page moves the token on, the last one has none
            page = call(request_type(tree_size_max=size, page_size=self._page_size, page_token=token),
                        timeout=CALL_TIMEOUT_S)
            rows = getattr(page, field)
            yield from rows
            if not page.next_page_token:
                return
            if page.next_page_token == token or not rows:
                raise ServerAnswerInvalid(f"{request_type.__name__}: the page token did not move on")
            token = page.next_page_token
