"""Domain events of the reserve ledger and their canonical form.

Every event is recorded on the single `Book` aggregate: its version n is the event at log position
n - 1, so positions are dense, gap-free and known when the event is decided. Events are immutable;
corrections are new events (a transfer to or from nominal:adjustments that names what it corrects).

Canonical form (docs/FORMATS.md): a JSON object with sorted keys, no insignificant whitespace, UTF-8,
integers only (amounts in satoshis; prices and fiat amounts as decimal strings):
  {"actor", "actor_role", "data": {...event fields...}, "format_version": 1, "position",
   "request_digest", "request_id", "time_us", "type"}
The canonical bytes are what the Merkle log commits to and what auditors re-hash.
"""

import functools
import json
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, TypedDict

import orjson
from eventsourcing.domain import Aggregate

CANONICAL_FORMAT_VERSION = 1
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
ONE_MICROSECOND = timedelta(microseconds=1)
# orjson parses stored rows 1.6x faster than json (replay is mostly parsing); output is re-encoded with json.
_decode_json = orjson.loads
# One encoder, built once: json.dumps would build a new one per call when given options.
_encode_canonical = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode
BOOK_ID = uuid.uuid5(uuid.NAMESPACE_URL, "https://reserve-ledger.invalid/book")
METADATA_FIELDS = ("request_id", "request_digest", "actor", "actor_role")


class CanonicalEvent(TypedDict):
    """One event in its canonical form (docs/FORMATS.md §1): what the fold, the audit and the bytes share."""

    format_version: int
    position: int
    type: str
    time_us: int
    request_id: str
    request_digest: str
    actor: str
    actor_role: str
    data: dict[str, Any]


class Book(Aggregate):
    """The aggregate every event belongs to; its version is the log length (see module docstring)."""

    class Recorded(Aggregate.Event):
        request_id: str
        request_digest: str
        actor: str
        actor_role: str

        def apply(self, aggregate: "Book") -> None:
            """State lives in ledger.state.ReserveState, folded from canonical events."""

    class AccountOpened(Recorded):
        account_id: str
        kind: str
        custodian: str
        wallet_label: str
        quorum_required: int
        quorum_total: int
        addresses: list
        descriptor: str

    class AccountFrozen(Recorded):
        account_id: str
        reason: str

    class AccountUnfrozen(Recorded):
        account_id: str
        reason: str

    class AccountClosed(Recorded):
        account_id: str
        reason: str

    class ReservePurchased(Recorded):
        purchase_id: str
        account_id: str
        quantity_sats: int
        price_per_btc: str
        currency_code: str
        fiat_total: str
        counterparty: str
        trade_reference: str
        trade_date: str

    class PurchaseProposed(ReservePurchased):
        expire_time_us: int

    class PurchaseApproved(Recorded):
        purchase_id: str
        proposer: str

    class PurchaseRejected(Recorded):
        purchase_id: str
        reason: str

    class PurchaseExpired(Recorded):
        purchase_id: str

    class TransferProposed(Recorded):
        transfer_id: str
        debit_account_id: str
        credit_account_id: str
        amount_sats: int
        memo: str
        expire_time_us: int
        corrects_position: int

    class TransferApproved(Recorded):
        transfer_id: str
        proposer: str

    class TransferRejected(Recorded):
        transfer_id: str
        reason: str

    class TransferExpired(Recorded):
        transfer_id: str

    class CustodyChangeProposed(Recorded):
        custody_change_id: str
        from_account_id: str
        to_account_id: str
        amount_sats: int
        reason: str
        key_ceremony_reference: str
        new_quorum_required: int
        new_quorum_total: int
        txid: str
        network_fee_sats: int
        expire_time_us: int

    class CustodyChangeApproved(Recorded):
        custody_change_id: str
        proposer: str

    class CustodyChangeRejected(Recorded):
        custody_change_id: str
        reason: str

    class CustodyChangeExpired(Recorded):
        custody_change_id: str


EVENT_CLASSES: dict[str, type] = {
    name: cls for name, cls in vars(Book).items()
    if isinstance(cls, type) and issubclass(cls, Book.Recorded) and cls is not Book.Recorded
}


def make_event(event_type: str, position: int, time_us: int, metadata: dict, data: dict) -> Book.Recorded:
    """Build the stored event for a decision; its Book version is position + 1."""
    timestamp = datetime.fromtimestamp(time_us // 1_000_000, tz=timezone.utc).replace(microsecond=time_us % 1_000_000)
    return EVENT_CLASSES[event_type](originator_id=BOOK_ID, originator_version=position + 1, timestamp=timestamp,
                                     **metadata, **data)


@functools.lru_cache(maxsize=4096)
def time_us_of(timestamp_iso: str) -> int:
    """Microseconds since the epoch of a stored ISO timestamp (cached: a batch shares one timestamp)."""
    return (datetime.fromisoformat(timestamp_iso) - EPOCH) // ONE_MICROSECOND


def canonical_event(originator_version: int, topic: str, state: bytes) -> dict:
    """The canonical form of one stored event (its row: version, topic, state JSON)."""
    fields = _decode_json(state)
    stamp = fields.pop("timestamp")
    if not (isinstance(stamp, dict) and stamp.get("_type_") == "datetime_iso"):
        raise ValueError(f"event {originator_version} has no timestamp")
    take = fields.pop  # the metadata fields (METADATA_FIELDS) move up; what remains is the event's data
    return {"format_version": CANONICAL_FORMAT_VERSION, "position": originator_version - 1,
            "type": topic.rpartition(".")[2], "time_us": time_us_of(stamp["_data_"]),
            "request_id": take("request_id"), "request_digest": take("request_digest"), "actor": take("actor"),
            "actor_role": take("actor_role"), "data": fields}


def canonical_bytes(event: dict) -> bytes:
    return _encode_canonical(event).encode()


def parse_canonical_bytes(data: bytes) -> dict:
    """Inverse of canonical_bytes for auditors; refuses bytes that are not in canonical form."""
    event = _decode_json(data)  # strict UTF-8 (orjson refuses anything else); then the round trip below
    if not isinstance(event, dict) or event.get("format_version") != CANONICAL_FORMAT_VERSION:
        raise ValueError("not a canonical event of a known format version")
    if canonical_bytes(event) != data:
        raise ValueError("bytes are not in canonical form")
    return event
