"""AuditService: signed tree heads, RFC 9162 proofs and canonical event bytes, read-only.

Proofs are computed from stored subtree hashes (ledger.merkle), never by rehashing the log.
Errors are LedgerErrors, mapped to statuses by the interceptor.
"""

import asyncio

from ledger import errors, limits, merkle
from ledger.anchors import BUNDLE_FIELDS, Anchor
from ledger.application import ReserveLedger
from ledger.tree_heads import TreeHead
from reserve_ledger.v1 import audit_pb2 as pb
from reserve_ledger.v1 import audit_pb2_grpc
from ledger.anchoring import ChainBackend
from ledger.event_proofs import dumps_proof
from services.anchoring.event_proofs import event_proof
from services.api.paging import offset_of, token_of, within_bytes
from services.store.signing import TreeHeadSigner
from services.witness.log import LogCheckpoints, cosigned
from services.witness.note import NoteInvalid, open_note, parse_checkpoint


def head_to_proto(head: TreeHead) -> pb.SignedTreeHead:
    return pb.SignedTreeHead(tree_size=head.tree_size, root_hash=head.root_hash, timestamp_us=head.timestamp_us,
                             signature=head.signature, key_id=head.key_id)


assert set(pb.Anchor.DESCRIPTOR.fields_by_name) == set(BUNDLE_FIELDS), "the Anchor message carries BUNDLE_FIELDS"


def anchor_to_proto(anchor: Anchor) -> pb.Anchor:
    """An anchor as a message: the fields the audit bundle carries; None (NULL columns) stays unset."""
    fields = {name: getattr(anchor, name) for name in BUNDLE_FIELDS}
    return pb.Anchor(**{name: value for name, value in fields.items() if value is not None})


def _page(rows: list, page_size: int, to_proto, kind: str, key) -> tuple[list, str]:
    """Up to page_size rows as protos, cut by bytes too, and the token naming the first row left out ("" at the
    end); `rows` holds one row more than a page when there is more."""
    page = within_bytes([to_proto(row) for row in rows[:page_size]])
    return page, token_of(kind, key(rows[len(page)])) if len(rows) > len(page) else ""


def _not_negative(**values: int) -> None:
    violations = [errors.Violation(name, "MUST_NOT_BE_NEGATIVE", f"{name} must not be negative")
                  for name, value in values.items() if value < 0]
    if violations:
        raise errors.RequestInvalid(violations)


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    def __init__(self, ledger: ReserveLedger, signer: TreeHeadSigner, chain: ChainBackend | None = None,
                 checkpoints: LogCheckpoints | None = None):
        self._checkpoints = checkpoints
        self._ledger = ledger
        self._store = ledger.store
        self._signer = signer
        self._chain = chain

    def _within_log(self, value: int, field: str) -> None:
        size = self._store.log_size()
        if value > size:
            raise errors.TreeSizeBeyondLog(f"{field} {value} is beyond the log's {size} events", field=field)

    def _leaf(self, position: int) -> pb.Leaf:
        if position >= self._store.log_size():
            raise errors.TreeSizeBeyondLog(f"no event at position {position} yet", field="position")
        _, event_bytes = self._ledger.read_events(position, 1)[0]
        return pb.Leaf(position=position, canonical_bytes=event_bytes, leaf_hash=merkle.leaf_hash(event_bytes))

    def _head(self, tree_size: int) -> TreeHead:
        _not_negative(tree_size=tree_size)
        if tree_size == 0:  # the latest head: every commit signs its own, so it covers the whole log
            head = self._signer.latest()
            if head is None:
                raise errors.TreeHeadNotFound("no tree head was ever signed", field="tree_size")
            return head
        self._within_log(tree_size, "tree_size")
        head = self._store.load_tree_head(tree_size)
        if head is None:
            raise errors.TreeHeadNotFound(f"no tree head was signed at size {tree_size}", field="tree_size")
        return head

    def GetTreeHead(self, request, context):
        return pb.GetTreeHeadResponse(tree_head=head_to_proto(self._head(request.tree_size)))

    def GetInclusionProof(self, request, context):
        _not_negative(position=request.position, tree_size=request.tree_size)
        self._within_log(request.tree_size, "tree_size")
        if request.position >= request.tree_size:
            raise errors.TreeSizeBeyondLog(f"position {request.position} is not in a tree of {request.tree_size}",
                                           field="position")
        hashes = merkle.inclusion_proof(self._store, request.position, request.tree_size)
        leaf = self._store.get_nodes([(0, request.position)])[(0, request.position)]
        return pb.GetInclusionProofResponse(position=request.position, tree_size=request.tree_size,
                                            leaf_hash=leaf, hashes=hashes)

    def GetConsistencyProof(self, request, context):
        first, second = request.first_tree_size, request.second_tree_size
        _not_negative(first_tree_size=first, second_tree_size=second)
        if first > second:
            raise errors.RequestInvalid([errors.Violation(
                "first_tree_size", "FIRST_TREE_SIZE_ABOVE_SECOND", "first_tree_size must not exceed second_tree_size")])
        self._within_log(second, "second_tree_size")
        return pb.GetConsistencyProofResponse(first_tree_size=first, second_tree_size=second,
                                              hashes=merkle.consistency_proof(self._store, first, second))

    def GetEventBytes(self, request, context):
        _not_negative(position=request.position)
        return pb.GetEventBytesResponse(leaf=self._leaf(request.position))

    async def StreamLeaves(self, request, context):
        """Bounded (to the log's size when the call began); an async generator whose reads run in the executor
        (services/api/calls.py)."""
        _not_negative(start_position=request.start_position)
        if not 0 <= request.batch_size <= limits.LEAF_BATCH_MAX:
            raise errors.RequestInvalid([errors.Violation(
                "batch_size", "BATCH_SIZE_OUT_OF_RANGE", f"batch_size must be 0..{limits.LEAF_BATCH_MAX}")])
        end = await asyncio.to_thread(self._store.log_size)
        if request.start_position > end:
            raise errors.TreeSizeBeyondLog(f"start_position {request.start_position} is beyond the log's {end} "
                                           "events", field="start_position")
        batch_size, position = request.batch_size or limits.LEAF_BATCH_DEFAULT, request.start_position
        while position < end:
            leaves = await asyncio.to_thread(self._leaves, position, min(batch_size, end - position))
            yield pb.StreamLeavesResponse(leaves=leaves)
            position = leaves[-1].position + 1

    def _leaves(self, position: int, count: int) -> list[pb.Leaf]:
        return within_bytes([pb.Leaf(position=event["position"], canonical_bytes=data, leaf_hash=merkle.leaf_hash(data))
                             for event, data in self._ledger.read_events(position, count)])

    def GetPublicKey(self, request, context):
        return pb.GetPublicKeyResponse(ed25519_public_key=self._signer.public_key_raw, key_id=self._signer.key_id,
                                       vkey=self._checkpoints.vkey.text() if self._checkpoints else "")

    def GetCheckpoint(self, request, context):
        found = self._pruned_but_cosigned(request.tree_size)
        signed, rows = found or self._checkpoints.with_cosignatures(self._head(request.tree_size), self._store)
        return pb.GetCheckpointResponse(
            note=signed.encode().decode(), tree_size=parse_checkpoint(signed.text).tree_size,
            cosignatures=[pb.WitnessCosignature(witness=r["witness"], timestamp_s=r["timestamp_s"]) for r in rows])

    def GetEventProof(self, request, context):
        _not_negative(position=request.position)
        if request.position >= self._store.log_size():
            raise errors.TreeSizeBeyondLog(f"no event at position {request.position} yet", field="position")
        if self._chain is None:
            raise errors.AnchoringNotConfigured("this service runs without --chain, so it has no anchors")
        proof = event_proof(self._ledger, self._chain, request.position)
        return pb.GetEventProofResponse(event_bytes=proof.event_bytes, ots_file=proof.ots,
                                        proof_json=dumps_proof(proof.proof), anchor_txid=proof.anchor_txid,
                                        block_hash=proof.block_hash, block_height=proof.block_height)

    def _list_bounds(self, request, kind: str) -> tuple[int, int | None, int]:
        """The page's first key (from page_token), tree_size_max (None when unset) and the page size, validated."""
        tree_size_max = request.tree_size_max if request.HasField("tree_size_max") else None
        violations = []
        if tree_size_max is not None and tree_size_max < 0:
            violations.append(errors.Violation("tree_size_max", "MUST_NOT_BE_NEGATIVE",
                                               "tree_size_max must not be negative"))
        if not 1 <= request.page_size <= limits.PAGE_SIZE_MAX:
            violations.append(errors.Violation("page_size", "PAGE_SIZE_OUT_OF_RANGE",
                                               f"page_size must be 1..{limits.PAGE_SIZE_MAX}"))
        try:
            first = offset_of(request.page_token, kind)
        except errors.RequestInvalid as error:
            violations.extend(error.violations)
        if violations:
            raise errors.RequestInvalid(violations)
        if tree_size_max is not None:
            self._within_log(tree_size_max, "tree_size_max")
        return first, tree_size_max, request.page_size

    def ListTreeHeads(self, request, context):
        first, tree_size_max, page_size = self._list_bounds(request, "tree_heads")
        heads = self._store.list_tree_heads(first, tree_size_max, page_size + 1)
        page, token = _page(heads, page_size, head_to_proto, "tree_heads", lambda head: head.tree_size)
        return pb.ListTreeHeadsResponse(tree_heads=page, next_page_token=token)

    def ListAnchors(self, request, context):
        first, tree_size_max, page_size = self._list_bounds(request, "anchors")
        anchors = self._store.list_anchors(first, tree_size_max, page_size + 1)
        page, token = _page(anchors, page_size, anchor_to_proto, "anchors", lambda anchor: anchor.anchor_id)
        return pb.ListAnchorsResponse(anchors=page, next_page_token=token)

    def _pruned_but_cosigned(self, tree_size: int):
        """A head pruned once superseded (docs/FORMATS.md §3) whose cosigned checkpoint is stored (an anchored
        witnessed head, §8): served from the store."""
        if tree_size <= 0 or tree_size > self._store.log_size() or self._store.load_tree_head(tree_size):
            return None
        found = cosigned(self._store, tree_size)
        if found is None:
            return None
        try:  # a stored row is evidence, not authority: the log's own key must have signed it, at that size
            opened = open_note(found[0].encode(), self._checkpoints.vkey)
        except NoteInvalid:
            return None
        return found if parse_checkpoint(opened.text).tree_size == tree_size else None

    def GetAnchorGenesis(self, request, context):
        genesis = self._store.load_anchor_genesis()
        if genesis is None:
            raise errors.AnchorGenesisNotRecorded("no anchor has been made yet, so no anchor genesis is recorded")
        return pb.GetAnchorGenesisResponse(txid=genesis.txid, vout=genesis.vout)
