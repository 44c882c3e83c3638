"""A deterministic scenario driven straight through the application (no gRPC), with a fixed clock."""

from ledger import commands as cmd
from ledger.application import Recorded
from ledger.limits import SATS_PER_BTC as BTC

T0_US = 1_790_000_000_000_000
OPERATOR, APPROVER, ADMIN = cmd.Caller("alice", "operator"), cmd.Caller("bob", "approver"), cmd.Caller("erin", "admin")


def run(ledger, command, caller, time_us) -> Recorded:
    outcome = ledger.execute([(command, caller)], time_us)[0]
    if not isinstance(outcome, Recorded):
        raise outcome
    return outcome


def drive(ledger, rounds: int = 3) -> int:
    """Accounts, purchases in two currencies, approved/rejected transfers, a custody change, a correction."""
    t = T0_US
    for account_id, custodian in (("cold-a", "BNY Mellon"), ("cold-b", "Vault"), ("warm-c", "Ops")):
        run(ledger, cmd.OpenAccount(f"open-{account_id}", account_id, "cold", custodian, "label", 2, 3), OPERATOR, t)
        t += 1000
    for r in range(rounds):
        run(ledger, cmd.RecordPurchase(f"buy-usd-{r}", "cold-a", 3 * BTC, "60000.5", "USD", "180001.50", "V",
                                       f"T{r}", "2026-11-02"), OPERATOR, t)
        run(ledger, cmd.RecordPurchase(f"buy-eur-{r}", "cold-b", BTC // 2, "55000", "EUR", "27500", "W",
                                       f"E{r}", "2026-11-03"), OPERATOR, t + 1)
        proposed = run(ledger, cmd.ProposeTransfer(f"move-{r}", "cold-a", "warm-c", BTC, "memo"), OPERATOR, t + 2)
        run(ledger, cmd.ApproveTransfer(f"ok-{r}", proposed.data["transfer_id"]), APPROVER, t + 3)
        other = run(ledger, cmd.ProposeTransfer(f"move-x-{r}", "cold-b", "warm-c", 1000, "x"), OPERATOR, t + 4)
        run(ledger, cmd.RejectTransfer(f"no-{r}", other.data["transfer_id"], "no"), APPROVER, t + 5)
        change = run(ledger, cmd.ProposeCustodyChange(f"cc-{r}", "cold-a", "cold-b", BTC // 4, "ceremony", "KC-1",
                                                      3, 5, "ab" * 32, 700), OPERATOR, t + 6)
        run(ledger, cmd.ApproveCustodyChange(f"cc-ok-{r}", change.data["custody_change_id"]), APPROVER, t + 7)
        fix = run(ledger, cmd.ProposeTransfer(f"fix-{r}", "warm-c", "nominal:adjustments", 10, "correction", None,
                                              corrects_position=proposed.position), OPERATOR, t + 8)
        run(ledger, cmd.ApproveTransfer(f"fix-ok-{r}", fix.data["transfer_id"]), APPROVER, t + 9)
        t += 1_000_000
    return t
