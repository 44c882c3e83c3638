"""The tree-head signing key (an Ed25519 PEM file) and the service's signed tree heads.

With SQLite the key lives in the data directory (created on first start, mode 0600). With PostgreSQL
every replica must sign with the same key, so `--signing-key FILE` is required and the file is
provisioned like the TLS keys. Losing the key loses no history: heads already signed stay verifiable
with the published public key; a new key signs new heads (its key id differs).
"""

import os
import pathlib
import threading
from typing import Callable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger import merkle
from ledger.tree_heads import TreeHead, key_id, raw_public_key, sign_tree_head

SIGNING_KEY_FILE_NAME = "tree-head-signing.key"


def load_or_create_signing_key(path: str | pathlib.Path) -> Ed25519PrivateKey:
    """Load the PEM key at `path`, creating it (exclusively, mode 0600) when it does not exist yet."""
    path = pathlib.Path(path)
    if not path.exists():
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process created it first: use theirs
        else:
            with os.fdopen(descriptor, "wb") as file:
                file.write(pem)
                file.flush()
                os.fsync(file.fileno())
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} does not hold an Ed25519 private key")
    return key


class TreeHeadSigner:
    """Signs a head for the current log size when the log has grown; stores it beside the events."""

    def __init__(self, store, private_key: Ed25519PrivateKey, clock_us: Callable[[], int]):
        self._store = store
        self._key = private_key
        self._clock_us = clock_us
        self._lock = threading.Lock()
        self.public_key_raw = raw_public_key(private_key.public_key())
        self.key_id = key_id(private_key.public_key())

    def latest(self) -> TreeHead:
        """The head of the current log, signing it first if no head covers every event yet."""
        with self._lock:
            size = self._store.log_size()
            head = self._store.load_tree_head()
            if head is None or head.tree_size < size:
                root = merkle.root_hash(self._store, size)
                self._store.save_tree_head(sign_tree_head(self._key, size, root, self._clock_us()))
                head = self._store.load_tree_head(size)  # a replica may have stored its own head first
            return head
