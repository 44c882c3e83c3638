"""Development PKI: a CA, a server certificate and client certificates carrying identity and role."""

import datetime
import ipaddress
import os
import pathlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.api.auth import IDENTITY_URI, ROLES, identity_uri
from services.errors import AlreadyExists, ConfigurationInvalid

VALIDITY_DAYS = 365
# frank holds two certificates (operator and approver): four-eyes still stops him approving his own proposal.
DEFAULT_IDENTITIES = (("alice", "operator"), ("bob", "approver"), ("carol", "approver"), ("dave", "auditor"),
                      ("erin", "admin"), ("frank", "operator"), ("frank", "approver"))


def _name(common_name: str, unit: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Reserve Ledger development"),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def parse_identities(specs: list[str]) -> tuple[tuple[str, str], ...]:
    """NAME:ROLE strings -> (name, role) pairs; refuses a bad name or role before anything is written."""
    identities = []
    for spec in specs:
        name, sep, role = spec.partition(":")
        if not sep or role not in ROLES:
            raise ConfigurationInvalid(f"--identity {spec!r}: expected NAME:ROLE with ROLE one of {', '.join(ROLES)}")
        if not IDENTITY_URI.match(identity_uri(name, role)):
            raise ConfigurationInvalid(f"--identity {spec!r}: a name is 1-64 letters, digits, '.', '_' or '-'")
        identities.append((name, role))
    if len(set(identities)) != len(identities):
        raise ConfigurationInvalid("--identity: the same NAME:ROLE is given twice")
    return tuple(identities)


def _write_private(path: pathlib.Path, data: bytes) -> None:
    """Mode 0600 from the first byte (never readable by others, whatever the umask)."""
    if path.exists():
        path.unlink()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)


def _write(directory: pathlib.Path, stem: str, key, cert: x509.Certificate) -> None:
    _write_private(directory / f"{stem}.key", key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (directory / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _issue(subject: x509.Name, key, issuer: x509.Name, issuer_key, now: datetime.datetime, *, ca: bool,
           san: list, usage: list):
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=VALIDITY_DAYS))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def init_certs(directory: str | pathlib.Path, identities=DEFAULT_IDENTITIES,
               server_names=("localhost",), now: datetime.datetime | None = None, *, force: bool = False) -> pathlib.Path:
    """Create ca.pem, server.pem/.key and <name>.pem/.key per (name, role) (<name>-<role>.* when a name has
    several roles); returns the directory. A directory that already holds a CA is refused unless `force`."""
    out = pathlib.Path(directory)
    for name, role in identities:
        if role not in ROLES:
            raise ConfigurationInvalid(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
    if out.exists() and not out.is_dir():
        raise ConfigurationInvalid(f"{out} is a file, not a directory")
    if not force and ((out / "ca.pem").exists() or (out / "ca.key").exists()):
        raise AlreadyExists(f"{out} already holds a CA; replacing it invalidates every certificate it issued "
                            "(pass --force to do so, or choose another directory)")
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    now = now or datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("Reserve Ledger development CA", "ca")
    ca_cert = _issue(ca_name, ca_key, ca_name, ca_key, now, ca=True, san=[], usage=[])
    _write(out, "ca", ca_key, ca_cert)
    server_key = ec.generate_private_key(ec.SECP256R1())
    san = [x509.DNSName(n) for n in server_names] + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server_cert = _issue(_name(server_names[0], "server"), server_key, ca_name, ca_key, now, ca=False, san=san,
                         usage=[ExtendedKeyUsageOID.SERVER_AUTH])
    _write(out, "server", server_key, server_cert)
    names = [name for name, _ in identities]
    for name, role in identities:
        stem = name if names.count(name) == 1 else f"{name}-{role}"
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(_name(name, role), key, ca_name, ca_key, now, ca=False,
                      san=[x509.UniformResourceIdentifier(identity_uri(name, role))],
                      usage=[ExtendedKeyUsageOID.CLIENT_AUTH])
        _write(out, stem, key, cert)
    return out
