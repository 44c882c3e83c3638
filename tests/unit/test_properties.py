"""Property tests: random sequences of legal and illegal commands from several identities (operators, approvers,
one person in both roles) against the real ReserveLedger on SQLite.

After every command: debits equal credits (the balances sum to zero), no custody account is overdrawn counting
holds, every bound holds (supply cap, turnover within int64), and a refused command changed nothing (state bytes
equal before and after). At the end: a replay from zero equals the live projection byte for byte, and an audit of
an export passes.

CI runs PROPERTY_EXAMPLES (50) x 205..255 commands (>= 10,250 in all). A larger run:
    RESERVE_LEDGER_PROPERTY_EXAMPLES=400 pytest -q tests/unit/test_properties.py
"""

import dataclasses
import os
import pathlib
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import commands as cmd
from ledger import errors, limits
from ledger.application import Recorded, ReserveLedger
from ledger.limits import SATS_PER_BTC as BTC
from ledger.limits import SUPPLY_CAP_SATS as CAP
from ledger.rules import Policy
from services.audit.bundle import audit_bundle
from services.audit.export import export_bundle
from services.store.config import sqlite_env
from services.store.signing import TreeHeadSigner, load_or_create_signing_key

PROPERTY_EXAMPLES = int(os.environ.get("RESERVE_LEDGER_PROPERTY_EXAMPLES", "50"))
STEPS_MIN, STEPS_MAX = 200, 250   # with the 5 opening commands, >= 10,250 commands over 50 examples
T0 = 1_790_000_000_000_000
ACCOUNTS = ("cold-a", "cold-b", "warm-c", "nominal:adjustments", "nominal:disposals", "cold-z")
CALLERS = (cmd.Caller("alice", "operator"), cmd.Caller("oscar", "operator"), cmd.Caller("bob", "approver"),
           cmd.Caller("alice", "approver"), cmd.Caller("erin", "admin"))
# Amounts around every boundary: tiny, ordinary, the threshold, the cap, beyond it, and malformed.
AMOUNTS = st.one_of(st.integers(1, 10 * BTC), st.sampled_from([0, -1, CAP, CAP - 1, CAP + 1, 10 * BTC + 1, 2**63]))

accounts = st.sampled_from(ACCOUNTS)
# A pending item: mostly one that is pending now (chosen when the step runs), sometimes any id at all.
pending_picks = st.one_of(st.integers(0, 20), st.builds(lambda prefix, n: f"{prefix}-{n}",
                                                        st.sampled_from(["pu", "tr", "cc"]), st.integers(0, 60)))


def _purchase(account_id, quantity_sats, currency, fiat_off):
    fiat = str(quantity_sats + fiat_off) if quantity_sats >= 0 else "1"
    return cmd.RecordPurchase("", account_id, quantity_sats, "100000000", currency, fiat, "V", "T", "2026-01-01")


def _resolving(command_type):
    return st.builds(lambda pick: (command_type, pick), pending_picks)


COMMANDS = st.one_of(
    st.builds(_purchase, accounts, AMOUNTS, st.sampled_from(["USD", "USD", "EUR", "ZZZ"]),
              st.sampled_from([0, 0, 0, 5])),
    st.builds(lambda d, c, n, fix: cmd.ProposeTransfer("", d, c, n, corrects_position=0 if fix else -1),
              accounts, accounts, AMOUNTS, st.booleans()),
    st.builds(lambda f, t, n, fee: cmd.ProposeCustodyChange("", f, t, n, "move", txid="ab" * 32 if fee else "",
                                                            network_fee_sats=fee), accounts, accounts, AMOUNTS,
              st.sampled_from([0, 0, 1000])),
    _resolving(cmd.ApprovePurchase), _resolving(cmd.ApproveTransfer), _resolving(cmd.ApproveCustodyChange),
    _resolving(cmd.ApproveTransfer), _resolving(cmd.RejectTransfer), _resolving(cmd.RejectPurchase),
    _resolving(cmd.ExpirePending), _resolving(cmd.ExpireTransfer),
    st.builds(lambda a, kind: cmd.OpenAccount("", a, kind, "Custodian", "L", 1, 1), accounts,
              st.sampled_from(["cold", "warm", "bad"])),
    st.builds(lambda a, change: change("", a), accounts,
              st.sampled_from([cmd.FreezeAccount, cmd.UnfreezeAccount, cmd.CloseAccount])),
)
STEPS = st.lists(st.tuples(COMMANDS, st.sampled_from(CALLERS), st.integers(0, limits.EXPIRY_DEFAULT_US // 4)),
                 min_size=STEPS_MIN, max_size=STEPS_MAX)
OPENING = [cmd.OpenAccount("", a, "cold", "Custodian", "L", 1, 1) for a in ("cold-a", "cold-b", "warm-c")] + [
    _purchase(a, 5 * BTC, "USD", 0) for a in ("cold-a", "cold-b")]


def check_bounds(state) -> None:
    total = 0
    for account in state.accounts.values():
        total += account.balance_sats
        assert abs(account.balance_sats) <= CAP and 0 <= account.held_sats <= CAP, account
        assert max(account.credits_sats, account.debits_sats) <= limits.TURNOVER_MAX_SATS, account
        if not account.is_nominal:
            assert account.available_sats >= 0, account
    assert total == 0 and state.debits_sats == state.credits_sats
    assert 0 <= state.custody_total_sats == state.reserve_total_sats() <= CAP
    assert sum(c.quantity_sats for c in state.currencies.values()) <= CAP


@settings(max_examples=PROPERTY_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(steps=STEPS)
def test_random_commands_keep_every_invariant_and_replay_equals_live(steps):
    with tempfile.TemporaryDirectory() as directory:
        data_dir = pathlib.Path(directory) / "data"
        ledger = ReserveLedger(sqlite_env(data_dir), policy=Policy(purchase_approval_threshold_sats=10 * BTC))
        signer = TreeHeadSigner(ledger.store, load_or_create_signing_key(data_dir / "signing.key"), lambda: T0)
        assert signer.open_log() is None  # every commit signs its own tree head, as in the server
        try:
            run_steps(ledger, steps)
            assert ledger.rebuild().to_bytes() == ledger.live_state_bytes()
            audit_an_export(ledger, signer, pathlib.Path(directory) / "bundle")
        finally:
            ledger.close()


def concrete(step, number: int, pending: list[str]) -> cmd.Command:
    """The step's command with its own request id, a chosen pending id filled in."""
    if isinstance(step, tuple):
        command_type, pick = step
        pending_id = pick if isinstance(pick, str) else (pending[pick % len(pending)] if pending else "tr-0")
        return command_type(f"r-{number}", pending_id)
    return dataclasses.replace(step, request_id=f"r-{number}")


def run_steps(ledger: ReserveLedger, steps) -> int:
    """Returns how many commands were recorded."""
    time_us, recorded = T0, 0
    for number, (step, caller, advance_us) in enumerate([(c, CALLERS[0], 0) for c in OPENING] + steps):
        time_us += advance_us
        with ledger.reading() as state:
            command = concrete(step, number, sorted(state.pending))
        before = ledger.live_state_bytes()
        size = ledger.store.log_size()
        outcome = ledger.execute([(command, caller)], time_us)[0]
        if isinstance(outcome, errors.LedgerError):
            assert ledger.store.log_size() == size and ledger.live_state_bytes() == before, outcome
        else:
            assert isinstance(outcome, Recorded) and ledger.store.log_size() == size + 1
            recorded += 1
        with ledger.reading() as state:
            check_bounds(state)
    return recorded


def audit_an_export(ledger: ReserveLedger, signer: TreeHeadSigner, bundle_dir: pathlib.Path) -> None:
    assert signer.latest().tree_size == ledger.store.log_size()  # the last commit's head covers the whole log
    export_bundle(ledger, bundle_dir, signer.public_key_raw)
    facts = audit_bundle(bundle_dir)
    assert facts["findings"].total == 0, facts["findings"].kept[:5]
    assert facts["replay_stopped_at"] is None
