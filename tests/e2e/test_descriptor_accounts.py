"""OpenAccount with descriptors over the real mTLS server: a bad descriptor or gap limit is INVALID_ARGUMENT with a
field violation naming the rule, nothing is recorded; a good one is listed back with its gap limit."""

import grpc
import pytest

from ledger.descriptors import descriptor_checksum
from reserve_ledger.v1 import ledger_pb2 as pb
from tests.e2e.helpers import error_reason, log_size, open_account, rpc_error, violations

XPUB = ("xpub6ERApfZwUNrhLCkDtcHTcxd75RbzS1ed54G1LkBUHQVHQKqhMkhgbmJbZRkrgZw4koxb5JaHWkY4ALHY2grBGRjaDMzQLcgJvLJuZZ"
        "vRcEL")
XPRV = ("xprvA1RpRA33e1JQ7ifknakTFpgNXPmW2YvmhqLQYMmrj4xJXXWYpDPS3xz7iAxn8L39njGVyuoseXzU6rcxFLJ8HFsTjSyQbLYnMpCqE2"
        "VbFWc")


def checksummed(body: str) -> str:
    return f"{body}#{descriptor_checksum(body)}"


def request(descriptor: str, gap_limit: int = 0) -> pb.OpenAccountRequest:
    return pb.OpenAccountRequest(request_id="open-vault", account_id="vault-d", kind=pb.ACCOUNT_KIND_COLD,
                                 custodian="C", wallet_label="W", quorum=pb.Quorum(required=1, total=1),
                                 descriptor=descriptor, gap_limit=gap_limit)


CASES = [
    ("no checksum", request(f"wpkh({XPUB}/0/*)"), "descriptor", "DESCRIPTOR_CHECKSUM_MISSING"),
    ("wrong checksum", request(f"wpkh({XPUB}/0/*)#qqqqqqqq"), "descriptor", "DESCRIPTOR_CHECKSUM_MISMATCH"),
    ("private key", request(checksummed(f"wpkh({XPRV}/0/*)")), "descriptor", "DESCRIPTOR_PRIVATE_KEY"),
    ("hardened after xpub", request(checksummed(f"wpkh({XPUB}/0h/*)")), "descriptor",
     "DESCRIPTOR_HARDENED_AFTER_XPUB"),
    ("not a curve point", request(checksummed("wpkh(02" + "00" * 32 + ")")), "descriptor", "DESCRIPTOR_NOT_DERIVABLE"),
    ("gap limit on a fixed key", request(checksummed(f"wpkh({XPUB})"), gap_limit=50), "gap_limit",
     "GAP_LIMIT_WITHOUT_RANGED_DESCRIPTOR"),
    ("gap limit too large", request(checksummed(f"wpkh({XPUB}/<0;1>/*)"), gap_limit=10_001), "gap_limit",
     "GAP_LIMIT_INVALID"),
]


@pytest.mark.parametrize("case, message, field, rule", CASES, ids=[c[0] for c in CASES])
def test_a_bad_descriptor_or_gap_limit_is_invalid_argument_naming_the_rule(clients, case, message, field, rule):
    """The field violation names the field and the rule; the log does not grow."""
    size_before = log_size(clients)
    error = rpc_error(clients.alice.OpenAccount, message)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert violations(error) == {field: rule}
    assert error_reason(error) == rule
    assert log_size(clients) == size_before


def test_a_ranged_multisig_descriptor_is_recorded_and_listed_with_its_gap_limit(clients):
    """A 1-of-2 sortedmulti over two xpubs with <0;1>/* and a gap limit of 50 is opened and listed as given."""
    open_account(clients.alice, "cold-a")
    descriptor = checksummed(f"wsh(sortedmulti(1,[deadbeef/48h/0h/0h/2h]{XPUB}/<0;1>/*,{XPUB}/7/<0;1>/*))")
    clients.alice.OpenAccount(request(descriptor, gap_limit=50), timeout=10)
    listed = {a.account_id: a for a in clients.dave.ListAccounts(pb.ListAccountsRequest(), timeout=10).accounts}
    assert listed["vault-d"].descriptor == descriptor and listed["vault-d"].gap_limit == 50
    assert listed["cold-a"].gap_limit == 0
