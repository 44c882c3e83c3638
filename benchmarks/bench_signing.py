"""Cost of signing through a PKCS#11 token (SoftHSM2) against a key held in memory from a file, same run.

    python benchmarks/bench_signing.py [--signatures 2000] [--module /usr/lib/softhsm/libsofthsm2.so]

Creates a throw-away SoftHSM2 token (its own SOFTHSM2_CONF in a temporary directory), generates a tree-head
key (Ed25519) and an anchor key (secp256k1) inside it, and times, alternating in rounds so that the machine's
load weighs on both alike:
  tree head    sign_tree_head (the 70-byte statement of services/store/signing.py), file key vs token
  anchor       one BIP-143 digest signed to low-S DER: the WIF key (bitcoin-utils, pure-Python ecdsa) vs token
Each signature is verified once per kind before timing. Prints p50/p99 per signature and the ratio.
"""

import argparse
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

ROUNDS = 10
TOKEN_LABEL = "bench"
PIN = "1234"


def make_token(directory: pathlib.Path) -> pathlib.Path:
    """A fresh SoftHSM2 token in `directory`; returns the PIN file."""
    (directory / "tokens").mkdir()
    conf = directory / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {directory / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    if shutil.which("softhsm2-util") is None:
        raise SystemExit("softhsm2-util is missing: apt-get install -y softhsm2")
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", TOKEN_LABEL, "--pin", PIN, "--so-pin",
                    "5678"], check=True, capture_output=True)
    pin_file = directory / "pin"
    descriptor = os.open(pin_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(descriptor, PIN.encode())
    os.close(descriptor)
    return pin_file


def timed_us(operation, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter_ns()
        operation()
        samples.append((time.perf_counter_ns() - started) / 1000)
    return samples


def compare(name: str, file_op, token_op, signatures: int) -> None:
    """Alternate the two in ROUNDS rounds; print p50/p99 of each and the ratio of the medians."""
    file_samples, token_samples = [], []
    per_round = max(1, signatures // ROUNDS)
    for _ in range(ROUNDS):
        file_samples += timed_us(file_op, per_round)
        token_samples += timed_us(token_op, per_round)
    for label, samples in (("key file", file_samples), ("SoftHSM2", token_samples)):
        ordered = sorted(samples)
        print(f"{name}, {label}: p50 {statistics.median(ordered):,.1f} us, p99 {ordered[int(len(ordered) * 0.99) - 1]:,.1f}"
              f" us per signature ({len(ordered):,} signatures, {1e6 / statistics.fmean(ordered):,.0f}/s)")
    print(f"{name}: SoftHSM2 / key file (p50): {statistics.median(token_samples) / statistics.median(file_samples):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--signatures", type=int, default=2000, help="per kind and per key (default 2000)")
    parser.add_argument("--module", default=None, help="PKCS#11 library (default SoftHSM2's)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-signing-") as directory:
        pin_file = make_token(pathlib.Path(directory))
        run(pathlib.Path(directory), str(pin_file), args)


def run(directory: pathlib.Path, pin_file: str, args) -> None:
    from ecdsa import SECP256k1, VerifyingKey
    from ecdsa.util import sigdecode_der, sigencode_string

    from ledger.tree_heads import sign_tree_head, verify_tree_head
    from services.bitcoin.anchor_tx import AnchorKey
    from services.keys.pkcs11_keys import TokenEd25519Signer, TokenSecp256k1Signer, generate_key, low_s_der
    from services.keys.signers import FileEd25519Signer
    from services.keys.uri import Pkcs11Uri
    from services.store.signing import load_or_create_signing_key

    uri = Pkcs11Uri(TOKEN_LABEL, "tree-head", pin_file=pin_file, module_path=args.module)
    anchor_uri = Pkcs11Uri(TOKEN_LABEL, "anchor", pin_file=pin_file, module_path=args.module)
    generate_key(uri, "tree-head")
    generate_key(anchor_uri, "anchor")
    file_signer = FileEd25519Signer(load_or_create_signing_key(directory / "tree-head.key"))
    token_signer = TokenEd25519Signer(uri)
    root, size, time_us = bytes(range(32)), 1_000_000, 1_800_000_000_000_000
    for signer in (file_signer, token_signer):
        assert verify_tree_head(signer.public_key_bytes, sign_tree_head(signer, size, root, time_us))
    compare("tree head", lambda: sign_tree_head(file_signer, size, root, time_us),
            lambda: sign_tree_head(token_signer, size, root, time_us), args.signatures)

    wif_key = AnchorKey.generate("regtest")
    token_anchor = TokenSecp256k1Signer(anchor_uri)
    digest = bytes(range(32, 64))
    check = VerifyingKey.from_string(token_anchor.public_key, curve=SECP256k1)
    assert check.verify_digest(token_anchor.sign_digest(digest), digest, sigdecode=sigdecode_der)
    private = wif_key.signing_key.key  # bitcoin-utils wraps an ecdsa.SigningKey (what build_anchor_tx signs with)

    def wif_sign() -> bytes:
        return low_s_der(private.sign_digest_deterministic(digest, sigencode=sigencode_string))
    compare("anchor digest", wif_sign, lambda: token_anchor.sign_digest(digest), args.signatures // 4)
    token_signer.close()
    token_anchor.close()


if __name__ == "__main__":
    main()
