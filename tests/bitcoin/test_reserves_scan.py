"""Reconciliation that never omits, on a real chain through each backend: the embedded chain, Bitcoin Core's RPC
(`scantxoutset`, batched) and Esplora, the last two over real HTTP against the regtest node. A 2-of-3 ranged
multisig descriptor is expanded on its receive and change branches with its gap limit; an account with a balance
and nothing to scan is named; the totals add up line by line."""

from ledger.audit import Findings
from services.audit.chain import reconcile_reserves
from services.reserves.descriptors import expand
from services.reserves.dev_signer import dev_multisig


def _pay(chain, descriptor: str, branch: int, index: int, sats: int) -> None:
    chain.send(expand(descriptor).scripts(branch, [index])[0].script_pubkey, sats)


def custody(account_id: str, balance_sats: int, descriptor: str = "", gap_limit: int = 0) -> dict:
    return {"account_id": account_id, "custodian": "C", "addresses": [], "descriptor": descriptor,
            "gap_limit": gap_limit, "balance_sats": balance_sats, "status": "open"}


def test_a_ranged_multisig_is_found_on_both_branches_beyond_the_first_window(chain, backend):
    """Coins at receive/3, receive/21 (found because receive/3 extends the window to 23) and change/0 reconcile;
    a coin at change/45, beyond the gap of 20 after change/0, is not found and shows as a difference."""
    descriptor, _ = dev_multisig(["a", "b", "c"], 2)
    for branch, index, sats in ((0, 3, 1_000), (0, 21, 2_000), (1, 0, 4_000), (1, 45, 8_000)):
        _pay(chain, descriptor, branch, index, sats)
    chain.mine(1)
    findings = Findings()
    result = reconcile_reserves([custody("vault-m", 7_000, descriptor)], backend,
                                findings)
    (row,) = result["accounts"]
    assert (row["status"], row["onchain_sats"], row["funded_scripts"]) == ("match", 7_000, 3)
    assert row["scripts_scanned"] == 42 + 21     # receive 0..41 (20 unused after 21), change 0..20 (after 0)
    assert findings.total == 0
    findings = Findings()
    wider = reconcile_reserves([custody("vault-m", 15_000, descriptor, gap_limit=50)], backend, findings)
    assert wider["accounts"][0]["status"] == "match" and findings.total == 0


def test_an_account_with_a_balance_and_nothing_to_scan_is_named_and_the_totals_add_up(chain, backend):
    """The 0.5 BTC of an account without addresses or descriptor is a row `not reconciled` and a failure; the
    ledger total is the sum of the rows and equals reconciled + not reconciled."""
    descriptor, _ = dev_multisig(["a", "b", "c"], 2)
    _pay(chain, descriptor, 0, 0, 30_000)
    chain.mine(1)
    findings = Findings()
    accounts = [custody("vault-m", 30_000, descriptor), custody("no-scripts", 50_000_000), custody("closed", 0)]
    result = reconcile_reserves(accounts, backend, findings)
    rows = {row["account_id"]: row for row in result["accounts"]}
    assert sorted(rows) == ["no-scripts", "vault-m"]
    assert rows["no-scripts"]["status"] == "not reconciled"
    assert rows["no-scripts"]["note"] == "not reconciled: no addresses or descriptor"
    assert [(f.check, f.where) for f in findings.kept] == [("reserves", "account no-scripts")]
    assert result["ledger_total_sats"] == 50_030_000 == sum(row["ledger_sats"] for row in rows.values())
    assert result["reconciled_ledger_sats"] + result["not_reconciled_ledger_sats"] == result["ledger_total_sats"]
    assert result["onchain_total_sats"] == 30_000 and result["scripts_scanned_total"] == 21 + 20


def test_a_script_registered_as_an_address_and_derived_from_the_descriptor_counts_once(chain):
    """The account's sats and its funded scripts (what custodians must sign for) count a shared script once."""
    from services.bitcoin.addresses import address_of_script_pubkey
    descriptor, _ = dev_multisig(["a", "b", "c"], 2)
    script = expand(descriptor).scripts(0, [2])[0].script_pubkey
    chain.send(script, 9_000)
    chain.mine(1)
    account = {**custody("vault-m", 9_000, descriptor), "addresses": [address_of_script_pubkey(script, "regtest")]}
    findings = Findings()
    result = reconcile_reserves([account], chain, findings)
    assert (result["accounts"][0]["status"], result["accounts"][0]["funded_scripts"]) == ("match", 1)
    assert findings.total == 0
