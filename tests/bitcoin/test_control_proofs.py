"""BIP-322 proofs of key control, run by Bitcoin Core's interpreter (libbitcoinkernel): the BIP's message hashes
and published signatures, 2-of-3 P2WSH (and P2SH-P2WSH) signatures made here, and the three ways a proof must
fail: another nonce, another key, another address.

Vectors: BIP-322 "Test vectors" (github.com/bitcoin/bips/blob/master/bip-0322.mediawiki): message hashes of ""
and "Hello World"; the P2WPKH and P2TR signatures of key L3VFeEujGtevx9w18HD1fhRbCH67Az2dpCymeRE1SoPK6XQtaN2k.
"""

import base64

import pytest

from ledger import bip322
from ledger.descriptors import descriptor_checksum
from services.bitcoin.addresses import script_pubkey_of_address
from services.reserves.control import prove_control, verify_signature
from services.reserves.descriptors import account_scripts
from services.reserves.dev_signer import DevKeys, dev_multisig, sign_script

P2WPKH = script_pubkey_of_address("bc1q9vza2e8x573nczrlzms0wvx3gsqjx7vavgkx0l")
P2TR = script_pubkey_of_address("bc1ppv609nr0vr25u07u95waq5lucwfm6tde4nydujnu8npg4q75mr5sxq8lt3")
P2WPKH_EMPTY = ("AkcwRAIgM2gBAQqvZX15ZiysmKmQpDrG83avLIT492QBzLnQIxYCIBaTpOaD20qRlEylyxFSeEA2ba9YOixpX8z46TSDtS40ASEC"
                "x/EgAxlkQpQ9hYjgGu6EBCPMVPwVIVJqO4XCsMvViHI=")
P2WPKH_HELLO = ("AkcwRAIgZRfIY3p7/DoVTty6YZbWS71bc5Vct9p9Fia83eRmw2QCICK/ENGfwLtptFluMGs2KsqoNSk89pO7F29zJLUx9a/sASEC"
                "x/EgAxlkQpQ9hYjgGu6EBCPMVPwVIVJqO4XCsMvViHI=")
P2TR_HELLO = "AUHd69PrJQEv+oKTfZ8l+WROBHuy9HKrbFCJu7U1iK2iiEy1vMU5EfMtjc+VSHM7aU0SDbak5IUZRVno2P5mjSafAQ=="


def test_the_bip322_message_hashes_are_reproduced():
    """The tagged hash of "" and of "Hello World" (BIP-322)."""
    assert bip322.message_hash(b"").hex() == "c90c269c4f8fcbe6880f72a721ddfbf1914268a794cbb21cfafee13770ae19f1"
    assert bip322.message_hash(b"Hello World").hex() == (
        "f0eb03b1a75ac6d9847f55c624a99169b5dccba2a31f5b23bea77ba270de0a7a")


@pytest.mark.parametrize("script, message, signature", [
    (P2WPKH, b"", P2WPKH_EMPTY), (P2WPKH, b"Hello World", P2WPKH_HELLO), (P2TR, b"Hello World", P2TR_HELLO)])
def test_the_published_signatures_verify_and_fail_for_another_message_or_address(script, message, signature):
    """Each published signature is accepted by the interpreter; the same one over another message, or presented
    for the other address, is refused."""
    assert verify_signature(script, message, signature) == (True, "")
    assert verify_signature(script, message + b"!", signature)[0] is False
    other = P2TR if script == P2WPKH else P2WPKH
    assert verify_signature(other, message, signature)[0] is False


def multisig(names=("alice-key", "bob-key", "carol-key"), threshold=2, wrap="{}"):
    descriptor, keys = dev_multisig(list(names), threshold)
    if wrap != "{}":
        body = wrap.format(descriptor.split("#")[0])
        descriptor = f"{body}#{descriptor_checksum(body)}"
    script = account_scripts({"addresses": [], "descriptor": descriptor, "gap_limit": 0}, 3)[4]   # change/1
    return descriptor, keys, script


@pytest.mark.parametrize("wrap", ["{}", "sh({})"])
def test_two_of_three_multisig_signatures_prove_control_as_a_spend_would(wrap):
    """Two of the three cosigners sign (simple for P2WSH, full for P2SH-P2WSH, whose scriptSig carries the
    redeem script); any two suffice; one alone cannot produce a proof."""
    descriptor, keys, script = multisig(wrap=wrap)
    message = b"nonce 1"
    for pair in ([keys[0], keys[1]], [keys[1], keys[2]], [keys[0], keys[2]]):
        signature = sign_script(script.script_pubkey, script.branch, script.index, descriptor, message,
                                DevKeys([], pair))
        assert verify_signature(script.script_pubkey, message, signature) == (True, "")
    assert sign_script(script.script_pubkey, script.branch, script.index, descriptor, message,
                       DevKeys([], keys[:1])) is None


def test_a_multisig_witness_with_one_signature_fails():
    """A witness that pushes one signature where the script needs two is refused by the interpreter."""
    descriptor, keys, script = multisig()
    message = b"nonce 1"
    signature = sign_script(script.script_pubkey, script.branch, script.index, descriptor, message, DevKeys([], keys))
    stack = bip322._witness_stack(base64.b64decode(signature))
    one_short = bip322.encode_witness((b"", stack[1], stack[1], stack[-1]))
    assert verify_signature(script.script_pubkey, message, one_short)[0] is False


def test_a_signature_over_another_nonce_by_another_key_or_for_another_address_fails():
    """The three substitutions a custodian without the keys could attempt."""
    descriptor, keys, script = multisig()
    message = b"nonce 1"
    signature = sign_script(script.script_pubkey, script.branch, script.index, descriptor, message, DevKeys([], keys))
    assert verify_signature(script.script_pubkey, b"nonce 2", signature)[0] is False
    other_descriptor, other_keys, other_script = multisig(names=("mallory-1", "mallory-2", "mallory-3"))
    forged = sign_script(other_script.script_pubkey, other_script.branch, other_script.index, other_descriptor,
                         message, DevKeys([], other_keys))
    forged_stack = bip322._witness_stack(base64.b64decode(forged))
    honest_stack = bip322._witness_stack(base64.b64decode(signature))
    another_key = bip322.encode_witness((b"", *forged_stack[1:3], honest_stack[-1]))
    assert verify_signature(script.script_pubkey, message, another_key)[0] is False
    assert verify_signature(script.script_pubkey, message, forged)[0] is False          # another witness script
    sibling = account_scripts({"addresses": [], "descriptor": descriptor, "gap_limit": 0}, 3)[5]
    assert verify_signature(sibling.script_pubkey, message, signature)[0] is False     # another address


def test_a_full_signature_spending_another_to_spend_is_malformed():
    """A full (whole-transaction) signature must spend this message's to_spend:0."""
    descriptor, keys, script = multisig(wrap="sh({})")
    signature = sign_script(script.script_pubkey, script.branch, script.index, descriptor, b"nonce 1",
                            DevKeys([], keys))
    valid, reason = verify_signature(script.script_pubkey, b"nonce 2", signature)
    assert not valid and "does not spend this challenge's to_spend" in reason
    assert verify_signature(script.script_pubkey, b"nonce 1", "not base64!")[1].startswith("malformed")


def test_the_control_report_counts_proven_sats_per_account_and_names_each_missing_or_invalid_script():
    """Three funded scripts: one proven, one signed for another nonce, one unsigned; only the first counts."""
    descriptor, keys, _ = multisig()
    scripts = account_scripts({"addresses": [], "descriptor": descriptor, "gap_limit": 0}, 3)[:3]
    challenge = {"nonce": "aa" * 32, "tree_size": 5, "root_hash": "bb" * 32, "height": 300, "block_hash": "cc" * 32,
                 "accounts": [{"account_id": "vault-m", "ledger_sats": 6, "descriptor": descriptor,
                               "funded_scripts": [{"script_pubkey": s.script_pubkey.hex(), "source": s.source,
                                                   "branch": s.branch, "index": s.index, "sats": n}
                                                  for s, n in zip(scripts, (1, 2, 3))]}]}
    message = bip322.challenge_message(challenge, "vault-m")
    signed = {scripts[0].script_pubkey.hex(): sign_script(scripts[0].script_pubkey, 0, 0, descriptor, message,
                                                           DevKeys([], keys)),
              scripts[1].script_pubkey.hex(): sign_script(scripts[1].script_pubkey, 0, 1, descriptor, b"old nonce",
                                                           DevKeys([], keys))}
    report = prove_control(challenge, {"vault-m": signed})
    assert (report["proven_sats"], report["funded_sats"], report["complete"]) == (1, 6, False)
    assert [s["status"] for s in report["accounts"][0]["scripts"]] == ["proven", "invalid", "missing"]
