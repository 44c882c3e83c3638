"""A witness as a separate process, and a toy log that signs checkpoints, for the witness tests."""

import hashlib
import pathlib
import subprocess
import sys
import time
import urllib.error
import urllib.request

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger import merkle
from services.witness import note
from services.witness.witness import format_add_checkpoint

START_TIMEOUT_S = 60


class WitnessProcess:
    """`reserve-ledger witness serve` in a child process; its URL is read from its first lines."""

    def __init__(self, state: pathlib.Path, logs: dict[str, str], port: int = 0):
        args = [sys.executable, "-m", "services.cli.main", "witness", "serve", "--state", str(state),
                "--listen", f"127.0.0.1:{port}"]
        for origin, vkey in logs.items():
            args += ["--log", f"{origin}={vkey}"]
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        first = self.process.stdout.readline()
        second = self.process.stdout.readline()
        if not second.startswith("listening on ") or time.monotonic() > deadline:
            self.process.kill()
            raise RuntimeError(f"witness did not start: {first}{second}{self.process.stderr.read()[-2000:]}")
        self.vkey = note.parse_vkey(first.split()[1])
        self.url = second.split()[-1]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)

    def __enter__(self) -> "WitnessProcess":
        return self

    def __exit__(self, *exc) -> None:
        if self.process.poll() is None:
            self.stop()


def init_witness(state: pathlib.Path, name: str) -> str:
    done = subprocess.run([sys.executable, "-m", "services.cli.main", "witness", "init", "--state", str(state),
                           "--name", name], capture_output=True, text=True, timeout=120, check=True)
    return done.stdout.strip()


def post(url: str, body: bytes) -> tuple[int, str, str]:
    """(status, content type, body) of POST url/add-checkpoint."""
    request = urllib.request.Request(url + "/add-checkpoint", data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, reply.headers.get("Content-Type", ""), reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read().decode()


class ToyLog:
    """A log of leaves that signs C2SP checkpoints with its own key (as the ledger does)."""

    def __init__(self, origin: str = "reserve.test/ledger", key: Ed25519PrivateKey | None = None):
        self.origin = origin
        self.signer = note.KeySigner(key or Ed25519PrivateKey.generate())
        self.store = merkle.MemoryNodeStore()
        self.vkey = note.verifier_key(origin, note.ALG_ED25519, self.signer.public_key_raw)

    def append(self, count: int, tag: str = "") -> None:
        for _ in range(count):
            self.store.append(merkle.leaf_hash(hashlib.sha256(f"{tag}{self.store.size}".encode()).digest()))

    def signed_note(self, size: int | None = None) -> bytes:
        size = self.store.size if size is None else size
        made = note.checkpoint(self.origin, size, merkle.root_hash(self.store, size))
        return note.sign_checkpoint(made, self.signer).encode()

    def request(self, old_size: int, size: int | None = None) -> bytes:
        size = self.store.size if size is None else size
        proof = merkle.consistency_proof(self.store, old_size, size) if old_size else []
        return format_add_checkpoint(old_size, proof, self.signed_note(size))
