"""A C2SP tlog-witness (c2sp.org/tlog-witness): cosigns a log's checkpoint only when it extends, append-only,
the last one this witness cosigned for that log.

It depends on nothing of the ledger's storage: its own SQLite file keeps, per log origin, the last cosigned
(size, root) and note, and every refused checkpoint whose log signature was valid (evidence of a rollback or
a fork, signed by the log's own key). The check and the update happen in one SQLite write transaction, so
two concurrent requests can never roll the state back (the race the spec describes). HTTP is in
services/witness/http.py; this module is the protocol's decisions.
"""

import base64
import binascii
import dataclasses
import os
import pathlib
import sqlite3
import threading
from typing import Callable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger import limits, merkle
from services.witness import note

STATE_FILE_NAME = "witness.sqlite"
KEY_FILE_NAME = "witness.key"
NAME_FILE_NAME = "witness.name"
EVIDENCE_ROWS_MAX = 10_000
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS cosigned (origin TEXT PRIMARY KEY, tree_size INTEGER NOT NULL, "
    "root_hash BLOB NOT NULL, note BLOB NOT NULL, cosigned_s INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS refused (id INTEGER PRIMARY KEY AUTOINCREMENT, origin TEXT NOT NULL, "
    "received_s INTEGER NOT NULL, status INTEGER NOT NULL, reason TEXT NOT NULL, tree_size_held INTEGER NOT NULL, "
    "request BLOB NOT NULL)",
)


@dataclasses.dataclass(frozen=True)
class Reply:
    status: int
    body: str
    content_type: str = "text/plain; charset=utf-8"


class RequestRefused(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status


@dataclasses.dataclass(frozen=True)
class AddCheckpoint:
    old_size: int
    proof: tuple[bytes, ...]
    note_bytes: bytes


def parse_add_checkpoint(body: bytes) -> AddCheckpoint:
    """``old N\\n``, up to 63 base64 proof lines, a blank line, the signed checkpoint (400 otherwise)."""
    head, sep, note_bytes = body.partition(b"\n\n")
    if not sep:
        raise RequestRefused(400, "the request is 'old N', proof lines, a blank line, then the checkpoint")
    lines = head.split(b"\n")
    old = lines[0].decode("ascii", "replace")
    digits = old[4:]
    if not old.startswith("old ") or not digits.isdigit() or not digits.isascii() or (
            digits != "0" and digits.startswith("0")):
        raise RequestRefused(400, "the first line must be 'old N' (decimal, no leading zeros)")
    if len(lines) - 1 > limits.WITNESS_PROOF_HASHES_MAX:
        raise RequestRefused(400, f"more than {limits.WITNESS_PROOF_HASHES_MAX} consistency proof lines")
    try:
        proof = tuple(base64.b64decode(line, validate=True) for line in lines[1:])
    except (binascii.Error, ValueError):
        raise RequestRefused(400, "a consistency proof line is not base64") from None
    if any(len(h) != merkle.HASH_SIZE_BYTES for h in proof):
        raise RequestRefused(400, "a consistency proof hash is not 32 bytes")
    return AddCheckpoint(int(digits), proof, note_bytes)


def format_add_checkpoint(old_size: int, proof: list[bytes], note_bytes: bytes) -> bytes:
    lines = [f"old {old_size}"] + [base64.b64encode(h).decode() for h in proof]
    return ("\n".join(lines) + "\n\n").encode() + note_bytes


# --- the witness's key ------------------------------------------------------------------------------------

def init_state(directory: str | pathlib.Path, name: str) -> note.VerifierKey:
    """Create the state directory (0700), the witness key (0600 from the first byte) and its name file."""
    directory = pathlib.Path(directory)
    note.check_key_name(name)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)  # an existing empty directory keeps its mode otherwise
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    descriptor = os.open(directory / KEY_FILE_NAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(pem)
        file.flush()
        os.fsync(file.fileno())
    (directory / NAME_FILE_NAME).write_text(name + "\n")
    return cosigner_key(name, note.KeySigner(key))


def load_identity(directory: str | pathlib.Path) -> tuple[str, note.KeySigner]:
    directory = pathlib.Path(directory)
    name = note.check_key_name((directory / NAME_FILE_NAME).read_text().strip())
    key = serialization.load_pem_private_key((directory / KEY_FILE_NAME).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{directory / KEY_FILE_NAME} does not hold an Ed25519 private key")
    return name, note.KeySigner(key)


def cosigner_key(name: str, signer: note.Signer) -> note.VerifierKey:
    return note.verifier_key(name, note.ALG_COSIGNATURE_V1, signer.public_key_raw)


# --- the protocol -----------------------------------------------------------------------------------------

class Witness:
    """Decides add-checkpoint requests for the logs it was configured with (origin -> log's vkey)."""

    def __init__(self, directory: str | pathlib.Path, logs: dict[str, note.VerifierKey], clock_s: Callable[[], int]):
        self.name, self._signer = load_identity(directory)
        self.vkey = cosigner_key(self.name, self._signer)
        self._logs = dict(logs)
        self._clock_s = clock_s
        self._db = sqlite3.connect(pathlib.Path(directory) / STATE_FILE_NAME, isolation_level=None,
                                   check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        for statement in SCHEMA:
            self._db.execute(statement)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    def add_checkpoint(self, body: bytes) -> Reply:
        try:
            request = parse_add_checkpoint(body)
            origin, made, signed = self._authentic(request)
        except RequestRefused as refused:
            return Reply(refused.status, str(refused) + "\n")
        with self._lock:
            return self._decide(origin, made, signed, request, body)

    def _authentic(self, request: AddCheckpoint) -> tuple[str, note.Checkpoint, note.Note]:
        """The checkpoint, parsed, from a known log (404), carrying that log's valid signature (403)."""
        try:
            signed = note.parse_note(request.note_bytes)
            made = note.parse_checkpoint(signed.text)
        except note.NoteInvalid as invalid:
            raise RequestRefused(400, f"malformed checkpoint: {invalid}") from None
        key = self._logs.get(made.origin)
        if key is None:
            raise RequestRefused(404, f"unknown log {made.origin[:100]!r}")
        candidates = note.matching(signed, key)
        if not candidates or not all(note.verify_signature(signed.text, s, key) for s in candidates):
            raise RequestRefused(403, f"the checkpoint carries no valid signature by {key.name}+{key.key_id.hex()}")
        if request.old_size > made.tree_size:
            raise RequestRefused(400, f"old size {request.old_size} is beyond the checkpoint's {made.tree_size}")
        return made.origin, made, signed

    def _decide(self, origin: str, made: note.Checkpoint, signed: note.Note, request: AddCheckpoint,
                body: bytes) -> Reply:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            held_size, held_root = self._held(origin)
            refusal = self._refusal(held_size, held_root, made, request)
            if refusal is not None:
                self._keep_evidence(origin, refusal, held_size, body)
                self._db.execute("COMMIT")
                return refusal
            cosignature = note.cosign(signed.text, self.name, self._signer, self._clock_s())
            witnessed = note.Note(signed.text, signed.signatures + (cosignature,)).encode()
            self._db.execute("INSERT INTO cosigned (origin, tree_size, root_hash, note, cosigned_s) "
                             "VALUES (?, ?, ?, ?, ?) ON CONFLICT (origin) DO UPDATE SET tree_size = excluded.tree_size,"
                             " root_hash = excluded.root_hash, note = excluded.note, cosigned_s = excluded.cosigned_s",
                             (origin, made.tree_size, made.root_hash, witnessed, self._clock_s()))
            self._db.execute("COMMIT")  # persisted (synchronous=FULL) before the answer leaves
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return Reply(200, cosignature.line())

    def _held(self, origin: str) -> tuple[int, bytes]:
        row = self._db.execute("SELECT tree_size, root_hash FROM cosigned WHERE origin = ?", (origin,)).fetchone()
        return (0, merkle.EMPTY_ROOT) if row is None else (row[0], bytes(row[1]))

    @staticmethod
    def _refusal(held_size: int, held_root: bytes, made: note.Checkpoint, request: AddCheckpoint) -> Reply | None:
        if request.old_size != held_size:
            return Reply(409, f"{held_size}\n", "text/x.tlog.size")
        if made.tree_size == 0 and made.root_hash != merkle.EMPTY_ROOT:
            return Reply(422, "a checkpoint of size 0 must carry the empty tree's root\n")
        if request.old_size == 0 and request.proof:
            return Reply(422, "from size 0 the consistency proof must be empty\n")
        if made.tree_size == held_size and made.root_hash != held_root:
            return Reply(422, f"fork: another root was cosigned at size {held_size}\n")
        if not merkle.verify_consistency(held_size, made.tree_size, held_root, made.root_hash, request.proof):
            return Reply(422, f"the consistency proof from size {held_size} does not verify\n")
        return None

    def _keep_evidence(self, origin: str, refusal: Reply, held_size: int, body: bytes) -> None:
        """A refused checkpoint the log signed is evidence of a rollback or a fork: keep it (bounded)."""
        (count,) = self._db.execute("SELECT COUNT(*) FROM refused").fetchone()
        if count < EVIDENCE_ROWS_MAX:
            self._db.execute("INSERT INTO refused (origin, received_s, status, reason, tree_size_held, request) "
                             "VALUES (?, ?, ?, ?, ?, ?)",
                             (origin, self._clock_s(), refusal.status, refusal.body.strip(), held_size, body))

    # --- reads (the monitoring endpoint, `witness show`) ------------------------------------------------

    def latest(self, origin: str) -> bytes | None:
        """The last cosigned checkpoint of ``origin``: the log's note with this witness's cosignature."""
        row = self._db.execute("SELECT note FROM cosigned WHERE origin = ?", (origin,)).fetchone()
        return None if row is None else bytes(row[0])

    def cosigned_all(self) -> list[dict]:
        rows = self._db.execute("SELECT origin, tree_size, root_hash, cosigned_s FROM cosigned ORDER BY origin")
        return [{"origin": o, "tree_size": n, "root_hash": bytes(r).hex(), "cosigned_s": t} for o, n, r, t in rows]

    def refused(self, origin: str | None = None) -> list[dict]:
        rows = self._db.execute("SELECT id, origin, received_s, status, reason, tree_size_held, request FROM refused "
                                "WHERE ? IS NULL OR origin = ? ORDER BY id", (origin, origin)).fetchall()
        keys = ("id", "origin", "received_s", "status", "reason", "tree_size_held", "request")
        return [dict(zip(keys, row)) for row in rows]
