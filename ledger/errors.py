"""Domain errors: each subclass names the rule that was broken and carries the offending values.

services/api/status.py maps every class here to one gRPC status; nothing else in the code base decides
status codes. A subclass sets `field` when the error concerns one request field, so that the
service can answer with a google.rpc.BadRequest field violation.
"""


class LedgerError(Exception):
    """Base of every expected, caller-caused failure of the ledger domain."""

    field: str | None = None

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        if field is not None:
            self.field = field

    @property
    def reason(self) -> str:
        """UPPER_SNAKE name of the broken rule, for google.rpc.ErrorInfo."""
        name = type(self).__name__
        return "".join("_" + c if c.isupper() else c.upper() for c in name).lstrip("_")


class InvariantBroken(Exception):
    """A recorded event breaks a ledger rule: a bug when live, a finding when auditing. Not a LedgerError:
    no caller caused it. `rule` is a stable UPPER_SNAKE name (docs/EVENTS.md, "Rules the replay enforces")."""

    def __init__(self, position: int, rule: str, detail: str):
        self.position, self.rule, self.detail = position, rule, detail
        super().__init__(f"position {position}: {rule}: {detail}")


# --- INVALID_ARGUMENT: the request itself is malformed ---------------------------------------------

class Violation:
    """One bad field: the field path, the rule it broke (UPPER_SNAKE) and a sentence for humans."""

    __slots__ = ("field", "rule", "description")

    def __init__(self, field: str, rule: str, description: str):
        self.field, self.rule, self.description = field, rule, description

    def __repr__(self) -> str:
        return f"Violation({self.field!r}, {self.rule!r}, {self.description!r})"


class RequestInvalid(LedgerError):
    """One or more fields are malformed; nothing was recorded."""

    def __init__(self, violations: list[Violation]):
        assert violations
        self.violations = violations
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in violations), field=violations[0].field)

    @property
    def reason(self) -> str:
        return self.violations[0].rule


# --- NOT_FOUND ------------------------------------------------------------------------------------

class NotFound(LedgerError):
    """Base: the named thing does not exist."""


class AccountNotFound(NotFound):
    pass


class PendingNotFound(NotFound):
    pending_id: str | None = None   # set when the id names a pending item of the kind asked for


# --- ALREADY_EXISTS -------------------------------------------------------------------------------

class AlreadyExists(LedgerError):
    """Base: the thing to create exists already."""


class AccountAlreadyExists(AlreadyExists):
    pass


class RequestIdReusedWithDifferentPayload(AlreadyExists):
    def __init__(self, request_id: str, differences: list[str]):
        self.differences = differences
        super().__init__(
            f"request_id {request_id!r} was used before with a different payload; differing fields: "
            + ", ".join(differences),
            field="request_id",
        )


# --- FAILED_PRECONDITION: a ledger rule refuses the command in the current state ---------------------

class RuleViolated(LedgerError):
    """Base: the command is well formed but the ledger's state forbids it."""


class InsufficientAvailableBalance(RuleViolated):
    pass


class AccountFrozen(RuleViolated):
    pass


class AccountClosed(RuleViolated):
    pass


class AccountNotFrozen(RuleViolated):
    pass


class AccountNotEmpty(RuleViolated):
    pass


class NominalAccountCannotChange(RuleViolated):
    pass


class AccountMustBeCustody(RuleViolated):
    pass


class ApproverMustDifferFromProposer(RuleViolated):
    pass


class PendingAlreadyResolved(RuleViolated):
    pass


class PendingExpired(RuleViolated):
    pass


class PendingNotYetExpired(RuleViolated):
    pass


class CorrectedPositionUnknown(RuleViolated):
    pass


class DiscrepancyNotFound(NotFound):
    """No discrepancy (ReserveDiscrepancyObserved) with that id."""


class DiscrepancyAlreadyObserved(AlreadyExists):
    """A standing discrepancy already records this account's movements in this block."""


class DiscrepancyNotOpen(RuleViolated):
    """The discrepancy was closed by a correction or its block left the best chain."""


class MovementExplained(RuleViolated):
    """The ledger explains the movement (an approved custody change or a purchase names its txids with these
    amounts), or an unnamed movement leaves the account's coins equal to its ledger balance."""


class CorrectionMustTouchAccount(RuleViolated):
    """A correction of a discrepancy must debit or credit the account the discrepancy is about."""


class SupplyCapExceeded(RuleViolated):
    """A balance, hold, custody total or sum of purchases would pass the 21 million BTC that can exist."""

    def __init__(self, account_id: str, message: str, *, field: str | None = None):
        self.account_id = account_id
        super().__init__(message, field=field)


class TurnoverLimitExceeded(RuleViolated):
    """An account's cumulative credits or debits would pass what the API's int64 fields can carry."""

    def __init__(self, account_id: str, message: str, *, field: str | None = None):
        self.account_id = account_id
        super().__init__(message, field=field)


# --- PERMISSION_DENIED / UNAUTHENTICATED / ABORTED --------------------------------------------------

class RoleNotAllowed(LedgerError):
    pass


class IdentityMissing(LedgerError):
    pass


class ConcurrencyRetriesExhausted(LedgerError):
    pass


class PositionBeyondLog(LedgerError):
    pass


class TreeSizeBeyondLog(LedgerError):
    """A position or tree size lies beyond the current log (OUT_OF_RANGE: it may exist later)."""


class TreeHeadNotFound(NotFound):
    """No signed tree head exists for that size."""


class AnchorGenesisNotRecorded(NotFound):
    """No anchor has been made yet, so the anchor wallet's genesis coin is not recorded."""


class EventNotAnchoredYet(RuleViolated):
    """No confirmed Bitcoin anchor covers this position yet."""


class AnchoringNotConfigured(RuleViolated):
    """The service runs without a Bitcoin backend, so it has no anchors to prove against."""
