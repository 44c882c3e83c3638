"""Composition root: one validated configuration -> storage, ledger, signer, chain backend, server.

`serve`, every CLI command and the demo build what they need here and nowhere else. Each builder
checks its whole configuration first (`ConfigurationInvalid` / `NothingStoredHere`, one line that
says how to fix it) and only then opens the database, the key files or the chain.
The defaults live in the dataclasses below; the CLI's options read them from here (one place).
"""

import dataclasses
import ipaddress
import logging
import pathlib
import random
import socket
import time
from urllib.parse import urlparse

from ledger.anchor_policy import AnchorPolicy
from ledger.application import ReserveLedger
from ledger.rules import Policy
from services.bitcoin.backends import check_spec, open_backend
from services.errors import ConfigurationInvalid, NothingStoredHere
from services.api.streams import STREAMS_PER_IDENTITY_MAX, STREAMS_TOTAL_MAX
from services.keys.files import check_private, read_secret_line
from services.keys.signers import open_token_anchor_key, open_tree_head_key
from services.keys.uri import is_pkcs11_uri, parse_pkcs11_uri
from services.store.config import SQLITE_FILE_NAME, postgres_env, sized_pool, sqlite_env, tighten_database_files
from services.store.seals import StateProofs
from services.store.signing import SIGNING_KEY_FILE_NAME, TREE_HEAD_KEEP_EVERY_EVENTS, TreeHeadSigner

DEFAULT_DATA_DIR = "./reserve-data"
ANCHOR_KEY_FILE_NAME = "anchor-wallet.wif"
NETWORKS = ("mainnet", "testnet", "signet", "regtest")
POSTGRES_PROBE_TIMEOUT_S = 5
CERT_FILES = ("ca.pem", "server.pem", "server.key")
CA_KEY_FILE_NAME = "ca.key"
DEFAULT_METRICS_LISTEN = "127.0.0.1:9464"
log = logging.getLogger("reserve_ledger.compose")
CALL_THREADS = 32
CALL_THREADS_MAX = 512
# Store connections beyond the call threads: the command writer, the supervised workers, a metrics scrape.
BACKGROUND_CONNECTIONS = 6


def clock_us() -> int:
    """The service's one wall clock (microseconds since the epoch); ledger/ receives time from here."""
    return time.time_ns() // 1000


def jittered_backoff(attempt: int) -> None:
    """After losing an append race to another process: sleep up to 1 ms x 2^attempt (capped at 100 ms)."""
    time.sleep(random.uniform(0, min(0.001 * 2 ** attempt, 0.1)))


def _setting(default, help_text: str):
    """A configuration field whose default and help text the CLI reads (services/cli/options.py)."""
    return dataclasses.field(default=default, metadata={"help": help_text})


# --- storage ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StorageConfig:
    data_dir: str | None = _setting(DEFAULT_DATA_DIR, "SQLite data directory")
    database_url: str | None = _setting(
        None, "PostgreSQL URL, postgresql://user@host[:port]/dbname[?schema=name]; the password comes from "
              "--database-password-file or libpq's PGPASSFILE / ~/.pgpass, never from the command line")
    database_password_file: str | None = _setting(
        None, "file (mode 0600) whose first line is the PostgreSQL password")

    @property
    def label(self) -> str:
        if self.database_url:
            url = urlparse(self.database_url)
            return f"PostgreSQL {url.hostname}:{url.port or 5432}/{url.path.strip('/')}"
        return f"data dir {self.data_dir}"

    def env(self) -> dict:
        """The eventsourcing environment (reads --database-password-file, nothing else on disk or the network)."""
        if self.database_url:
            try:
                env = postgres_env(self.database_url)
            except ValueError as error:
                raise ConfigurationInvalid(f"--database: {error}") from None
            if self.database_password_file:
                if env["POSTGRES_PASSWORD"]:
                    raise ConfigurationInvalid("--database carries a password and --database-password-file "
                                               "gives another: remove the password from the URL")
                env["POSTGRES_PASSWORD"] = read_secret_line(self.database_password_file, "--database-password-file")
            return env
        if self.database_password_file:
            raise ConfigurationInvalid("--database-password-file is for --database (PostgreSQL)")
        return sqlite_env(self.data_dir or DEFAULT_DATA_DIR, create=False)


def storage_of(data_dir: str | None, database_url: str | None, database_password_file: str | None = None
               ) -> StorageConfig:
    if database_url:
        return StorageConfig(None, database_url, database_password_file)
    return StorageConfig(data_dir or DEFAULT_DATA_DIR, None, database_password_file)


def check_store_exists(storage: StorageConfig) -> None:
    """Refuse a data dir or database schema that holds no ledger (a typo must not create an empty one)."""
    env = storage.env()
    if storage.database_url:
        if not _postgres_holds_ledger(env):
            raise NothingStoredHere(
                f"no ledger in schema {env['POSTGRES_SCHEMA']!r} of {storage.label}: check --database, or create "
                f"one with `reserve-ledger serve --init --database URL`")
        return
    path = pathlib.Path(storage.data_dir or DEFAULT_DATA_DIR)
    if not (path / SQLITE_FILE_NAME).is_file():
        raise NothingStoredHere(
            f"no ledger in {path} ({SQLITE_FILE_NAME} is missing): check --data-dir, or create one with "
            f"`reserve-ledger serve --init --data-dir {path}`")


def _postgres_holds_ledger(env: dict) -> bool:
    import psycopg
    try:
        with psycopg.connect(host=env["POSTGRES_HOST"], port=int(env["POSTGRES_PORT"]), dbname=env["POSTGRES_DBNAME"],
                             user=env["POSTGRES_USER"], password=env["POSTGRES_PASSWORD"] or None,
                             connect_timeout=POSTGRES_PROBE_TIMEOUT_S) as conn:
            row = conn.execute("SELECT to_regclass(%s) IS NOT NULL",
                               (f'"{env["POSTGRES_SCHEMA"]}".ledger_log',)).fetchone()
    except psycopg.Error as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise ConfigurationInvalid(
            f"cannot reach PostgreSQL at {env['POSTGRES_HOST']}:{env['POSTGRES_PORT']} "
            f"(database {env['POSTGRES_DBNAME']!r}): {reason}") from None
    return bool(row[0])


def open_ledger(storage: StorageConfig, *, create: bool = False, policy: Policy = Policy(),
                backoff=lambda attempt: None, proofs=None, repair: bool = False,
                connections_max: int | None = None) -> ReserveLedger:
    """The ledger on this storage; an existing one unless `create`. `proofs` (sealing_proofs or
    checking_proofs) decides which saved states it may use; `repair` replaces the unproven ones;
    `connections_max` sizes the store's connection pool (the library's default otherwise)."""
    if create:
        env = storage.env()
        if storage.database_url:
            _postgres_holds_ledger(env)  # reachable, or one line saying why not
        else:
            env = sqlite_env(storage.data_dir or DEFAULT_DATA_DIR, create=True)
    else:
        check_store_exists(storage)
        env = storage.env()
    if connections_max is not None:
        env = sized_pool(env, connections_max)
    if not storage.database_url:
        for path in tighten_database_files(pathlib.Path(storage.data_dir or DEFAULT_DATA_DIR)):
            log.warning("%s was readable by group or others; it is now 0600", path)
    return ReserveLedger(env, policy, backoff, proofs, repair)


# --- keys -------------------------------------------------------------------------------------------------


KeySpec = str | pathlib.Path  # a key file's path, or a `pkcs11:` URI naming a key in a token (services/keys/uri.py)


@dataclasses.dataclass(frozen=True)
class TokenAccess:
    """How to reach keys named by `pkcs11:` URIs that carry no pin-source / module-path of their own."""
    pin_file: str | None = None
    module_path: str | None = None


def signing_key_path(storage: StorageConfig, given: str | None) -> KeySpec:
    """--signing-key (a file or a pkcs11: URI), or the data dir's key file (PostgreSQL replicas must all be
    given the same key)."""
    if given:
        return given if is_pkcs11_uri(given) else pathlib.Path(given)
    if storage.database_url:
        raise ConfigurationInvalid("with --database every replica must sign with the same key: pass --signing-key "
                                   "FILE or pkcs11:URI")
    return pathlib.Path(storage.data_dir or DEFAULT_DATA_DIR) / SIGNING_KEY_FILE_NAME


def existing_signing_key_path(storage: StorageConfig, given: str | None) -> KeySpec | None:
    """The private key if it is at hand: --signing-key (must exist), or the data dir's key when present."""
    if given:
        if is_pkcs11_uri(given):
            return given
        path = pathlib.Path(given)
        if not path.is_file():
            raise NothingStoredHere(f"--signing-key {path}: no such file")
        return path
    if storage.database_url:
        return None
    path = pathlib.Path(storage.data_dir or DEFAULT_DATA_DIR) / SIGNING_KEY_FILE_NAME
    return path if path.is_file() else None


def load_signing_key(spec: KeySpec, *, create: bool, access: TokenAccess = TokenAccess()):
    """The tree-head signer (services/keys/signers.py): a token key, or a PEM file (created when `create`)."""
    if not is_pkcs11_uri(str(spec)) and not create and not pathlib.Path(spec).is_file():
        raise NothingStoredHere(f"no tree-head signing key at {spec}: check --signing-key")
    try:
        return open_tree_head_key(spec, create=create, pin_file=access.pin_file, module_path=access.module_path)
    except ValueError as error:
        raise ConfigurationInvalid(f"{spec}: {error}") from None


def public_key_of(storage: StorageConfig, public_key_hex: str | None, signing_key: str | None) -> bytes | None:
    """The tree heads' raw Ed25519 public key: --public-key HEX, or from the private key at hand."""
    if public_key_hex:
        try:
            raw = bytes.fromhex(public_key_hex)
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise ConfigurationInvalid("--public-key must be 64 hex digits (a raw Ed25519 public key)")
        return raw
    path = existing_signing_key_path(storage, signing_key)
    if path is None:
        return None
    return load_signing_key(path, create=False).public_key_bytes


class OneKey:
    """The tree-head key opened once, on first use (a token session is opened once for heads and seals)."""

    def __init__(self, spec: KeySpec, *, create: bool = False, access: TokenAccess = TokenAccess()):
        self._spec, self._create, self._access = spec, create, access
        self._key = None

    @property
    def in_token(self) -> bool:
        return is_pkcs11_uri(str(self._spec))

    def __call__(self):
        if self._key is None:
            self._key = load_signing_key(self._spec, create=self._create, access=self._access)
        return self._key


def sealing_proofs(key: "KeySpec | OneKey", *, create: bool = False):
    """ReserveLedger's `proofs`: prove saved states and seal new ones with the tree-head key (docs/ARCHITECTURE.md)."""
    opened = key if isinstance(key, OneKey) else OneKey(key, create=create)

    def proofs(store) -> StateProofs:
        signer = opened()  # after the store exists: a new data dir holds the key
        return StateProofs(store, signer.public_key_bytes, signer)
    return proofs


def checking_proofs(public_key_raw: bytes | None):
    """ReserveLedger's `proofs` for a reader: prove with the public key, seal nothing; None without a key
    (then no saved state is used: every start replays the log)."""
    return None if public_key_raw is None else (lambda store: StateProofs(store, public_key_raw))


def reader_proofs(storage: StorageConfig, public_key_hex: str | None = None, signing_key: str | None = None):
    """checking_proofs with the public key at hand (--public-key, --signing-key, or the data dir's key)."""
    return checking_proofs(public_key_of(storage, public_key_hex, signing_key))


def tree_head_signer(ledger: ReserveLedger, key: "KeySpec | OneKey", *, create: bool = False,
                     keep_every_events: int = TREE_HEAD_KEEP_EVERY_EVENTS) -> TreeHeadSigner:
    opened = key if isinstance(key, OneKey) else OneKey(key, create=create)
    return TreeHeadSigner(ledger.store, opened(), clock_us, keep_every_events)


def log_checkpoints(key: "KeySpec | OneKey", origin: str | None, access: TokenAccess = TokenAccess()):
    """The log's C2SP checkpoints, signed with the tree-head key, a file or a token's (services/witness/log.py)."""
    from services.witness import note
    from services.witness.log import LogCheckpoints
    opened = key if isinstance(key, OneKey) else OneKey(key, access=access)
    try:
        return LogCheckpoints(origin, _CheckpointSigner(opened()))
    except note.NoteInvalid as invalid:
        raise ConfigurationInvalid(f"--log-origin {origin!r}: {invalid}") from None


class _CheckpointSigner:
    """The tree-head signer (services/keys/signers.py) as the witness formats' Signer (services/witness/note.py)."""

    def __init__(self, key):
        self._key = key
        self.public_key_raw = key.public_key_bytes

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)


def _warn_if_origin_changed(ledger: ReserveLedger, origin: str) -> None:
    """Witnesses know the log by its origin: a different --log-origin than the cosigned checkpoints' is worth
    a warning (they will answer 404 for the new one until reconfigured)."""
    import logging
    from services.witness.log import origin_of
    found = ledger.store.latest_witnessed(1)
    if found is not None and origin_of(found[1]) != origin:
        logging.getLogger("reserve_ledger.witnesses").warning(
            "--log-origin %r differs from the origin %r of the checkpoints witnesses cosigned so far; witnesses "
            "configured with the old origin will not cosign the new one", origin, origin_of(found[1]))


def witness_endpoints(config: "ServerConfig") -> list:
    """--witness NAME=VKEY@URL ... and --witness-quorum K, checked."""
    from services.witness.gatherer import check_witnesses, parse_witness
    from services.witness import note
    if config.log_origin is not None:
        try:
            note.check_key_name(config.log_origin)
        except note.NoteInvalid as invalid:
            raise ConfigurationInvalid(f"--log-origin: {invalid}") from None
    endpoints = [parse_witness(value, with_url=True) for value in config.witnesses]
    check_witnesses(endpoints, config.witness_quorum)
    return endpoints


# --- chain ------------------------------------------------------------------------------------------------


def open_chain(spec: str):
    """The Bitcoin backend named by --chain (services/bitcoin/backends.py); refuses what it cannot open."""
    return open_backend(spec)


def anchor_key_path(storage: StorageConfig, given: str | None, network: str) -> KeySpec:
    if given:
        return given if is_pkcs11_uri(given) else pathlib.Path(given)
    if storage.database_url or network != "regtest":
        raise ConfigurationInvalid("anchoring needs --anchor-key FILE (a WIF key of the fee-only anchor wallet) or "
                                   "pkcs11:URI (a secp256k1 key in a token)")
    return pathlib.Path(storage.data_dir or DEFAULT_DATA_DIR) / ANCHOR_KEY_FILE_NAME


def open_anchor_key(storage: StorageConfig, given: str | None, network: str, access: TokenAccess = TokenAccess()):
    """Load the anchor wallet's key (a WIF file or a token key); on regtest with a data dir, create the file on
    first use."""
    from services.bitcoin.anchor_tx import AnchorKey, AnchorKeyError
    path = anchor_key_path(storage, given, network)
    if is_pkcs11_uri(str(path)):
        try:
            return open_token_anchor_key(str(path), network, access.pin_file, access.module_path)
        except AnchorKeyError as error:
            raise ConfigurationInvalid(f"--anchor-key {path}: {error}") from None
    if not path.exists():
        if network == "regtest" and not given:
            AnchorKey.generate("regtest").save(path)
        else:
            raise NothingStoredHere(f"--anchor-key {path}: no such file")
    try:
        return AnchorKey.load(path, network)
    except ValueError as error:
        raise ConfigurationInvalid(f"{path}: {error}") from None


# --- the server -------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ServerConfig:
    listen: str = _setting("127.0.0.1:50051", "HOST:PORT to listen on")
    data_dir: str | None = _setting(DEFAULT_DATA_DIR, "SQLite data directory")
    database_url: str | None = None
    database_password_file: str | None = None
    certs_dir: str | None = _setting(None, "directory with ca.pem, server.pem and server.key (see `certs init`)")
    insecure_loopback: bool = _setting(False, "plaintext, loopback development only")
    create_store: bool = _setting(False, "create the ledger when the data dir or database schema holds none")
    purchase_approval_threshold_sats: int = _setting(
        Policy().purchase_approval_threshold_sats, "purchases above this many sats wait for a second identity")
    expiry_interval_s: float = 30.0
    signing_key_path: str | None = None
    pkcs11_pin_file: str | None = _setting(None, "file (mode 0600) holding the PIN of the PKCS#11 token of "
                                           "--signing-key / --anchor-key pkcs11: URIs without pin-source")
    pkcs11_module: str | None = _setting(None, "PKCS#11 library for pkcs11: URIs without module-path "
                                         "(default /usr/lib/softhsm/libsofthsm2.so)")
    tree_head_keep_every_events: int = _setting(
        TREE_HEAD_KEEP_EVERY_EVENTS, "each commit signs a tree head; a superseded one is kept only when it is the "
        "first to reach a multiple of this many events (or an anchor commits to it)")
    chain: str | None = None
    anchor_key_path: str | None = None
    anchor_network: str = _setting("regtest", "network of the anchor key")
    anchor_policy: AnchorPolicy = dataclasses.field(default_factory=AnchorPolicy)
    monitor_interval_s: float = _setting(10.0, "with --chain: how often the reserves monitor asks the node for its "
                                         "tip and reads each new block (alerts within one block)")
    metrics_listen: str | None = _setting(DEFAULT_METRICS_LISTEN, "HOST:PORT of the Prometheus metrics endpoint "
                                          "(GET /metrics; 'off' to disable)")
    call_threads: int = _setting(CALL_THREADS, "threads that run the RPC handlers' blocking work (the store's "
                                 "connection pool is sized to match); open streams hold none")
    streams_per_identity_max: int = _setting(STREAMS_PER_IDENTITY_MAX, "open server streams per identity; more "
                                             "are refused with RESOURCE_EXHAUSTED")
    streams_total_max: int = _setting(STREAMS_TOTAL_MAX, "open server streams in all")
    log_origin: str | None = _setting(None, "the log's name in its C2SP checkpoints (default reserve-ledger.local/ "
                                      "+ 16 hex digits of the tree-head key's SHA-256)")
    witnesses: tuple[str, ...] = ()           # NAME=VKEY@URL each (services/witness/gatherer.py)
    witness_quorum: int = 0

    @property
    def storage(self) -> StorageConfig:
        return storage_of(self.data_dir, self.database_url, self.database_password_file)

    @property
    def token_access(self) -> TokenAccess:
        return TokenAccess(self.pkcs11_pin_file, self.pkcs11_module)


def listen_address(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigurationInvalid(f"--listen {listen!r}: expected HOST:PORT with a port from 0 to 65535")
    return host.strip("[]"), int(port)


def is_loopback(listen: str) -> bool:
    host = listen_address(listen)[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_server_config(config: ServerConfig) -> None:
    """Everything that can be checked without opening anything; raises on the first problem."""
    listen_address(config.listen)
    if config.insecure_loopback and not is_loopback(config.listen):
        raise ConfigurationInvalid(f"--insecure-loopback on {config.listen}: plaintext is for loopback addresses "
                                   "only; use --certs DIR (mTLS) on other addresses")
    if not config.insecure_loopback:
        if not config.certs_dir:
            raise ConfigurationInvalid("serve needs --certs DIR (ca.pem, server.pem, server.key; create them with "
                                       "`reserve-ledger certs init DIR`) or --insecure-loopback for local development")
        missing = [name for name in CERT_FILES if not (pathlib.Path(config.certs_dir) / name).is_file()]
        if missing:
            raise NothingStoredHere(f"--certs {config.certs_dir}: {', '.join(missing)} missing; create them with "
                                    "`reserve-ledger certs init DIR`")
        check_tls_keys(pathlib.Path(config.certs_dir))
    if config.purchase_approval_threshold_sats < 0:
        raise ConfigurationInvalid("--purchase-approval-threshold-sats must be 0 or more")
    if not config.expiry_interval_s > 0:
        raise ConfigurationInvalid("--expiry-interval-s must be more than 0")
    if not config.monitor_interval_s > 0:
        raise ConfigurationInvalid("--monitor-interval-s must be more than 0")
    if not config.tree_head_keep_every_events >= 1:
        raise ConfigurationInvalid("--tree-head-keep-every-events must be at least 1")
    if not 1 <= config.call_threads <= CALL_THREADS_MAX:
        raise ConfigurationInvalid(f"--call-threads must be 1..{CALL_THREADS_MAX}")
    if not 1 <= config.streams_per_identity_max <= config.streams_total_max:
        raise ConfigurationInvalid("--streams-per-identity-max must be at least 1 and at most --streams-total-max")
    _check_anchor_policy(config.anchor_policy)
    if config.anchor_network not in NETWORKS:
        raise ConfigurationInvalid(f"--network {config.anchor_network!r}: expected one of {', '.join(NETWORKS)}")
    config.storage.env()  # a malformed --database URL is refused here
    for spec in (signing_key_path(config.storage, config.signing_key_path), config.anchor_key_path):
        if is_pkcs11_uri(str(spec)):
            parse_pkcs11_uri(str(spec))  # a malformed URI is refused before anything is opened
    if config.chain:
        check_spec(config.chain)
        anchor_key_path(config.storage, config.anchor_key_path, config.anchor_network)
    _check_port_free(config.listen)
    if config.metrics_listen:
        _check_metrics_listen(config)
    witness_endpoints(config)


def check_tls_keys(certs_dir: pathlib.Path) -> None:
    """server.key must be private; so must a ca.key left beside it (the server never reads it: keep it
    elsewhere, docs/OPERATIONS.md)."""
    check_private(certs_dir / "server.key", "--certs: the TLS key")
    if (certs_dir / CA_KEY_FILE_NAME).exists():
        check_private(certs_dir / CA_KEY_FILE_NAME, "--certs: the CA key")


def _check_metrics_listen(config: ServerConfig) -> None:
    host, port = listen_address(config.metrics_listen)
    if not is_loopback(config.metrics_listen) and config.insecure_loopback:
        raise ConfigurationInvalid("--metrics-listen must be a loopback address with --insecure-loopback")
    if (host, port) == listen_address(config.listen) and port != 0:
        raise ConfigurationInvalid(f"--metrics-listen {config.metrics_listen} is the gRPC --listen address")
    _check_port_free(config.metrics_listen)


def _check_port_free(listen: str) -> None:
    """A port another process holds is named now, before any storage is created (the server binds later)."""
    host, port = listen_address(listen)
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise ConfigurationInvalid(f"--listen {listen}: cannot resolve {host!r} ({error.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        try:
            probe.bind(address)
        except OSError as error:
            raise ConfigurationInvalid(f"cannot listen on {listen}: {error.strerror.lower()}; choose another "
                                       "--listen") from None


def _check_anchor_policy(policy: AnchorPolicy) -> None:
    if not (policy.interval_s > 0 and policy.block_poll_interval_s > 0):
        raise ConfigurationInvalid("--anchor-interval-s and --block-poll-interval-s must be more than 0")
    if not (policy.fee_rate_max_sat_per_vb >= 1 and policy.fee_max_sats > 0):
        raise ConfigurationInvalid("--fee-rate-max must be at least 1 sat/vB and --fee-max-sats more than 0")


def build_server(config: ServerConfig):
    """Check the configuration, then open storage, keys and chain and wire the server (not started)."""
    from services.api.server import LedgerServer, ServerParts
    check_server_config(config)
    storage = config.storage
    if not config.create_store:
        check_store_exists(storage)
    key = OneKey(signing_key_path(storage, config.signing_key_path),
                 create=config.create_store or storage.database_url is None, access=config.token_access)
    if key.in_token:
        key()  # a wrong PIN, token or label is one line before any storage is created
    token_anchor_key = (open_anchor_key(storage, config.anchor_key_path, config.anchor_network, config.token_access)
                        if config.chain and is_pkcs11_uri(config.anchor_key_path) else None)
    chain = open_chain(config.chain) if config.chain else None
    ledger = None
    try:
        ledger = open_ledger(storage, create=config.create_store, policy=Policy(config.purchase_approval_threshold_sats),
                             backoff=jittered_backoff, proofs=sealing_proofs(key), repair=True,
                             connections_max=config.call_threads + BACKGROUND_CONNECTIONS)
        signer = tree_head_signer(ledger, key, keep_every_events=config.tree_head_keep_every_events)
        anchor_key = token_anchor_key or (
            open_anchor_key(storage, config.anchor_key_path, config.anchor_network) if chain else None)
        checkpoints = log_checkpoints(key, config.log_origin)
        _warn_if_origin_changed(ledger, checkpoints.origin)
        return LedgerServer(config, ServerParts(ledger, signer, chain, anchor_key, clock_us, checkpoints,
                                                tuple(witness_endpoints(config))))
    except BaseException:
        if ledger is not None:
            ledger.close()
        if chain is not None:
            from services.bitcoin.backends import close_backend
            close_backend(chain)
        raise

