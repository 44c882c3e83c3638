"""Domain events of the reserve ledger and their canonical form.

Every event belongs to one stream, BOOK_ID: its version n is the event at log position n - 1, so
positions are dense, gap-free and known when the event is decided. Events are immutable; corrections
are new events (a transfer to or from nominal:adjustments that names what it corrects).

Canonical form (docs/FORMATS.md): a JSON object with sorted keys, no insignificant whitespace, UTF-8,
integers only (amounts in satoshis; prices and fiat amounts as decimal strings):
  {"actor", "actor_role", "data": {...event fields...}, "format_version": 1, "position",
   "request_digest", "request_id", "time_us", "type"}
The canonical bytes are what the Merkle log commits to and what auditors re-hash. They are computed
once, from the decided event, and stored as they are (services/store/mapper.py): reading the log is
parsing them, never re-deriving them from a storage encoding.
"""

import dataclasses
import json
import uuid
from typing import Any, TypedDict

import orjson

CANONICAL_FORMAT_VERSION = 1
# orjson parses 1.6x faster than json (replay is mostly parsing); output is encoded with json (FORMATS.md §1).
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


_RESERVE_PURCHASED = ("purchase_id", "account_id", "quantity_sats", "price_per_btc", "currency_code", "fiat_total",
                      "counterparty", "trade_reference", "trade_date")
# The catalogue (docs/EVENTS.md): each event type and the fields of its `data`.
EVENT_FIELDS: dict[str, frozenset[str]] = {name: frozenset(fields) for name, fields in {
    "AccountOpened": ("account_id", "kind", "custodian", "wallet_label", "quorum_required", "quorum_total",
                      "addresses", "descriptor"),
    "AccountFrozen": ("account_id", "reason"),
    "AccountUnfrozen": ("account_id", "reason"),
    "AccountClosed": ("account_id", "reason"),
    "ReservePurchased": _RESERVE_PURCHASED,
    "PurchaseProposed": (*_RESERVE_PURCHASED, "expire_time_us"),
    "PurchaseApproved": ("purchase_id", "proposer"),
    "PurchaseRejected": ("purchase_id", "reason"),
    "PurchaseExpired": ("purchase_id",),
    "TransferProposed": ("transfer_id", "debit_account_id", "credit_account_id", "amount_sats", "memo",
                         "expire_time_us", "corrects_position"),
    "TransferApproved": ("transfer_id", "proposer"),
    "TransferRejected": ("transfer_id", "reason"),
    "TransferExpired": ("transfer_id",),
    "CustodyChangeProposed": ("custody_change_id", "from_account_id", "to_account_id", "amount_sats", "reason",
                              "key_ceremony_reference", "new_quorum_required", "new_quorum_total", "txid",
                              "network_fee_sats", "expire_time_us"),
    "CustodyChangeApproved": ("custody_change_id", "proposer"),
    "CustodyChangeRejected": ("custody_change_id", "reason"),
    "CustodyChangeExpired": ("custody_change_id",),
    "ReserveDiscrepancyObserved": ("discrepancy_id", "account_id", "block_height", "block_hash", "txids",
                                   "movement_sats", "onchain_sats", "ledger_sats", "finding"),
    "ReserveDiscrepancyReorgedOut": ("discrepancy_id", "best_block_hash"),
    "SigningKeyRotated": ("previous_public_key", "public_key", "previous_key_signature", "new_key_signature"),
}.items()}
# Fields an event carries only when they are set, so that the canonical bytes of events recorded before the
# field existed (and of every event that leaves it unset) stay as they were.
EVENT_OPTIONAL_FIELDS: dict[str, frozenset[str]] = {
    "ReservePurchased": frozenset({"txid"}),
    "PurchaseProposed": frozenset({"txid"}),
    "TransferApproved": frozenset({"closes_discrepancy_ids"}),
    "AccountOpened": frozenset({"gap_limit"}),
}


def has_catalogue_fields(event_type: str, keys) -> bool:
    """Whether an event's data has every field of its type and, besides them, only its optional fields."""
    required, optional = EVENT_FIELDS[event_type], EVENT_OPTIONAL_FIELDS.get(event_type, frozenset())
    return required <= keys and keys - required <= optional


@dataclasses.dataclass(frozen=True)
class LoggedEvent:
    """A decided event as handed to the event store: its canonical bytes, at version position + 1 of BOOK_ID.

    It has what eventsourcing's save() asks of a domain event (originator_id, originator_version); the
    store's mapper writes `canonical_bytes` as the stored row's state, byte for byte.
    """

    originator_id: uuid.UUID
    originator_version: int
    canonical_bytes: bytes


def logged_event(event: CanonicalEvent) -> LoggedEvent:
    """The event to store for a decision; its bytes are computed here, once, from the decided event."""
    assert has_catalogue_fields(event["type"], event["data"].keys()), (event["type"], sorted(event["data"]))
    return LoggedEvent(BOOK_ID, event["position"] + 1, canonical_bytes(event))


def canonical_bytes(event: CanonicalEvent | dict) -> bytes:
    return _encode_canonical(event).encode()


def read_canonical_bytes(data: bytes, position: int) -> CanonicalEvent:
    """Bytes this store wrote at `position`, parsed for replay: the format and position are checked, the
    byte-exact round trip is not (parse_canonical_bytes does it for auditors and `verify`)."""
    event = _decode_json(data)
    if not isinstance(event, dict) or event.get("format_version") != CANONICAL_FORMAT_VERSION:
        raise ValueError(f"position {position}: not a canonical event of a known format version")
    if event.get("position") != position:
        raise ValueError(f"position {position}: the stored bytes are event {event.get('position')}")
    return event  # type: ignore[return-value]


def parse_canonical_bytes(data: bytes) -> dict:
    """Inverse of canonical_bytes for auditors; refuses bytes that are not in canonical form."""
    event = _decode_json(data)  # strict UTF-8 (orjson refuses anything else); then the round trip below
    if not isinstance(event, dict) or event.get("format_version") != CANONICAL_FORMAT_VERSION:
        raise ValueError("not a canonical event of a known format version")
    if canonical_bytes(event) != data:
        raise ValueError("bytes are not in canonical form")
    return event
