"""The anchor worker: commits the latest signed tree head to Bitcoin, one transaction per period at most.

Each step (run every `interval_s` by `serve`, or once by `reserve-ledger anchor`):
  1. take the anchor turn (PostgreSQL: a try-lock; another replica may be anchoring -> do nothing);
  2. re-broadcast anchors recorded but not yet accepted (a crash between recording and broadcasting);
  3. refresh every non-final anchor against the best chain: confirmations move it forward; an anchor whose
     block left the best chain returns to `broadcast` and is re-sent (reorg);
  4. if an anchor is still unconfirmed `replace_after_blocks` after its broadcast, replace it (full RBF:
     same coin, higher fee, committing to the newest tree head);
  5. otherwise, if no anchor is in flight and the newest tree head is larger than the last anchored one,
     build one transaction spending the previous anchor's change (or, for the first, the anchor wallet's
     genesis coin, recorded once in the store), record it, then broadcast it.
Recording before broadcasting means a crash can neither lose an anchor nor make two for one head.
Between steps, `follow_chain` (every `block_poll_interval_s`) runs step 3 alone whenever the tip changed, so a
new block's confirmations and a reorg are seen within seconds, not at the next period.
"""

import dataclasses
import logging
from decimal import Decimal
from typing import Callable

from ledger import anchor_policy as policy_rules
from ledger.anchor_policy import AnchorPolicy
from ledger.anchors import Anchor
from ledger.anchoring import ChainBackend, Outpoint, Utxo, encode_payload, fee_rate_for_anchor, parse_transaction
from services.bitcoin.anchor_tx import AnchorKey, build_anchor_psbt, build_anchor_tx, finalize_signed_psbt
from services.bitcoin.errors import BroadcastRejected
from services.store.signing import TreeHeadSigner

log = logging.getLogger("reserve_ledger.anchors")


class AnchorTurnTaken(RuntimeError):
    """Another replica holds the anchor turn."""


class AnchorRefusedByNode(RuntimeError):
    """The backend's test-accept refused a freshly built anchor (nothing was recorded or sent)."""


class NoFundingCoin(RuntimeError):
    """The anchor key holds no confirmed coin to pay the first anchor's fee."""


@dataclasses.dataclass
class StepReport:
    leader: bool = True
    built: list[str] = dataclasses.field(default_factory=list)       # txids recorded and broadcast
    replaced: list[str] = dataclasses.field(default_factory=list)    # txids superseded this step
    reorged: list[str] = dataclasses.field(default_factory=list)     # txids that left the best chain


class AnchorWorker:
    def __init__(self, store, signer: TreeHeadSigner, backend: ChainBackend, key: AnchorKey,
                 policy: AnchorPolicy, clock_us: Callable[[], int], head_choice: Callable[[], object] | None = None):
        self._store, self._signer, self._backend = store, signer, backend
        # which head to anchor (tree_size, root_hash): the latest signed one unless the server prefers a
        # witnessed one (services/witness/gatherer.py `witnessed_head_choice`)
        self._anchor_head = head_choice or signer.latest
        self._key, self._policy, self._clock_us = key, policy, clock_us
        self._tip_seen: tuple[int, str] | None = None

    @property
    def key(self) -> AnchorKey:
        """The fee-only anchor wallet's key (fund its address; it never holds reserve coins)."""
        return self._key

    def step(self) -> StepReport:
        with self._store.anchor_turn() as leader:
            if not leader:
                return StepReport(leader=False)
            report = StepReport()
            tip = self._backend.tip_height()
            self._broadcast_recorded(tip)
            self._refresh(tip, report)
            self._tip_seen = (tip, self._backend.block_hash(tip))
            in_flight = [a for a in self._anchors() if a.state == "broadcast"]
            if in_flight:
                self._maybe_replace(in_flight[-1], tip, report)
            else:
                self._maybe_anchor(tip, report)
            return report

    def follow_chain(self) -> StepReport:
        """Refresh the anchors (confirmations, reorgs) if the best chain's tip changed since last seen."""
        tip = self._backend.tip_height()
        tip_seen = (tip, self._backend.block_hash(tip))
        if tip_seen == self._tip_seen:
            return StepReport()
        with self._store.anchor_turn() as leader:
            if not leader:
                return StepReport(leader=False)
            report = StepReport()
            self._refresh(tip, report)
            self._tip_seen = tip_seen
            return report

    # --- bookkeeping ------------------------------------------------------------------------------------

    def _anchors(self) -> list[Anchor]:
        return self._store.list_anchors()

    def _update(self, anchor: Anchor, **changes) -> None:
        self._store.update_anchor(anchor.anchor_id, updated_us=self._clock_us(), **changes)

    def _broadcast_recorded(self, tip: int) -> None:
        for anchor in self._anchors():
            if anchor.state == "built":
                self._send(anchor, tip)

    def _send(self, anchor: Anchor, tip: int) -> bool:
        try:
            self._backend.broadcast(anchor.raw_tx)
        except BroadcastRejected as error:  # a transport failure propagates: the anchor stays `built`
            block_hash, _ = self._status(anchor.txid)
            if block_hash is None:
                log.warning("anchor %s refused: %s", anchor.txid, error)
                self._update(anchor, state="abandoned")
                return False
        self._update(anchor, state="broadcast", broadcast_height=tip)
        return True

    def _status(self, txid: str) -> tuple[str | None, int]:
        try:
            return self._backend.transaction_status(txid)
        except LookupError:
            return None, 0

    def _refresh(self, tip: int, report: StepReport) -> None:
        for anchor in self._anchors():
            if anchor.state not in ("broadcast", "included", "anchored", "replaced"):
                continue
            block_hash, confirmations = self._status(anchor.txid)
            if block_hash is None:
                if anchor.state in policy_rules.CONFIRMED_STATES:
                    report.reorged.append(anchor.txid)
                    log.warning("anchor %s left the best chain (reorg); re-sending", anchor.txid)
                    self._update(anchor, state="broadcast", block_hash=None, block_height=None, confirmations=0,
                                 broadcast_height=tip, block_header=None, txout_proof=None)
                    self._resend_quietly(anchor)
                continue
            state = policy_rules.state_for_confirmations(confirmations, self._policy)
            if anchor.state == "replaced":
                self._replaced_one_won(anchor)
            self._update(anchor, state=state, block_hash=block_hash, confirmations=confirmations,
                         block_height=tip - confirmations + 1, **self._block_evidence(anchor, block_hash))

    def _block_evidence(self, anchor: Anchor, block_hash: str) -> dict[str, bytes]:
        """The header and merkleblock of the block holding the anchor, fetched once per block."""
        if anchor.block_hash == block_hash and anchor.txout_proof is not None:
            return {}
        return {"block_header": self._backend.block_header(block_hash),
                "txout_proof": self._backend.txout_proof(anchor.txid, block_hash)}

    def _resend_quietly(self, anchor: Anchor) -> None:
        try:
            self._backend.broadcast(anchor.raw_tx)
        except BroadcastRejected as error:  # it may conflict with a replacement; the next steps decide
            log.info("re-sending %s after a reorg: %s", anchor.txid, error)

    def _replaced_one_won(self, anchor: Anchor) -> None:
        """A transaction we had replaced was mined after all: its replacements lost."""
        for other in self._anchors():
            if other.replaces == anchor.anchor_id and other.state in policy_rules.IN_FLIGHT_STATES:
                self._update(other, state="abandoned")

    # --- building ---------------------------------------------------------------------------------------

    def _maybe_anchor(self, tip: int, report: StepReport) -> None:
        head = self._anchor_head()
        chain = [a for a in self._anchors() if a.state not in ("replaced", "abandoned")]
        if head is None or head.tree_size == 0 or (chain and chain[-1].tree_size >= head.tree_size):
            return  # nothing new, nothing sent
        coin = self._change_of(chain[-1]) if chain else self._funding_coin()
        fee_rate = fee_rate_for_anchor(self._estimate(), self._policy.fee_rate_max_sat_per_vb)
        anchor = self._record(coin, head, fee_rate, tip, replaces=None)
        if self._send(anchor, tip):
            report.built.append(anchor.txid)

    def _maybe_replace(self, stuck: Anchor, tip: int, report: StepReport) -> None:
        if not policy_rules.needs_replacement(stuck.broadcast_height, tip, self._policy):
            return
        head = self._anchor_head()
        coin = Utxo(stuck.prev_txid, stuck.prev_vout, stuck.prev_value_sats)
        fee_rate = policy_rules.replacement_fee_rate(stuck.fee_sats, stuck.vsize, self._estimate(), self._policy)
        replacement = self._record(coin, head, fee_rate, tip, replaces=stuck.anchor_id)
        if self._send(replacement, tip):
            self._update(stuck, state="replaced")
            report.replaced.append(stuck.txid)
            report.built.append(replacement.txid)

    def _estimate(self) -> Decimal:
        return Decimal(self._backend.estimate_fee_sat_per_vb(self._policy.confirmation_target_blocks))

    def _change_of(self, anchor: Anchor) -> Utxo:
        return Utxo(anchor.txid, anchor.change_vout, anchor.change_value_sats)

    def _funding_coin(self) -> Utxo:
        """The coin the chain of anchors starts from: the recorded genesis once there is one (a first anchor that
        was refused leaves it unspent), else the largest confirmed coin of the anchor key."""
        genesis = self._store.load_anchor_genesis()
        coins = self._backend.utxos(self._key.script_pubkey)
        if genesis is not None:
            found = [c for c in coins if Outpoint(c.txid, c.vout) == genesis]
            if not found:
                raise NoFundingCoin(f"the anchor genesis {genesis} is not an unspent coin of {self._key.address}, "
                                    "and no anchor spends it")
            return found[0]
        spent = {(a.prev_txid, a.prev_vout) for a in self._anchors()}
        coins = [c for c in coins if (c.txid, c.vout) not in spent]
        if not coins:
            raise NoFundingCoin(f"no confirmed coin pays the anchor address {self._key.address}")
        return max(coins, key=lambda c: c.value_sats)

    def _record_genesis_if_first(self, coin: Utxo) -> None:
        """A coin that is no anchor's change starts the chain: record it once, before the first anchor spending it
        (the store refuses a different one later)."""
        if not any(a.txid == coin.txid and a.change_vout == coin.vout for a in self._anchors()):
            self._store.record_anchor_genesis(Outpoint(coin.txid, coin.vout), self._clock_us())

    def _record(self, coin: Utxo, head, fee_rate: Decimal, tip: int, replaces: int | None) -> Anchor:
        tx = build_anchor_tx(coin, self._key, encode_payload(head.tree_size, head.root_hash), fee_rate,
                             self._policy.fee_max_sats, tip)
        self._test_accept(tx.raw)
        return self._insert(coin, head.tree_size, head.root_hash, tx.raw, replaces)

    def _test_accept(self, raw: bytes) -> None:
        """Ask the node's policy first (where the backend can) so that a refused anchor is never recorded."""
        allowed, reason = self._backend.test_accept(raw)
        if not allowed:
            raise AnchorRefusedByNode(f"{parse_transaction(raw).txid}: {reason}")

    def _insert(self, coin: Utxo, tree_size: int, root_hash: bytes, raw: bytes, replaces: int | None) -> Anchor:
        tx = parse_transaction(raw)
        self._record_genesis_if_first(coin)
        change_vout = 1
        fee = coin.value_sats - sum(out.value_sats for out in tx.outputs)
        now = self._clock_us()
        anchor = Anchor(anchor_id=0, tree_size=tree_size, root_hash=root_hash, txid=tx.txid, raw_tx=raw,
                        vsize=tx.vsize, fee_sats=fee, prev_txid=coin.txid, prev_vout=coin.vout,
                        prev_value_sats=coin.value_sats, change_vout=change_vout,
                        change_value_sats=tx.outputs[change_vout].value_sats, state="built", replaces=replaces,
                        created_us=now, updated_us=now)
        anchor = dataclasses.replace(anchor, anchor_id=self._store.insert_anchor(anchor))
        log.info("anchor %s records tree size %d (fee %d sats, %d vB)", tx.txid, tree_size, fee, tx.vsize)
        return anchor

    # --- the PSBT flow: an external signer holds the key ---------------------------------------------------

    def prepare_psbt(self) -> dict | None:
        """The next anchor as an unsigned PSBT and what `submit_signed_psbt` needs to check the signed one;
        None when there is nothing new or an anchor is still in flight."""
        with self._store.anchor_turn() as leader:
            if not leader:
                return None
            tip = self._backend.tip_height()
            self._refresh(tip, StepReport())
            anchors = self._anchors()
            chain = [a for a in anchors if a.state not in ("replaced", "abandoned")]
            head = self._signer.latest()
            if any(a.state in policy_rules.IN_FLIGHT_STATES for a in anchors) or head is None or head.tree_size == 0 or (
                    chain and chain[-1].tree_size >= head.tree_size):
                return None
            coin = self._change_of(chain[-1]) if chain else self._funding_coin()
            fee_rate = fee_rate_for_anchor(self._estimate(), self._policy.fee_rate_max_sat_per_vb)
            payload = encode_payload(head.tree_size, head.root_hash)
            psbt = build_anchor_psbt(coin, self._key.public_key, payload, fee_rate, self._policy.fee_max_sats, tip,
                                     self._backend.raw_transaction(coin.txid))
            return {"format": "reserve-ledger/anchor-psbt-request/v1", "psbt": psbt, "tree_size": head.tree_size,
                    "root_hash": head.root_hash.hex(), "prev_txid": coin.txid, "prev_vout": coin.vout,
                    "prev_value_sats": coin.value_sats, "public_key": self._key.public_key.hex()}

    def submit_signed_psbt(self, request: dict, signed_b64: str) -> str:
        """Check the signer's PSBT against the request, record the anchor, then broadcast it."""
        coin = Utxo(request["prev_txid"], request["prev_vout"], request["prev_value_sats"])
        root = bytes.fromhex(request["root_hash"])
        payload = encode_payload(request["tree_size"], root)
        raw = finalize_signed_psbt(signed_b64, unsigned_b64=request["psbt"], prev=coin, payload=payload,
                                   script_pubkey=self._key.script_pubkey, fee_max_sats=self._policy.fee_max_sats)
        self._test_accept(raw)
        with self._store.anchor_turn() as leader:
            if not leader:
                raise AnchorTurnTaken("another replica is anchoring right now; submit again in a moment")
            known = {a.txid: a for a in self._anchors()}
            anchor = known.get(parse_transaction(raw).txid) or self._insert(coin, request["tree_size"], root, raw,
                                                                            None)
            if anchor.state == "built":
                self._send(anchor, self._backend.tip_height())
            return anchor.txid
