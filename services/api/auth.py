"""Identity from the client certificate, and the one method -> roles table.

A client certificate carries a SPIFFE-style URI SAN  spiffe://reserve-ledger/role/<role>/identity/<name>
(made by `reserve-ledger certs init`). The identity <name> is stamped on every event; four-eyes compares
identities, so one person holding an operator and an approver certificate still cannot approve their
own proposal. In plaintext loopback development mode the identity comes from the metadata header
x-reserve-ledger-dev-identity: <name>/<role> (never from the request body).
"""

import re

from ledger.commands import Caller
from ledger.errors import IdentityMissing, RoleNotAllowed

ROLES = ("operator", "approver", "auditor", "admin")
IDENTITY_URI = re.compile(r"^spiffe://reserve-ledger/role/(?P<role>[a-z]+)/identity/(?P<name>[A-Za-z0-9._-]{1,64})$")
DEV_IDENTITY_HEADER = "x-reserve-ledger-dev-identity"
SERVICE = "/reserve_ledger.v1.ReserveLedgerService/"
AUDIT_SERVICE = "/reserve_ledger.v1.AuditService/"
ALERT_SERVICE = "/reserve_ledger.v1.AlertService/"

EVERYONE = frozenset(ROLES)
READERS = EVERYONE
ALLOWED_ROLES: dict[str, frozenset[str]] = {
    SERVICE + "OpenAccount": frozenset({"operator", "admin"}),
    SERVICE + "FreezeAccount": frozenset({"admin"}),
    SERVICE + "UnfreezeAccount": frozenset({"admin"}),
    SERVICE + "CloseAccount": frozenset({"admin"}),
    SERVICE + "RecordPurchase": frozenset({"operator"}),
    SERVICE + "ApprovePurchase": frozenset({"approver"}),
    SERVICE + "RejectPurchase": frozenset({"approver"}),
    SERVICE + "ProposeTransfer": frozenset({"operator"}),
    SERVICE + "ApproveTransfer": frozenset({"approver"}),
    SERVICE + "RejectTransfer": frozenset({"approver"}),
    SERVICE + "ExpireTransfer": frozenset({"operator", "approver", "admin"}),
    SERVICE + "ProposeCustodyChange": frozenset({"operator"}),
    SERVICE + "ApproveCustodyChange": frozenset({"approver"}),
    SERVICE + "RejectCustodyChange": frozenset({"approver"}),
    SERVICE + "ListAccounts": READERS,
    SERVICE + "GetBalances": READERS,
    SERVICE + "GetHoldings": READERS,
    SERVICE + "GetCostBasis": READERS,
    SERVICE + "ListPending": READERS,
    SERVICE + "ListEvents": READERS,
    SERVICE + "StreamEvents": frozenset({"auditor", "admin"}),
    AUDIT_SERVICE + "GetTreeHead": frozenset({"auditor", "admin"}),
    AUDIT_SERVICE + "GetInclusionProof": frozenset({"auditor", "admin"}),
    AUDIT_SERVICE + "GetConsistencyProof": frozenset({"auditor", "admin"}),
    AUDIT_SERVICE + "GetEventBytes": frozenset({"auditor", "admin"}),
    AUDIT_SERVICE + "StreamLeaves": frozenset({"auditor", "admin"}),
    AUDIT_SERVICE + "GetPublicKey": frozenset({"auditor", "admin"}),
    AUDIT_SERVICE + "GetEventProof": frozenset({"auditor", "admin"}),
    AUDIT_SERVICE + "ListTreeHeads": frozenset({"auditor", "admin"}),
    AUDIT_SERVICE + "ListAnchors": frozenset({"auditor", "admin"}),
    AUDIT_SERVICE + "GetAnchorGenesis": frozenset({"auditor", "admin"}),
    ALERT_SERVICE + "ListAlerts": frozenset({"auditor", "admin"}),
    ALERT_SERVICE + "StreamAlerts": frozenset({"auditor", "admin"}),
    AUDIT_SERVICE + "GetCheckpoint": frozenset({"auditor", "admin"}),
}


def identity_uri(name: str, role: str) -> str:
    return f"spiffe://reserve-ledger/role/{role}/identity/{name}"


def caller_from_auth_context(auth_context: dict, metadata: dict, dev_mode: bool) -> Caller:
    for uri in auth_context.get("peer_spiffe_id", []) + auth_context.get("x509_subject_alternative_name", []):
        match = IDENTITY_URI.match(uri.decode() if isinstance(uri, bytes) else uri)
        if match and match["role"] in ROLES:
            return Caller(match["name"], match["role"])
    if dev_mode and DEV_IDENTITY_HEADER in metadata:
        name, _, role = metadata[DEV_IDENTITY_HEADER].partition("/")
        match = IDENTITY_URI.match(identity_uri(name, role))
        if match and role in ROLES:
            return Caller(name, role)
    raise IdentityMissing("no ledger identity in the client certificate")


def check_role(method: str, caller: Caller) -> None:
    allowed = ALLOWED_ROLES.get(method)
    if allowed is None or caller.role not in allowed:
        raise RoleNotAllowed(f"role {caller.role!r} may not call {method.rsplit('/', 1)[-1]}")


def caller_of(context, dev_mode: bool) -> Caller:
    metadata = {key: value for key, value in context.invocation_metadata() if isinstance(value, str)}
    return caller_from_auth_context(context.auth_context(), metadata, dev_mode)
