"""The coins of custody accounts on chain: registered addresses, and ranged descriptors scanned with a gap limit.

A ranged branch is scanned in windows: indices 0 .. gap_limit - 1 first; whenever a script at index i holds a
coin, the branch is scanned on to i + gap_limit, until gap_limit consecutive scripts hold none (or
DERIVED_INDEX_MAX). The backends report unspent coins only: an address whose coins were all spent counts as
unused, so a wallet that skipped more than gap_limit spent addresses needs a larger gap limit (docs/FORMATS-audit.md).
"""

import dataclasses

from ledger.anchoring import ChainBackend, Utxo
from services.reserves.descriptors import (AccountScript, AddressInvalid, DescriptorInvalid, expand, field_of,
                                           gap_limit_of, script_pubkey_of_address)

DERIVED_INDEX_MAX = 1_000_000     # never derive beyond this index on one branch, whatever the coins say
NOTE_NO_SCRIPTS = "not reconciled: no addresses or descriptor"


@dataclasses.dataclass
class AccountScan:
    """What one account's scripts hold at one height, and how many scripts were looked at."""

    account_id: str
    scripts: list[AccountScript] = dataclasses.field(default_factory=list)
    coins: dict[bytes, list[Utxo]] = dataclasses.field(default_factory=dict)   # script -> its coins (funded only)
    notes: list[str] = dataclasses.field(default_factory=list)
    reconcilable: bool = True

    @property
    def sats(self) -> int:
        return sum(coin.value_sats for coins in self.coins.values() for coin in coins)

    def funded_scripts(self) -> list[AccountScript]:
        """Each script holding coins, once (an address may also be one of the descriptor's scripts)."""
        seen: set[bytes] = set()
        funded = []
        for script in self.scripts:
            if self.coins.get(script.script_pubkey) and script.script_pubkey not in seen:
                seen.add(script.script_pubkey)
                funded.append(script)
        return funded


def utxos_of_scripts(backend: ChainBackend, scripts: list[bytes]) -> dict[bytes, list[Utxo]]:
    """The coins of many scripts at once when the backend can (Core: one scantxoutset per 1,000 scripts)."""
    batch = getattr(backend, "utxos_of_scripts", None)
    if batch is not None:
        return batch(scripts)
    return {script: backend.utxos(script) for script in dict.fromkeys(scripts)}


def scan_account(account, backend: ChainBackend) -> AccountScan:
    """The coins at an account's registered addresses and derived scripts (an ``Account`` or a custody.json
    entry), ranged branches scanned on while coins keep turning up within the gap limit."""
    scan = AccountScan(field_of(account, "account_id"))
    for address in field_of(account, "addresses"):
        try:
            scan.scripts.append(AccountScript(script_pubkey_of_address(address), f"address {address}"))
        except (AddressInvalid, ValueError, KeyError) as error:
            scan.notes.append(f"address {address} not understood ({error})")
    if field_of(account, "descriptor"):
        _scan_descriptor(account, backend, scan)
    if scan.scripts:
        fixed = [s.script_pubkey for s in scan.scripts if s.index is None]
        scan.coins.update({script: coins for script, coins in utxos_of_scripts(backend, fixed).items() if coins})
    elif not scan.notes:
        scan.notes.append(NOTE_NO_SCRIPTS)
    scan.reconcilable = bool(scan.scripts) and not scan.notes
    return scan


def _scan_descriptor(account: dict, backend: ChainBackend, scan: AccountScan) -> None:
    try:
        expanded = expand(field_of(account, "descriptor"))
    except DescriptorInvalid as error:
        scan.notes.append(f"descriptor not reconciled ({error.rule}: {error})")
        return
    if not expanded.ranged:
        scan.scripts.extend(expanded.fixed())
        return
    gap_limit = gap_limit_of(account)
    for branch in range(expanded.branches):
        _scan_branch(expanded, branch, gap_limit, backend, scan)


def _scan_branch(expanded, branch: int, gap_limit: int, backend: ChainBackend, scan: AccountScan) -> None:
    start, end = 0, gap_limit
    while start < end:
        window = expanded.scripts(branch, range(start, end))
        coins = utxos_of_scripts(backend, [s.script_pubkey for s in window])
        scan.scripts.extend(window)
        last_used = max((s.index for s in window if coins.get(s.script_pubkey)), default=None)
        scan.coins.update({script: found for script, found in coins.items() if found})
        start = end
        if last_used is not None:
            end = min(max(end, last_used + 1 + gap_limit), DERIVED_INDEX_MAX)
