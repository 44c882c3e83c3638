"""A correctly signed event that breaks a ledger rule is refused by `reserve-ledger rebuild`, `verify` and `audit`
of an export, each naming its position and the rule.

The attacker here has write access to the database AND the signing key: the forged event is stored by the real
recorder (canonical bytes, ledger_log row, Merkle nodes) and a tree head over it is signed with the real key,
so only the replay's rules can tell."""

import subprocess
import sys

import pytest

from ledger import commands as cmd
from ledger.application import Recorded, ReserveLedger
from ledger.events import BOOK_ID, LoggedEvent, canonical_bytes
from ledger.limits import SATS_PER_BTC as BTC
from ledger.limits import SUPPLY_CAP_SATS as CAP
from services.store.config import storage_env
from services.store.signing import SIGNING_KEY_FILE_NAME, TreeHeadSigner, load_or_create_signing_key

OPERATOR, APPROVER, ADMIN = cmd.Caller("alice", "operator"), cmd.Caller("bob", "approver"), cmd.Caller("erin", "admin")
T0 = 1_790_000_000_000_000
FORGED_AT = 6


def base_log(app: ReserveLedger) -> None:
    """0-1: cold-a, cold-b; 2: 5 BTC into cold-a; 3: alice proposes tr-3 (1 BTC to cold-b); 4-5: cold-c closed."""
    commands = [(cmd.OpenAccount("o-a", "cold-a", "cold", "C", "L", 1, 1), OPERATOR),
                (cmd.OpenAccount("o-b", "cold-b", "cold", "C", "L", 1, 1), OPERATOR),
                (purchase_command("p-1", "cold-a", 5 * BTC), OPERATOR),
                (cmd.ProposeTransfer("t-1", "cold-a", "cold-b", BTC), OPERATOR),
                (cmd.OpenAccount("o-c", "cold-c", "cold", "C", "L", 1, 1), OPERATOR),
                (cmd.CloseAccount("c-c", "cold-c"), ADMIN)]
    outcomes = app.execute(commands, T0)
    assert all(isinstance(o, Recorded) for o in outcomes), outcomes


def purchase_command(request_id, account_id, quantity_sats):
    return cmd.RecordPurchase(request_id, account_id, quantity_sats, "100000000", "USD", str(quantity_sats), "V", "T",
                              "2026-01-01")


def purchased(account_id="cold-a", quantity_sats=BTC, **changes) -> tuple[str, dict, cmd.Caller]:
    data = {"purchase_id": f"pu-{FORGED_AT}", **purchase_command("x", account_id, quantity_sats).payload(), **changes}
    return "ReservePurchased", data, OPERATOR


def proposed(amount_sats) -> tuple[str, dict, cmd.Caller]:
    data = {"transfer_id": f"tr-{FORGED_AT}", "debit_account_id": "cold-a", "credit_account_id": "cold-b",
            "amount_sats": amount_sats, "memo": "", "expire_time_us": T0 + 3_600_000_000, "corrects_position": -1}
    return "TransferProposed", data, OPERATOR


# Each forged event and the rule the replay must name for it.
FORGERIES = {
    "AMOUNT_MUST_BE_POSITIVE": purchased(quantity_sats=-5 * BTC, fiat_total="5"),
    "CURRENCY_CODE_UNKNOWN": purchased(currency_code="ZZZ"),
    "DECIMAL_MALFORMED": purchased(price_per_btc="100000000\n"),
    "SUPPLY_CAP_EXCEEDED": purchased("cold-b", CAP),
    "INSUFFICIENT_AVAILABLE_BALANCE": proposed(4 * BTC + 1),     # 5 BTC less the 1 BTC held by tr-3
    "APPROVER_MUST_DIFFER_FROM_PROPOSER": ("TransferApproved", {"transfer_id": "tr-3", "proposer": "alice"},
                                           cmd.Caller("alice", "approver")),
    "ACCOUNT_NOT_FOUND": purchased("cold-z"),
    "ACCOUNT_CLOSED": purchased("cold-c"),
    "PENDING_NOT_FOUND": ("TransferApproved", {"transfer_id": "tr-2", "proposer": "alice"}, APPROVER),
    "EVENT_NOT_AS_DECIDED": ("TransferApproved", {"transfer_id": "tr-3", "proposer": "oscar"}, APPROVER),
    "EVENT_MALFORMED": ("TransferRejected", {"transfer_id": "tr-3"}, APPROVER),
}


def forge(data_dir, database_url, key_path, event_type: str, data: dict, caller: cmd.Caller) -> None:
    """Store the event as the service would (recorder: bytes, log row, Merkle nodes), each commit signing its
    head with the real key, as an insider holding the key and the service's code could."""
    app = ReserveLedger(storage_env(data_dir, database_url))
    try:
        signer = TreeHeadSigner(app.store, load_or_create_signing_key(key_path), lambda: T0 + 2)
        assert signer.open_log() is None  # from here on every commit signs its own head
        base_log(app)
        event = {"format_version": 1, "position": FORGED_AT, "type": event_type, "time_us": T0 + 1,
                 "request_id": "forged", "request_digest": "00" * 32, "actor": caller.identity,
                 "actor_role": caller.role, "data": data}
        app.save(LoggedEvent(BOOK_ID, FORGED_AT + 1, canonical_bytes(event)))  # as logged_event, unchecked
        assert signer.latest().tree_size == FORGED_AT + 1
    finally:
        app.close()


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli.main", *map(str, args)], capture_output=True,
                          text=True, timeout=180)


def storage_args(data_dir, database_url) -> list:
    return ["--database", database_url] if database_url else ["--data-dir", data_dir]


def assert_each_command_names(rule, data_dir, database_url, key_path, tmp_path) -> None:
    named = f"position {FORGED_AT}: {rule}:"
    storage = storage_args(data_dir, database_url)
    rebuilt = cli("rebuild", *storage)
    assert rebuilt.returncode == 1 and named in rebuilt.stderr + rebuilt.stdout, rebuilt
    assert len((rebuilt.stderr + rebuilt.stdout).strip().splitlines()) == 1, rebuilt
    verified = cli("verify", *storage, "--signing-key", key_path)
    assert verified.returncode == 1 and named in verified.stdout, verified
    assert f"first bad position: {FORGED_AT}" in verified.stdout, verified.stdout
    bundle = tmp_path / "bundle"
    exported = cli("export", *storage, "--out", bundle, "--signing-key", key_path)
    assert exported.returncode == 0, exported
    audited = cli("audit", bundle)
    assert audited.returncode != 0 and named in audited.stdout, audited
    assert f"event {FORGED_AT}" in audited.stdout, audited.stdout


@pytest.mark.parametrize("rule", sorted(FORGERIES))
def test_a_signed_event_breaking_a_rule_is_named_by_rebuild_verify_and_audit(rule, tmp_path):
    data_dir = tmp_path / "data"
    key_path = data_dir / SIGNING_KEY_FILE_NAME
    forge(data_dir, None, key_path, *FORGERIES[rule])
    assert_each_command_names(rule, data_dir, None, key_path, tmp_path)


@pytest.mark.parametrize("rule", ["APPROVER_MUST_DIFFER_FROM_PROPOSER", "SUPPLY_CAP_EXCEEDED"])
def test_the_same_on_each_backend(rule, storage, tmp_path):
    data_dir, database_url = storage
    key_path = tmp_path / "signing.key" if database_url else f"{data_dir}/{SIGNING_KEY_FILE_NAME}"
    forge(data_dir, database_url, key_path, *FORGERIES[rule])
    assert_each_command_names(rule, data_dir, database_url, key_path, tmp_path)


def test_serve_refuses_to_start_on_a_log_the_replay_refuses(tmp_path, certs_dir):
    """A correctly signed event that breaks a rule: the server does not come up to serve or decide on it."""
    data_dir = tmp_path / "data"
    forge(data_dir, None, data_dir / SIGNING_KEY_FILE_NAME, *FORGERIES["SUPPLY_CAP_EXCEEDED"])
    served = cli("serve", "--certs", certs_dir, "--data-dir", data_dir, "--listen", "127.0.0.1:0",
                 "--metrics-listen", "off")
    assert served.returncode == 1, served.stderr
    lines = served.stderr.strip().splitlines()
    assert len(lines) == 1 and f"position {FORGED_AT}: SUPPLY_CAP_EXCEEDED" in lines[0], served.stderr
    assert "Traceback" not in served.stderr
