"""Accounts: the one definition of an account's fields, its kinds and the nominal accounts."""

from dataclasses import dataclass

CUSTODY_KINDS = ("cold", "warm", "hot")
NOMINAL_KIND = "nominal"
NOMINAL_PREFIX = "nominal:"

ACQUISITIONS = "nominal:acquisitions"   # where purchased coins come from
NETWORK_FEES = "nominal:network-fees"   # where on-chain fees go
DISPOSALS = "nominal:disposals"         # where sold or spent coins go
ADJUSTMENTS = "nominal:adjustments"     # the other side of every correction
NOMINAL_ACCOUNTS = (ACQUISITIONS, NETWORK_FEES, DISPOSALS, ADJUSTMENTS)

STATUSES = ("open", "frozen", "closed")


@dataclass(slots=True)
class Account:
    """One account as the fold keeps it.

    Mutable on purpose: every posting changes two accounts, and replacing them would allocate on each of
    millions of events. `ReserveState.apply` is the only writer; everything else reads.
    """

    account_id: str
    kind: str
    status: str = "open"
    custodian: str = ""
    wallet_label: str = ""
    quorum: tuple[int, int] = (0, 0)          # (required, total)
    addresses: tuple[str, ...] = ()
    descriptor: str = ""
    gap_limit: int = 0                        # 0: limits.GAP_LIMIT_DEFAULT
    credits_sats: int = 0
    debits_sats: int = 0
    held_sats: int = 0

    @property
    def is_nominal(self) -> bool:
        return self.kind == NOMINAL_KIND

    @property
    def balance_sats(self) -> int:
        return self.credits_sats - self.debits_sats

    @property
    def available_sats(self) -> int:
        return self.credits_sats - self.debits_sats - self.held_sats
