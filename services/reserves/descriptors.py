"""The output scripts of a custody account: its registered addresses and its descriptor, expanded.

The ledger has already checked the descriptor's checksum and shape (ledger/descriptors.py); here embit
(pure Python, libsecp256k1 through ctypes when available) derives BIP 32 child keys and builds the scripts.
`account_scripts` is THE expansion every reader uses (the audit's reconciliation, the control proofs, the
live monitor): receive and change branches, indices 0 .. gap_limit - 1 each.
"""

import dataclasses
import functools
from typing import Any, Iterable

from embit.descriptor import Descriptor

from ledger import limits
from ledger.descriptors import DescriptorInvalid, parse_descriptor, split_checksum
from ledger.errors import RequestInvalid, Violation
from services.bitcoin.addresses import AddressInvalid, script_pubkey_of_address

BRANCH_NAMES = ("receive", "change")
EXPANDED_CACHE_MAX = 1024         # parsed descriptors kept
DERIVED_CACHE_MAX = 100_000       # derived scripts kept (tens of MB at most)


@dataclasses.dataclass(frozen=True)
class AccountScript:
    """One output script of an account and where it comes from."""

    script_pubkey: bytes
    source: str                      # "address ADDR", or "descriptor" (fixed keys), or "descriptor receive/7"
    branch: int | None = None        # 0 receive, 1 change (ranged descriptors only)
    index: int | None = None         # the child index (ranged descriptors only)
    witness_script: bytes | None = None   # the multisig script of a P2WSH (or P2SH-P2WSH) output
    redeem_script: bytes | None = None    # the P2SH redeem script of a wrapped output


@dataclasses.dataclass(frozen=True, eq=False)
class ExpandedDescriptor:
    """A parsed descriptor ready to derive: its branch count and whether it is ranged."""

    descriptor: Any                  # embit.descriptor.Descriptor
    ranged: bool
    branches: int

    text: str = ""                   # the checksummed descriptor (the derivation cache's key)

    def scripts(self, branch: int, indices: Iterable[int]) -> list[AccountScript]:
        return [_derived(self, branch, index) for index in indices]

    def fixed(self) -> list[AccountScript]:
        """A descriptor without /*: one script per branch (usually one)."""
        return [_derived(self, branch, None) for branch in range(self.branches)]

    def __hash__(self) -> int:
        return hash(self.text)

    def __eq__(self, other) -> bool:
        return isinstance(other, ExpandedDescriptor) and other.text == self.text

    def derive(self, branch: int, index: int | None) -> AccountScript:
        derived = self.descriptor.derive(index if index is not None else 0,
                                         branch_index=branch if self.branches > 1 else None)
        witness = derived.witness_script()
        redeem = derived.redeem_script()
        source = "descriptor" if index is None else f"descriptor {branch_name(branch, self.branches)}/{index}"
        return AccountScript(derived.script_pubkey().data, source, branch if index is not None else None, index,
                             witness.data if witness is not None else None,
                             redeem.data if redeem is not None else None)


@functools.lru_cache(maxsize=DERIVED_CACHE_MAX)
def _derived(expanded: ExpandedDescriptor, branch: int, index: int | None) -> AccountScript:
    """Derivation is the cost of a scan (about 0.35 ms of CPU per 2-of-3 script); descriptors never change, so
    the live monitor's scan at every block derives each script once."""
    return expanded.derive(branch, index)


def clear_derivation_cache() -> None:
    """Forget every derived script (benchmarks measure a cold scan)."""
    _derived.cache_clear()
    expand.cache_clear()


def branch_name(branch: int, branches: int) -> str:
    """"receive"/"change" for a multipath descriptor; "" for a single range."""
    return BRANCH_NAMES[branch] if branches == len(BRANCH_NAMES) else ""


@functools.lru_cache(maxsize=EXPANDED_CACHE_MAX)
def expand(descriptor: str) -> ExpandedDescriptor:
    """Parse a descriptor the ledger accepted; raises DescriptorInvalid when embit cannot derive from it (e.g. a
    key that is not a point on the curve)."""
    shape = parse_descriptor(descriptor)
    try:
        parsed = Descriptor.from_string(split_checksum(descriptor))
        expanded = ExpandedDescriptor(parsed, shape.ranged, shape.branch_count, descriptor)
        for branch in range(expanded.branches):
            expanded.scripts(branch, [0]) if expanded.ranged else expanded.fixed()
    except DescriptorInvalid:
        raise
    except Exception as error:  # noqa: BLE001 - embit raises many types; each means "cannot derive"
        raise DescriptorInvalid("DESCRIPTOR_NOT_DERIVABLE", f"no script can be derived from it "
                                                            f"({type(error).__name__}: {error})") from None
    return expanded


def require_derivable(descriptor: str, field: str = "descriptor") -> None:
    """The service's half of OpenAccount's check: the keys are points and the scripts derive (INVALID_ARGUMENT)."""
    if not descriptor:
        return
    try:
        expand(descriptor)
    except DescriptorInvalid as error:
        raise RequestInvalid([Violation(field, error.rule, str(error))]) from None


def gap_limit_of(account) -> int:
    return field_of(account, "gap_limit") or limits.GAP_LIMIT_DEFAULT


def account_scripts(account, gap_limit: int | None = None) -> list[AccountScript]:
    """Every output script of a custody account (an ``Account`` or a custody.json entry): its addresses, then its
    descriptor — a fixed one as it is, a ranged one on each branch (receive, change) at indices 0 .. gap_limit - 1
    (default: the account's own gap limit, else 20). Raises DescriptorInvalid / AddressInvalid when an entry the
    ledger accepted cannot be turned into a script (only a log written around the ledger's checks holds one)."""
    scripts = [AccountScript(script_pubkey_of_address(a), f"address {a}") for a in field_of(account, "addresses")]
    descriptor = field_of(account, "descriptor")
    if descriptor:
        expanded = expand(descriptor)
        window = range(gap_limit or gap_limit_of(account))
        scripts += ([s for b in range(expanded.branches) for s in expanded.scripts(b, window)] if expanded.ranged
                    else expanded.fixed())
    return scripts


def field_of(account, name: str):
    """A field of an ``Account`` or of a custody.json entry (both shapes reach the scans)."""
    return account[name] if isinstance(account, dict) else getattr(account, name)


__all__ = ["AccountScript", "ExpandedDescriptor", "account_scripts", "expand", "require_derivable", "gap_limit_of",
           "branch_name", "field_of", "clear_derivation_cache", "AddressInvalid", "DescriptorInvalid"]
