"""Commands: what callers ask the ledger to do, as plain values, with field validation.

Validation here is about form only (lengths, ranges, syntax) and reports every bad field at once.
Rules that depend on the ledger's state (balances, account status, four-eyes) live in rules.py.
"""

import dataclasses
import datetime
import functools
import re
import types
from decimal import Decimal, InvalidOperation

from ledger import limits
from ledger import pending as kinds
from ledger.accounts import CUSTODY_KINDS, NOMINAL_PREFIX
from ledger.currencies import ISO_4217_MINOR_UNITS
from ledger.descriptors import DescriptorInvalid, DescriptorShape, parse_descriptor
from ledger.errors import RequestInvalid, Violation
from ledger.key_history import rotation_signatures_hold

# Every pattern is applied with fullmatch: "$" would also match before a trailing newline.
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,%d}" % limits.REQUEST_ID_LENGTH_MAX)
ACCOUNT_ID_PATTERN = re.compile(r"[a-z][a-z0-9-]{%d,%d}" % (limits.ID_LENGTH_MIN - 1, limits.ID_LENGTH_MAX - 1))
NOMINAL_ID_PATTERN = re.compile(r"%s[a-z][a-z0-9-]{0,%d}" % (NOMINAL_PREFIX, limits.ID_LENGTH_MAX - len(NOMINAL_PREFIX) - 1))
PENDING_ID_PATTERN = re.compile(r"(%s)-(0|[1-9][0-9]{0,18})" % "|".join(kinds.BY_PREFIX))
DECIMAL_PATTERN = re.compile(r"(0|[1-9][0-9]*)(\.[0-9]+)?")
DATE_PATTERN = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
TXID_PATTERN = re.compile(r"[0-9a-f]{64}")
ADDRESS_PATTERN = re.compile(r"[A-Za-z0-9]{14,%d}" % limits.ADDRESS_LENGTH_MAX)
BLOCK_HASH_PATTERN = TXID_PATTERN
DISCREPANCY_ID_PATTERN = re.compile(r"rd-(0|[1-9][0-9]{0,18})")


@dataclasses.dataclass(frozen=True)
class Caller:
    """Who sends a command: the identity and role taken from the client certificate."""

    identity: str
    role: str


class _Checker:
    """Collects violations so a caller learns about every bad field in one answer."""

    def __init__(self):
        self.violations: list[Violation] = []

    def fail(self, field: str, rule: str, description: str) -> None:
        self.violations.append(Violation(field, rule, description))

    def request_id(self, value: str) -> None:
        if not value:
            self.fail("request_id", "REQUEST_ID_MISSING", "request_id is required on every command")
        elif not REQUEST_ID_PATTERN.fullmatch(value):
            self.fail("request_id", "REQUEST_ID_MALFORMED",
                      f"request_id must be 1-{limits.REQUEST_ID_LENGTH_MAX} chars of [A-Za-z0-9._:-]")

    def account_id(self, field: str, value: str) -> None:
        if not value:
            self.fail(field, "ACCOUNT_ID_MISSING", f"{field} is required")
        elif not (ACCOUNT_ID_PATTERN.fullmatch(value) or NOMINAL_ID_PATTERN.fullmatch(value)):
            self.fail(field, "ACCOUNT_ID_MALFORMED",
                      f"{field} must be {limits.ID_LENGTH_MIN}-{limits.ID_LENGTH_MAX} chars of [a-z0-9-] starting with a letter")

    def pending_id(self, field: str, value: str, prefix: str, *, any_kind: bool = False) -> None:
        """`any_kind`: every registered prefix is well formed (a wrong kind is then not found, not malformed)."""
        if not PENDING_ID_PATTERN.fullmatch(value) or not (any_kind or value.startswith(prefix + "-")):
            self.fail(field, "PENDING_ID_MALFORMED", f"{field} must look like {prefix}-<number>")

    def amount(self, field: str, value: int, *, zero_allowed: bool = False) -> None:
        if value < 0 or (value == 0 and not zero_allowed):
            self.fail(field, "AMOUNT_MUST_BE_POSITIVE", f"{field} must be a positive number of satoshis")
        elif value > limits.AMOUNT_MAX_SATS:
            self.fail(field, "AMOUNT_ABOVE_MAXIMUM", f"{field} must not exceed {limits.AMOUNT_MAX_SATS} sats")

    def text(self, field: str, value: str, length_max: int, *, required: bool = False) -> None:
        if required and not value.strip():
            self.fail(field, "TEXT_MISSING", f"{field} is required")
        elif len(value) > length_max:
            self.fail(field, "TEXT_TOO_LONG", f"{field} must be at most {length_max} characters")
        elif not value.isprintable():
            self.fail(field, "TEXT_NOT_PRINTABLE", f"{field} must not contain control characters")

    def decimal(self, field: str, value: str, integer_digits_max: int, fraction_digits_max: int) -> Decimal | None:
        if not DECIMAL_PATTERN.fullmatch(value):
            self.fail(field, "DECIMAL_MALFORMED", f"{field} must be a plain positive decimal such as 61234.50")
            return None
        integer, _, fraction = value.partition(".")
        if len(integer) > integer_digits_max or len(fraction) > fraction_digits_max:
            self.fail(field, "DECIMAL_OUT_OF_RANGE",
                      f"{field} allows {integer_digits_max} integer and {fraction_digits_max} fraction digits")
            return None
        try:
            number = Decimal(value)
        except InvalidOperation:  # pragma: no cover - the pattern already excludes this
            self.fail(field, "DECIMAL_MALFORMED", f"{field} is not a decimal")
            return None
        if number <= 0:
            self.fail(field, "DECIMAL_MUST_BE_POSITIVE", f"{field} must be greater than zero")
            return None
        return number

    def currency(self, field: str, value: str) -> None:
        if value not in ISO_4217_MINOR_UNITS:
            self.fail(field, "CURRENCY_CODE_UNKNOWN", f"{field} must be an active ISO-4217 code such as USD")

    def date(self, field: str, value: str) -> None:
        try:  # the pattern first: fromisoformat also takes week dates such as 2024-W01-1
            ok = DATE_PATTERN.fullmatch(value) is not None and datetime.date.fromisoformat(value) is not None
        except ValueError:
            ok = False
        if not ok:
            self.fail(field, "DATE_MALFORMED", f"{field} must be an ISO 8601 date YYYY-MM-DD")

    def quorum(self, prefix: str, required: int, total: int, *, optional: bool) -> None:
        if optional and required == 0 and total == 0:
            return
        if not (1 <= required <= total <= limits.QUORUM_TOTAL_MAX):
            self.fail(f"{prefix}.required", "QUORUM_INVALID",
                      f"quorum must satisfy 1 <= required <= total <= {limits.QUORUM_TOTAL_MAX}")

    def descriptor(self, field: str, value: str) -> DescriptorShape | None:
        try:
            return parse_descriptor(value)
        except DescriptorInvalid as error:
            self.fail(field, error.rule, str(error))
            return None

    def expire_time(self, value: int | None) -> None:
        if value is not None and not limits.TIMESTAMP_SECONDS_MIN * 1_000_000 <= value \
                <= limits.TIMESTAMP_SECONDS_MAX * 1_000_000 + 999_999:
            self.fail("expire_time", "EXPIRE_TIME_INVALID", "expire_time must lie in 0001-01-01..9999-12-31")

    def raise_if_any(self) -> None:
        if self.violations:
            raise RequestInvalid(self.violations)


@functools.cache
def field_types(cls: type) -> tuple[tuple[str, object], ...]:
    """(name, annotation) of each field of a command class, computed once per class."""
    return tuple((f.name, f.type) for f in dataclasses.fields(cls))


def _has_type(value: object, expected: object) -> bool:
    """int (never bool), str, int | None or tuple[str, ...]: the only field types commands have."""
    if expected is int:
        return type(value) is int
    if expected is str:
        return type(value) is str
    if isinstance(expected, types.UnionType):
        return any(_has_type(value, option) for option in expected.__args__)
    if expected is type(None):
        return value is None
    return type(value) is tuple and all(type(item) is str for item in value)


def _type_name(expected: object) -> str:
    return {int: "an integer", str: "a string", int | None: "an integer or unset"}.get(expected, "a list of strings")


class Command:
    """Base of every command; `payload()` is what idempotency compares and what the event records."""

    request_id: str
    # Fields left out of the payload (so out of the event and the request digest) while they are empty: fields
    # added later, so that the commands and events recorded before them keep their digests and bytes.
    OMITTED_WHEN_EMPTY: tuple[str, ...] = ()

    def check(self, checker: _Checker) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def validate(self) -> None:
        checker = _Checker()
        for name, expected in field_types(type(self)):
            if not _has_type(getattr(self, name), expected):
                checker.fail(name, "FIELD_TYPE_INVALID", f"{name} must be {_type_name(expected)}")
        checker.raise_if_any()  # the checks below may assume each field has its type
        checker.request_id(self.request_id)
        self.check(checker)
        checker.raise_if_any()

    def payload(self) -> dict:
        """The command's fields but request_id (flat: every field is a primitive or a tuple of them)."""
        values = ((name, getattr(self, name)) for name, _ in field_types(type(self)) if name != "request_id")
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values
                if not (k in self.OMITTED_WHEN_EMPTY and v == "")}


@dataclasses.dataclass(frozen=True)
class OpenAccount(Command):
    request_id: str
    account_id: str
    kind: str
    custodian: str
    wallet_label: str
    quorum_required: int
    quorum_total: int
    addresses: tuple[str, ...] = ()
    descriptor: str = ""
    gap_limit: int = 0     # 0: the default (limits.GAP_LIMIT_DEFAULT); recorded only when set

    def payload(self) -> dict:
        """An unset gap limit is left out, so events and digests of accounts without one keep their bytes."""
        payload = super().payload()
        if not self.gap_limit:
            del payload["gap_limit"]
        return payload

    def check(self, c: _Checker) -> None:
        c.account_id("account_id", self.account_id)
        if self.account_id.startswith(NOMINAL_PREFIX):
            c.fail("account_id", "ACCOUNT_ID_RESERVED", "the nominal: prefix is reserved for nominal accounts")
        if self.kind not in CUSTODY_KINDS:
            c.fail("kind", "ACCOUNT_KIND_INVALID", "kind must be cold, warm or hot")
        c.text("custodian", self.custodian, limits.NAME_LENGTH_MAX, required=True)
        c.text("wallet_label", self.wallet_label, limits.NAME_LENGTH_MAX, required=True)
        c.quorum("quorum", self.quorum_required, self.quorum_total, optional=False)
        if len(self.addresses) > limits.ADDRESSES_MAX:
            c.fail("addresses", "TOO_MANY_ADDRESSES", f"at most {limits.ADDRESSES_MAX} addresses")
        for i, address in enumerate(self.addresses[: limits.ADDRESSES_MAX]):
            if not ADDRESS_PATTERN.fullmatch(address):
                c.fail(f"addresses[{i}]", "ADDRESS_MALFORMED", "not a Bitcoin address")
        if len(set(self.addresses)) != len(self.addresses):
            c.fail("addresses", "ADDRESS_DUPLICATED", "each address may be registered once")
        shape = c.descriptor("descriptor", self.descriptor) if self.descriptor else None
        if self.gap_limit and not limits.GAP_LIMIT_MIN <= self.gap_limit <= limits.GAP_LIMIT_MAX:
            c.fail("gap_limit", "GAP_LIMIT_INVALID", f"gap_limit must be {limits.GAP_LIMIT_MIN}-{limits.GAP_LIMIT_MAX}"
                                                     f" (unset: {limits.GAP_LIMIT_DEFAULT})")
        elif self.gap_limit and not (shape and shape.ranged):
            c.fail("gap_limit", "GAP_LIMIT_WITHOUT_RANGED_DESCRIPTOR", "gap_limit applies to a ranged descriptor "
                                                                       "(one ending in /*) only")


@dataclasses.dataclass(frozen=True)
class _AccountStatusChange(Command):
    request_id: str
    account_id: str
    reason: str = ""

    def check(self, c: _Checker) -> None:
        c.account_id("account_id", self.account_id)
        c.text("reason", self.reason, limits.TEXT_LENGTH_MAX)


class FreezeAccount(_AccountStatusChange):
    pass


class UnfreezeAccount(_AccountStatusChange):
    pass


class CloseAccount(_AccountStatusChange):
    pass


@dataclasses.dataclass(frozen=True)
class RecordPurchase(Command):
    request_id: str
    account_id: str
    quantity_sats: int
    price_per_btc: str
    currency_code: str
    fiat_total: str
    counterparty: str
    trade_reference: str
    trade_date: str
    txid: str = ""      # the transaction that brought the coins, when known (the reserves monitor matches it)

    OMITTED_WHEN_EMPTY = ("txid",)

    def check(self, c: _Checker) -> None:
        c.account_id("account_id", self.account_id)
        c.amount("quantity_sats", self.quantity_sats)
        if self.txid and not TXID_PATTERN.fullmatch(self.txid):
            c.fail("txid", "TXID_MALFORMED", "txid must be 64 lower-case hex characters")
        price = c.decimal("price_per_btc", self.price_per_btc,
                          limits.PRICE_INTEGER_DIGITS_MAX, limits.PRICE_FRACTION_DIGITS_MAX)
        c.currency("currency_code", self.currency_code)
        if self.currency_code == "XXX":
            c.fail("currency_code", "CURRENCY_CODE_UNKNOWN", "XXX (no currency) cannot price a purchase")
        total = c.decimal("fiat_total", self.fiat_total, limits.FIAT_INTEGER_DIGITS_MAX, 4)
        c.text("counterparty", self.counterparty, limits.NAME_LENGTH_MAX, required=True)
        c.text("trade_reference", self.trade_reference, limits.NAME_LENGTH_MAX, required=True)
        c.date("trade_date", self.trade_date)
        if price is not None and total is not None and self.currency_code in ISO_4217_MINOR_UNITS \
                and 0 < self.quantity_sats <= limits.AMOUNT_MAX_SATS:
            minor_unit = Decimal(1).scaleb(-ISO_4217_MINOR_UNITS[self.currency_code])
            if abs(price * self.quantity_sats / limits.SATS_PER_BTC - total) > minor_unit:
                c.fail("fiat_total", "FIAT_TOTAL_MISMATCH",
                       "fiat_total must equal price_per_btc x quantity_sats / 1e8 within one minor unit")


@dataclasses.dataclass(frozen=True)
class ResolvePurchase(Command):
    request_id: str
    purchase_id: str
    reason: str = ""

    def check(self, c: _Checker) -> None:
        c.pending_id(kinds.PURCHASE.id_field, self.purchase_id, kinds.PURCHASE.id_prefix)
        c.text("reason", self.reason, limits.TEXT_LENGTH_MAX)


class ApprovePurchase(ResolvePurchase):
    pass


class RejectPurchase(ResolvePurchase):
    pass


@dataclasses.dataclass(frozen=True)
class ProposeTransfer(Command):
    request_id: str
    debit_account_id: str
    credit_account_id: str
    amount_sats: int
    memo: str = ""
    expire_time_us: int | None = None   # None: the default expiry after the record time
    corrects_position: int = -1         # -1: not a correction; 0 and up: the position it compensates

    def check(self, c: _Checker) -> None:
        c.account_id("debit_account_id", self.debit_account_id)
        c.account_id("credit_account_id", self.credit_account_id)
        if self.debit_account_id and self.debit_account_id == self.credit_account_id:
            c.fail("credit_account_id", "SAME_ACCOUNT_ON_BOTH_SIDES", "debit and credit accounts must differ")
        c.amount("amount_sats", self.amount_sats)
        c.text("memo", self.memo, limits.TEXT_LENGTH_MAX)
        c.expire_time(self.expire_time_us)
        if self.corrects_position < -1:
            c.fail("corrects_position", "POSITION_INVALID", "corrects_position must be a position (0 or more)")


@dataclasses.dataclass(frozen=True)
class ResolveTransfer(Command):
    request_id: str
    transfer_id: str
    reason: str = ""

    def check(self, c: _Checker) -> None:
        c.pending_id(kinds.TRANSFER.id_field, self.transfer_id, kinds.TRANSFER.id_prefix)
        c.text("reason", self.reason, limits.TEXT_LENGTH_MAX)


class ApproveTransfer(ResolveTransfer):
    pass


class RejectTransfer(ResolveTransfer):
    pass


@dataclasses.dataclass(frozen=True)
class ExpirePending(Command):
    """Voids a pending item of any kind past its expiry (the service's expiry worker sends it)."""

    request_id: str
    pending_id: str

    def check(self, c: _Checker) -> None:
        c.pending_id("pending_id", self.pending_id, kinds.TRANSFER.id_prefix, any_kind=True)


@dataclasses.dataclass(frozen=True)
class ExpireTransfer(Command):
    """Voids a pending transfer past its expiry (the ExpireTransfer RPC); another kind's id is not found."""

    request_id: str
    transfer_id: str

    def check(self, c: _Checker) -> None:
        c.pending_id(kinds.TRANSFER.id_field, self.transfer_id, kinds.TRANSFER.id_prefix, any_kind=True)


@dataclasses.dataclass(frozen=True)
class ProposeCustodyChange(Command):
    request_id: str
    from_account_id: str
    to_account_id: str
    amount_sats: int
    reason: str
    key_ceremony_reference: str = ""
    new_quorum_required: int = 0
    new_quorum_total: int = 0
    txid: str = ""
    network_fee_sats: int = 0
    expire_time_us: int | None = None

    def check(self, c: _Checker) -> None:
        c.account_id("from_account_id", self.from_account_id)
        c.account_id("to_account_id", self.to_account_id)
        if self.from_account_id and self.from_account_id == self.to_account_id:
            c.fail("to_account_id", "SAME_ACCOUNT_ON_BOTH_SIDES", "source and destination must differ")
        c.amount("amount_sats", self.amount_sats)
        c.text("reason", self.reason, limits.TEXT_LENGTH_MAX, required=True)
        c.text("key_ceremony_reference", self.key_ceremony_reference, limits.NAME_LENGTH_MAX)
        c.quorum("new_quorum", self.new_quorum_required, self.new_quorum_total, optional=True)
        if self.txid and not TXID_PATTERN.fullmatch(self.txid):
            c.fail("txid", "TXID_MALFORMED", "txid must be 64 lower-case hex characters")
        c.amount("network_fee_sats", self.network_fee_sats, zero_allowed=True)
        if 0 < self.amount_sats <= self.network_fee_sats:
            c.fail("network_fee_sats", "FEE_NOT_BELOW_AMOUNT", "network_fee_sats must be below amount_sats")
        if self.network_fee_sats > 0 and not self.txid:
            c.fail("txid", "TXID_MISSING", "a network fee needs the on-chain txid")
        c.expire_time(self.expire_time_us)


@dataclasses.dataclass(frozen=True)
class ResolveCustodyChange(Command):
    request_id: str
    custody_change_id: str
    reason: str = ""

    def check(self, c: _Checker) -> None:
        c.pending_id(kinds.CUSTODY_CHANGE.id_field, self.custody_change_id, kinds.CUSTODY_CHANGE.id_prefix)
        c.text("reason", self.reason, limits.TEXT_LENGTH_MAX)


class ApproveCustodyChange(ResolveCustodyChange):
    pass


class RejectCustodyChange(ResolveCustodyChange):
    pass


# --- the reserves monitor (services/monitor): sent by the service as `system`, never by a caller ------------

@dataclasses.dataclass(frozen=True)
class ObserveReserveDiscrepancy(Command):
    """Coins at a custody account's addresses moved in a best-chain block without a ledger event explaining
    them: `txids` moved `movement_sats` (net, signed) at the account, which holds `onchain_sats` after it."""

    request_id: str
    account_id: str
    block_height: int
    block_hash: str
    txids: tuple[str, ...]
    movement_sats: int
    onchain_sats: int

    def check(self, c: _Checker) -> None:
        c.account_id("account_id", self.account_id)
        if not 0 <= self.block_height <= limits.BLOCK_HEIGHT_MAX:
            c.fail("block_height", "BLOCK_HEIGHT_INVALID", f"block_height must be 0..{limits.BLOCK_HEIGHT_MAX}")
        if not BLOCK_HASH_PATTERN.fullmatch(self.block_hash):
            c.fail("block_hash", "BLOCK_HASH_MALFORMED", "block_hash must be 64 lower-case hex characters")
        if not 1 <= len(self.txids) <= limits.DISCREPANCY_TXIDS_MAX:
            c.fail("txids", "TXIDS_COUNT_INVALID", f"txids must name 1..{limits.DISCREPANCY_TXIDS_MAX} transactions")
        elif not all(TXID_PATTERN.fullmatch(t) for t in self.txids) or len(set(self.txids)) != len(self.txids):
            c.fail("txids", "TXID_MALFORMED", "each txid must be 64 lower-case hex characters, named once")
        if abs(self.movement_sats) > limits.AMOUNT_MAX_SATS:
            c.fail("movement_sats", "AMOUNT_ABOVE_MAXIMUM", f"movement_sats must be within ±{limits.AMOUNT_MAX_SATS}")
        if not 0 <= self.onchain_sats <= limits.AMOUNT_MAX_SATS:
            c.fail("onchain_sats", "AMOUNT_ABOVE_MAXIMUM", f"onchain_sats must be 0..{limits.AMOUNT_MAX_SATS}")


@dataclasses.dataclass(frozen=True)
class RecordDiscrepancyReorgedOut(Command):
    """The block of an open discrepancy left the best chain (`best_block_hash` is there now; empty when the
    best chain no longer reaches that height): the alert no longer stands as if on the best chain."""

    request_id: str
    discrepancy_id: str
    best_block_hash: str

    def check(self, c: _Checker) -> None:
        if not DISCREPANCY_ID_PATTERN.fullmatch(self.discrepancy_id):
            c.fail("discrepancy_id", "DISCREPANCY_ID_MALFORMED", "discrepancy_id must look like rd-<number>")
        if self.best_block_hash and not BLOCK_HASH_PATTERN.fullmatch(self.best_block_hash):
            c.fail("best_block_hash", "BLOCK_HASH_MALFORMED", "best_block_hash must be 64 lower-case hex characters")


@dataclasses.dataclass(frozen=True)
class RotateSigningKey(Command):
    """Hand the tree-head key over from previous_public_key to public_key (ledger/key_history.py): both keys
    sign the statement; heads from the tree size that includes the event on are signed by the new key."""

    request_id: str
    previous_public_key: str
    public_key: str
    previous_key_signature: str
    new_key_signature: str

    def check(self, c: _Checker) -> None:
        for name, length in (("previous_public_key", 64), ("public_key", 64), ("previous_key_signature", 128),
                             ("new_key_signature", 128)):
            if not re.fullmatch(f"[0-9a-f]{{{length}}}", getattr(self, name)):
                c.fail(name, "HEX_MALFORMED", f"{name} must be {length} lower-case hex characters")
        if c.violations:
            return
        if self.previous_public_key == self.public_key:
            c.fail("public_key", "KEY_NOT_NEW", "the new key must differ from the previous one")
        elif not rotation_signatures_hold(*(bytes.fromhex(getattr(self, name)) for name in (
                "previous_public_key", "public_key", "previous_key_signature", "new_key_signature"))):
            c.fail("new_key_signature", "ROTATION_SIGNATURE_INVALID",
                   "both keys must sign the rotation statement (docs/FORMATS.md §3a)")
