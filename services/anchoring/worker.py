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
import json
import logging
from decimal import Decimal
from typing import Callable

from ledger import anchor_policy as policy_rules
from ledger.anchor_policy import AnchorPolicy
from ledger.anchors import Anchor
from ledger.anchoring import (
    AnchoringError, ChainBackend, Outpoint, Utxo, encode_payload, fee_rate_for_anchor, parse_transaction,
)
from ledger.tree_heads import verify_tree_head
from services.bitcoin.addresses import address_of_script_pubkey
from services.bitcoin.anchor_tx import (
    AnchorKey, KeyOrigin, build_anchor_psbt, build_anchor_tx, finalize_signed_psbt, p2wpkh_script_pubkey,
    psbt_unsigned_tx, read_psbt,
)
from services.bitcoin.errors import BroadcastRejected
from services.store.signing import TreeHeadSigner

log = logging.getLogger("reserve_ledger.anchors")
REQUEST_FORMAT = "reserve-ledger/anchor-psbt-request/v2"


class AnchorTurnTaken(RuntimeError):
    """Another replica holds the anchor turn."""


class AnchorRefusedByNode(RuntimeError):
    """The node refused an anchor: its test-accept (nothing was recorded or sent) or its broadcast (the anchor is
    recorded as abandoned)."""


class AnchorRequestRefused(AnchoringError):
    """A signed PSBT that answers no outstanding request, or whose request no longer fits the ledger."""


class NothingToAnchor(RuntimeError):
    """No new signed tree head to anchor, or an anchor is still in flight."""


class AnchorWalletMismatch(AnchoringError):
    """The chain of anchors continues at an output of another key than the one given."""


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
        if chain:
            self._check_pays_this_key(coin, self._change_script(chain[-1]))
        fee_rate = fee_rate_for_anchor(self._estimate(), self._policy.fee_rate_max_sat_per_vb)
        anchor = self._record(coin, head, fee_rate, tip, replaces=None)
        if self._send(anchor, tip):
            report.built.append(anchor.txid)

    def _maybe_replace(self, stuck: Anchor, tip: int, report: StepReport) -> None:
        if not policy_rules.needs_replacement(stuck.broadcast_height, tip, self._policy):
            return
        witness = parse_transaction(stuck.raw_tx).witnesses
        if not witness or witness[0][-1:] != (self._key.public_key,):
            log.warning("anchor %s is stuck, but another key signed it: bump it with `anchor psbt`", stuck.txid)
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

    def _record(self, coin: Utxo, head, fee_rate: Decimal, tip: int, replaces: int | None,
                change_public_key: bytes | None = None) -> Anchor:
        tx = build_anchor_tx(coin, self._key, encode_payload(head.tree_size, head.root_hash), fee_rate,
                             self._policy.fee_max_sats, tip, change_public_key=change_public_key)
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

    # --- moving the chain of anchors to another wallet -----------------------------------------------------

    def rotate(self, new_public_key: bytes) -> Anchor:
        """Anchor the newest head with this key, paying the change to ``new_public_key``: the next anchor is
        signed by the new wallet (an external signer, or a new key file), and the chain from the genesis stays
        one unbroken chain (docs/FORMATS-anchoring.md §7)."""
        if new_public_key == self._key.public_key:
            raise AnchorWalletMismatch("the new anchor key is the current one: nothing to move")
        p2wpkh_script_pubkey(new_public_key)
        with self._store.anchor_turn() as leader:
            if not leader:
                raise AnchorTurnTaken("another replica is anchoring right now; rotate again in a moment")
            tip = self._backend.tip_height()
            self._refresh(tip, StepReport())
            head = self._signer.latest()
            in_flight = [a for a in self._anchors() if a.state in policy_rules.IN_FLIGHT_STATES]
            planned = "" if in_flight else self._plan_next(head, tip)
            if isinstance(planned, str):
                raise NothingToAnchor(planned or f"anchor {in_flight[-1].txid} is in flight: rotate once it is "
                                                 "confirmed (the rotation spends its change)")
            coin, fee_rate, _ = planned
            last = next((a for a in self._anchors() if (a.txid, a.change_vout) == (coin.txid, coin.vout)), None)
            if last is not None:  # else a confirmed coin of this key (the first anchor)
                self._check_pays_this_key(coin, self._change_script(last))
            anchor = self._record(coin, head, fee_rate, tip, replaces=None, change_public_key=new_public_key)
            self._send_or_refuse(anchor, tip)
            log.info("anchor %s moves the chain of anchors to key %s", anchor.txid, new_public_key.hex())
            return anchor

    # --- the PSBT flow: an external signer holds the key (docs/FORMATS-anchoring.md §7) -----------------------

    def prepare_psbt(self, key_origin: KeyOrigin | None = None, change_public_key: bytes | None = None,
                     change_key_origin: KeyOrigin | None = None) -> tuple[dict | None, str]:
        """(the request, "") for the next anchor as an unsigned PSBT, recorded as the one outstanding request; or
        (None, why not). A stuck anchor (unconfirmed `replace_after_blocks` after its broadcast) gets a
        replacement request: same coin, higher fee, the newest head. ``change_public_key`` moves the chain of
        anchors to another wallet (the change pays it)."""
        with self._store.anchor_turn() as leader:
            if not leader:
                return None, "another replica is anchoring right now; try again in a moment"
            tip = self._backend.tip_height()
            self._refresh(tip, StepReport())
            head = self._signer.latest()
            planned = self._plan_next(head, tip)
            if isinstance(planned, str):
                return None, planned
            coin, fee_rate, stuck = planned
            prev_raw = self._coin_of_this_key(coin)
            psbt = build_anchor_psbt(coin, self._key.public_key, encode_payload(head.tree_size, head.root_hash),
                                     fee_rate, self._policy.fee_max_sats, tip, prev_raw, key_origin=key_origin,
                                     change_public_key=change_public_key, change_key_origin=change_key_origin)
            request = self._request(psbt, head, coin, change_public_key or self._key.public_key, key_origin, stuck)
            self._store.record_anchor_request(json.dumps(request, sort_keys=True), head.tree_size,
                                              request["issued_us"])
            return request, ""

    def _request(self, psbt: str, head, coin: Utxo, change_public_key: bytes, key_origin: KeyOrigin | None,
                 stuck: Anchor | None) -> dict:
        """The request file's content (docs/FORMATS-anchoring.md §7), also recorded in the store as issued."""
        return {"format": REQUEST_FORMAT, "txid": parse_transaction(psbt_unsigned_tx(read_psbt(psbt))).txid,
                "psbt": psbt, "tree_size": head.tree_size, "root_hash": head.root_hash.hex(),
                "prev_txid": coin.txid, "prev_vout": coin.vout, "prev_value_sats": coin.value_sats,
                "public_key": self._key.public_key.hex(), "change_public_key": change_public_key.hex(),
                "key_origin": None if key_origin is None else str(key_origin),
                "replaces": None if stuck is None else stuck.txid, "issued_us": self._clock_us()}

    def _plan_next(self, head, tip: int) -> "tuple[Utxo, Decimal, Anchor | None] | str":
        """(coin, fee rate, the stuck anchor it replaces or None) for the next anchor, or why there is none."""
        anchors = self._anchors()
        in_flight = [a for a in anchors if a.state in policy_rules.IN_FLIGHT_STATES]
        if in_flight:
            stuck = in_flight[-1]
            if stuck.state != "broadcast" or not policy_rules.needs_replacement(stuck.broadcast_height, tip,
                                                                                self._policy):
                return (f"nothing to anchor: anchor {stuck.txid} (tree size {stuck.tree_size}) is in flight; a fee "
                        f"bump is offered once it is unconfirmed {self._policy.replace_after_blocks} blocks after "
                        "its broadcast")
            fee_rate = policy_rules.replacement_fee_rate(stuck.fee_sats, stuck.vsize, self._estimate(), self._policy)
            return Utxo(stuck.prev_txid, stuck.prev_vout, stuck.prev_value_sats), fee_rate, stuck
        chain = [a for a in anchors if a.state not in ("replaced", "abandoned")]
        if head is None or head.tree_size == 0 or (chain and chain[-1].tree_size >= head.tree_size):
            return "nothing to anchor: the newest tree head is already anchored"
        coin = self._change_of(chain[-1]) if chain else self._funding_coin()
        return coin, fee_rate_for_anchor(self._estimate(), self._policy.fee_rate_max_sat_per_vb), None

    def _coin_of_this_key(self, coin: Utxo) -> bytes:
        """The raw transaction creating ``coin``, which must pay this worker's key: the chain of anchors may have
        moved to another wallet (a rotation), or an earlier anchor may have been signed by another key."""
        raw = self._backend.raw_transaction(coin.txid)
        outputs = parse_transaction(raw).outputs
        self._check_pays_this_key(coin, outputs[coin.vout].script_pubkey if coin.vout < len(outputs) else b"")
        return raw

    @staticmethod
    def _change_script(anchor: Anchor) -> bytes:
        return parse_transaction(anchor.raw_tx).outputs[anchor.change_vout].script_pubkey

    def _check_pays_this_key(self, coin: Utxo, script: bytes) -> None:
        if script != self._key.script_pubkey:
            where = address_of_script_pubkey(script, self._key.network) or script.hex()
            raise AnchorWalletMismatch(
                f"the chain of anchors continues at {coin.txid}:{coin.vout}, which pays {where}, not this key's "
                f"address {self._key.address}: sign with the key of {where}, or move the chain to this key first "
                "(`reserve-ledger anchor rotate`, signed by the current key)")

    def submit_signed_psbt(self, request: dict, signed_psbt: bytes | str) -> str:
        """Check the signer's PSBT against the outstanding request (recorded when issued) and the ledger's own
        signed heads and chain of anchors; record the anchor, broadcast it, and report the node's verdict."""
        expected = self._outstanding_request(request)
        coin = Utxo(expected["prev_txid"], expected["prev_vout"], expected["prev_value_sats"])
        root = bytes.fromhex(expected["root_hash"])
        raw = finalize_signed_psbt(
            signed_psbt, unsigned_b64=expected["psbt"], prev=coin,
            payload=encode_payload(expected["tree_size"], root), script_pubkey=self._key.script_pubkey,
            fee_max_sats=self._policy.fee_max_sats,
            change_script_pubkey=p2wpkh_script_pubkey(bytes.fromhex(expected["change_public_key"])))
        with self._store.anchor_turn() as leader:
            if not leader:
                raise AnchorTurnTaken("another replica is anchoring right now; submit again in a moment")
            tip = self._backend.tip_height()
            self._refresh(tip, StepReport())
            stuck = self._check_request_current(expected)
            self._test_accept(raw)
            anchor = self._insert(coin, expected["tree_size"], root, raw, None if stuck is None else stuck.anchor_id)
            self._send_or_refuse(anchor, tip)
            if stuck is not None:
                self._update(stuck, state="replaced")
            self._store.clear_anchor_request()
            return anchor.txid

    def _outstanding_request(self, request: dict) -> dict:
        """The recorded request, if ``request`` is exactly it (else a named refusal: stale or edited)."""
        recorded = self._store.load_anchor_request()
        if recorded is None:
            raise AnchorRequestRefused("no anchor request is outstanding (none was issued, or its anchor was "
                                       "submitted already): run `reserve-ledger anchor psbt` for a new one")
        expected = json.loads(recorded[0])
        if request.get("txid") != expected["txid"] or request.get("psbt") != expected["psbt"]:
            raise AnchorRequestRefused(
                f"stale request (tree size {request.get('tree_size')!r}, txid {request.get('txid')!r}): the "
                f"outstanding request is for tree size {expected['tree_size']} (txid {expected['txid']}); sign "
                "that one, or run `reserve-ledger anchor psbt` for a new one")
        edited = sorted(k for k in set(request) | set(expected) if request.get(k) != expected.get(k))
        if edited:
            raise AnchorRequestRefused(f"the request file differs from the request recorded when it was issued, "
                                       f"in {', '.join(edited)}: it was edited")
        if expected["public_key"] != self._key.public_key.hex():
            raise AnchorRequestRefused(f"the request is for the signer key {expected['public_key']}, not "
                                       f"{self._key.public_key.hex()}")
        return expected

    def _check_request_current(self, expected: dict) -> Anchor | None:
        """The request still fits the ledger: a head this ledger signed, larger than the last anchored one, and
        the coin where the chain of anchors continues now (or the stuck anchor it replaces, still unconfirmed).
        Returns that stuck anchor, or None."""
        size, root = expected["tree_size"], bytes.fromhex(expected["root_hash"])
        head = self._store.load_tree_head(size)
        if head is None or head.root_hash != root or not verify_tree_head(self._signer.public_key_raw, head):
            raise AnchorRequestRefused(f"tree size {size} with root {root.hex()[:16]}… is not a head this ledger "
                                       "signed")
        anchors = self._anchors()
        coin = Outpoint(expected["prev_txid"], expected["prev_vout"])
        if expected["replaces"] is not None:
            return self._check_replacement(anchors, expected["replaces"], coin, size)
        in_flight = [a for a in anchors if a.state in policy_rules.IN_FLIGHT_STATES]
        if in_flight:
            raise AnchorRequestRefused(f"stale request: anchor {in_flight[-1].txid} (tree size "
                                       f"{in_flight[-1].tree_size}) was made since; run `anchor psbt` again")
        chain = [a for a in anchors if a.state not in ("replaced", "abandoned")]
        if chain and chain[-1].tree_size >= size:
            raise AnchorRequestRefused(f"stale request: tree size {chain[-1].tree_size} is anchored already "
                                       f"(by {chain[-1].txid})")
        if chain and coin != Outpoint(chain[-1].txid, chain[-1].change_vout):
            raise AnchorRequestRefused(f"stale request: it spends {coin}, but the chain of anchors continues at "
                                       f"{chain[-1].txid}:{chain[-1].change_vout}")
        if not chain:
            self._check_first_coin(coin)
        return None

    def _check_replacement(self, anchors: list[Anchor], replaced_txid: str, coin: Outpoint, size: int) -> Anchor:
        stuck = next((a for a in anchors if a.txid == replaced_txid), None)
        if stuck is None or stuck.state != "broadcast":
            raise AnchorRequestRefused(f"stale request: the anchor it replaces, {replaced_txid}, is "
                                       f"{stuck.state if stuck else 'unknown'} now; run `anchor psbt` again")
        if coin != Outpoint(stuck.prev_txid, stuck.prev_vout) or size < stuck.tree_size:
            raise AnchorRequestRefused(f"the request does not replace {replaced_txid}: another coin or a smaller "
                                       "tree")
        return stuck

    def _check_first_coin(self, coin: Outpoint) -> None:
        genesis = self._store.load_anchor_genesis()
        if genesis is not None and coin != genesis:
            raise AnchorRequestRefused(f"the request spends {coin}, not the anchor genesis {genesis}")
        if genesis is None and coin not in {Outpoint(c.txid, c.vout) for c in self._backend.utxos(
                self._key.script_pubkey)}:
            raise AnchorRequestRefused(f"the request spends {coin}, which is no confirmed unspent coin of "
                                       f"{self._key.address}")

    def _send_or_refuse(self, anchor: Anchor, tip: int) -> None:
        """Broadcast a recorded anchor; if the node refuses it, record it as abandoned and say why (every backend:
        Esplora cannot test-accept, so its broadcast is the first verdict)."""
        try:
            self._backend.broadcast(anchor.raw_tx)
        except BroadcastRejected as error:
            if self._status(anchor.txid)[0] is None:
                self._update(anchor, state="abandoned")
                raise AnchorRefusedByNode(f"{anchor.txid}: the node refused it: {error}; recorded as abandoned "
                                          "(not broadcast)") from None
        self._update(anchor, state="broadcast", broadcast_height=tip)
