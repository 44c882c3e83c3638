"""C2SP signed notes, checkpoints and cosignatures (services/witness/note.py).

The Ed25519 note signature is checked against the Go reference implementation's published vectors
(golang.org/x/mod/sumdb/note, note_test.go: TestNewVerifier, TestSign, TestOpen; the PeterNeumann and
EnochRoot keys). Reproduce them with `go test golang.org/x/mod/sumdb/note`. The cosignature/v1 layout is
checked against a naive re-derivation from the tlog-cosignature text, and every corrupted form is refused.
"""

import base64
import hashlib
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger import merkle
from services.witness import note

PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
PETER_SKEY_SEED_B64 = "AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"   # from PRIVATE+KEY+PeterNeumann+c74f20a3+…
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
PETER_SIG = ("\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6Ryy"
             "BwJnAM=\n")
ENOCH_SIG = ("\u2014 EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1Rv"
             "Mc+QQ=\n")
ROOT = hashlib.sha256(b"root").digest()


def peter_signer() -> note.KeySigner:
    seed = base64.b64decode(PETER_SKEY_SEED_B64)[1:]  # the first byte is the algorithm (0x01)
    return note.KeySigner(Ed25519PrivateKey.from_private_bytes(seed))


def test_the_go_reference_vkeys_parse_and_print_back_identically():
    """Our vkey parser reads the reference keys, and the key ID it computes is the published one."""
    for text in (PETER_VKEY, ENOCH_VKEY):
        key = note.parse_vkey(text)
        assert key.alg == note.ALG_ED25519 and key.text() == text
    assert note.parse_vkey(PETER_VKEY).key_id.hex() == "c74f20a3"


def test_signing_the_reference_text_with_the_reference_key_gives_the_published_note():
    """Ed25519 is deterministic: our signature line must equal the Go implementation's byte for byte."""
    signer = peter_signer()
    assert note.VerifierKey("PeterNeumann", 1, signer.public_key_raw).text() == PETER_VKEY
    signed = note.Note(TEXT, (note.sign_text(TEXT, "PeterNeumann", signer),))
    assert signed.encode() == (TEXT + "\n" + PETER_SIG).encode()


def test_the_published_note_opens_with_each_signers_key_and_ignores_the_other_signature():
    """open_note verifies the named key's signature and leaves unknown signers alone (as Go's Open does)."""
    data = (TEXT + "\n" + PETER_SIG + ENOCH_SIG).encode()
    for vkey in (PETER_VKEY, ENOCH_VKEY):
        opened = note.open_note(data, note.parse_vkey(vkey))
        assert opened.text == TEXT and len(opened.signatures) == 2


def test_mangled_reference_vkeys_are_refused():
    """Every truncation and every single-character change of the vkey is refused (TestNewVerifier's probes)."""
    raw = PETER_VKEY.encode()
    probes = {PETER_VKEY[:i] + PETER_VKEY[j:] for i in range(len(raw)) for j in range(i + 1, len(raw) + 1)
              if (i, j) != (0, len(raw))}
    probes |= {PETER_VKEY[:i] + chr(ord(PETER_VKEY[i]) + 1) + PETER_VKEY[i + 1:] for i in range(len(raw))}
    probes |= {"PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
               "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"}
    for probe in probes:
        with pytest.raises(note.NoteInvalid):
            note.parse_vkey(probe)


@pytest.mark.parametrize("data", [
    TEXT,                                                   # no signatures
    TEXT + "\n",                                            # a blank line and nothing after it
    TEXT + "\n" + PETER_SIG[:-1],                           # last line not terminated
    "\x01" + TEXT + "\n" + PETER_SIG,                       # a control character
    TEXT + "\n\u2014 Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6Ryy"
           "BwJnAM=\n",                                      # a space in the key name
    TEXT + "\n" + PETER_SIG + "Unexpected line.\n",         # a line that is no signature
    TEXT + "\n" + PETER_SIG * 101,                          # more than 100 signatures
], ids=["unsigned", "blank", "unterminated", "control", "bad-name", "stray-line", "too-many"])
def test_malformed_notes_from_the_reference_tests_are_refused(data):
    """TestOpen's malformed notes are malformed here too."""
    with pytest.raises(note.NoteInvalid):
        note.open_note(data.encode(), note.parse_vkey(PETER_VKEY))


def test_a_note_whose_named_signature_does_not_verify_is_refused_whole():
    """A signature line that names the key but fails (a changed text, a flipped bit) invalidates the note."""
    key = note.parse_vkey(PETER_VKEY)
    with pytest.raises(note.NoteInvalid):
        note.open_note((TEXT.replace("answer", "Answer") + "\n" + PETER_SIG).encode(), key)
    with pytest.raises(note.NoteInvalid):
        note.open_note((TEXT + "\n" + PETER_SIG[:60] + "ABCD" + PETER_SIG[60:]).encode(), key)
    with pytest.raises(note.NoteInvalid):
        note.open_note((TEXT + "\n" + ENOCH_SIG).encode(), key)   # no signature by this key at all


def test_a_checkpoint_body_has_the_documented_three_lines_and_reads_back():
    """origin, decimal size, base64 root, then extension lines; parse(text()) is the identity."""
    made = note.checkpoint("reserve.example/ledger", 20852163, ROOT, ("ext one",))
    assert made.text() == f"reserve.example/ledger\n20852163\n{base64.b64encode(ROOT).decode()}\next one\n"
    assert note.parse_checkpoint(made.text()) == made


@pytest.mark.parametrize("text", [
    "origin\n12\n", "origin\n012\n" + base64.b64encode(ROOT).decode() + "\n",
    "origin\n-1\n" + base64.b64encode(ROOT).decode() + "\n",
    "origin\n1\n" + base64.b64encode(ROOT[:31]).decode() + "\n",
    "\n1\n" + base64.b64encode(ROOT).decode() + "\n", "origin\n1\n" + base64.b64encode(ROOT).decode() + "\n\n",
    "origin\n１\n" + base64.b64encode(ROOT).decode() + "\n",
])
def test_malformed_checkpoints_are_refused(text):
    """A missing root, leading zeros, a negative or non-ASCII size, a short root, an empty line: all refused."""
    with pytest.raises(note.NoteInvalid):
        note.parse_checkpoint(text)


def cosignature_by_the_spec(text: str, name: str, key: Ed25519PrivateKey, timestamp_s: int) -> str:
    """tlog-cosignature's Ed25519 type, written out from the spec's text as a naive reference."""
    public = note.KeySigner(key).public_key_raw
    key_id = hashlib.sha256(name.encode() + b"\n\x04" + public).digest()[:4]
    message = b"cosignature/v1\n" + f"time {timestamp_s}\n".encode() + text.encode()
    raw = key_id + struct.pack(">Q", timestamp_s) + key.sign(message)
    return f"\u2014 {name} {base64.b64encode(raw).decode()}\n"


def test_a_cosignature_matches_the_specs_layout_and_verifies_only_for_its_checkpoint():
    """Key ID with 0x04, 8-byte big-endian time, signature over header + time + body; any change fails."""
    witness_key = Ed25519PrivateKey.generate()
    signer = note.KeySigner(witness_key)
    body = note.checkpoint("reserve.example/ledger", 7, ROOT).text()
    made = note.cosign(body, "witness.example/w1", signer, 1_790_000_000)
    assert made.line() == cosignature_by_the_spec(body, "witness.example/w1", witness_key, 1_790_000_000)
    vkey = note.verifier_key("witness.example/w1", note.ALG_COSIGNATURE_V1, signer.public_key_raw)
    assert note.cosignature_time_s(body, made, vkey) == 1_790_000_000
    other_body = note.checkpoint("reserve.example/ledger", 8, ROOT).text()
    assert note.cosignature_time_s(other_body, made, vkey) is None
    log_key = note.verifier_key("witness.example/w1", note.ALG_ED25519, signer.public_key_raw)
    assert note.cosignature_time_s(body, made, log_key) is None            # a 0x01 key is not a cosigner key
    later = note.Signature(made.name, made.key_id, struct.pack(">Q", 1_790_000_001) + made.signature[8:])
    assert note.cosignature_time_s(body, later, vkey) is None               # the time is signed
    for bit in range(0, len(made.signature) * 8, 41):
        damaged = bytearray(made.signature)
        damaged[bit // 8] ^= 1 << (bit % 8)
        assert note.cosignature_time_s(body, note.Signature(made.name, made.key_id, bytes(damaged)), vkey) is None


def test_a_log_signature_is_not_a_cosignature_and_a_cosignature_is_not_a_log_signature():
    """The two key IDs differ (0x01 vs 0x04) for the same key and name, so neither passes for the other."""
    signer = note.KeySigner(Ed25519PrivateKey.generate())
    body = note.checkpoint("reserve.example/ledger", 0, merkle.EMPTY_ROOT).text()
    log_sig = note.sign_text(body, "reserve.example/ledger", signer)
    co_sig = note.cosign(body, "reserve.example/ledger", signer, 1)
    log_key = note.verifier_key("reserve.example/ledger", note.ALG_ED25519, signer.public_key_raw)
    co_key = note.verifier_key("reserve.example/ledger", note.ALG_COSIGNATURE_V1, signer.public_key_raw)
    assert log_key.key_id != co_key.key_id
    assert note.verify_signature(body, log_sig, log_key) and not note.verify_signature(body, co_sig, log_key)
    assert note.cosignature_time_s(body, co_sig, co_key) == 1 and note.cosignature_time_s(body, log_sig, co_key) is None
