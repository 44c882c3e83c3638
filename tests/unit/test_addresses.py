"""Addresses become the output scripts Core would pay, and back (vectors from BIP173/BIP350 and a known P2PKH).

The vectors are the "valid" and "invalid address" lists of BIP350 (which restate BIP173's for version 0); the
reason each invalid one is refused is asserted, so a vector mistyped into a mere bad checksum would show.
"""

import pytest

from services.bitcoin.addresses import (AddressInvalid, address_of_script_pubkey, network_of_address,
                                        script_pubkey_of_address)
from services.bitcoin.anchor_tx import AnchorKey
from services.bitcoin.regtest.rpc_methods import script_for_address, script_type_and_address

VALID = [
    # BIP173 / BIP350: P2WPKH and P2WSH, mainnet and testnet
    ("BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4", "0014751e76e8199196d454941c45d1b3a323f1433bd6"),
    ("tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7",
     "00201863143c14c5166804bd19203356da136c985678cd4d27a1b8c6329604903262"),
    ("tb1qqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvsesrxh6hy",
     "0020000000c4a5cad46221b2a187905e5266362b99d5e91c6ce24d165dab93e86433"),
    # BIP350: witness versions 1..16 in bech32m
    ("bc1pw508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7kt5nd6y",
     "5128751e76e8199196d454941c45d1b3a323f1433bd6751e76e8199196d454941c45d1b3a323f1433bd6"),
    ("BC1SW50QGDZ25J", "6002751e"),
    ("bc1zw508d6qejxtdg4y5r3zarvaryvaxxpcs", "5210751e76e8199196d454941c45d1b3a323"),
    ("tb1pqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvsesf3hn0c",
     "5120000000c4a5cad46221b2a187905e5266362b99d5e91c6ce24d165dab93e86433"),
    ("bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0",
     "512079be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"),
    # the genesis coinbase's P2PKH address
    ("1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa", "76a91462e907b15cbf27d5425399ebf6f0fb50ebb88f1888ac"),
]

INVALID = [
    # (address, what the codec must say) -- BIP350's invalid list, then base58 and other corruptions
    ("tc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq5zuyut", "not base58"),          # unknown hrp
    ("bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqh2y7hd", "needs bech32m"),
    ("tb1z0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqglt7rf", "needs bech32m"),
    ("BC1S0XLXVLHEMJA6C4DQV22UAPCTQUPFHLXM9H8Z3K2E72Q4K9HCZ7VQ54WELL", "needs bech32m"),
    ("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kemeawh", "needs bech32"),
    ("tb1q0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq24jc47", "needs bech32"),
    ("bc1p38j9r5y49hruaue7wxjce0updqjuyyx0kh56v8s25huc6995vvpql3jow4", "bad bech32 checksum, characters"),
    ("BC130XLXVLHEMJA6C4DQV22UAPCTQUPFHLXM9H8Z3K2E72Q4K9HCZ7VQ7ZWS8R", "witness version 17 above 16"),
    ("bc1pw5dgrnzv", "cannot be 1 bytes"),
    ("bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7v8n0nx0muaewav253zgeav", "cannot be 41 bytes"),
    ("BC1QR508D6QEJXTDG4Y5R3ZARVARYV98GJ9P", "v0 program cannot be 16 bytes"),
    ("tb1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq47Zagq", "characters or case"),       # mixed case
    ("bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7v07qwwzcrf", "bad padding"),          # > 4 bits of 0
    ("tb1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vpggkg4j", "bad padding"),            # non-zero pad
    ("bc1gmk9yu", "bad bech32 checksum, characters"),                                             # empty data
    ("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t5", "bad bech32 checksum"),  # checksum off by one character
    ("1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNb", "not a P2PKH or P2SH address"),
    ("not-an-address", "not base58"),
]


@pytest.mark.parametrize("address, script_hex", VALID)
def test_known_addresses_give_their_scripts(address, script_hex):
    assert script_pubkey_of_address(address).hex() == script_hex


@pytest.mark.parametrize("address, reason", INVALID)
def test_corrupted_addresses_are_refused_for_the_reason_named(address, reason):
    with pytest.raises(AddressInvalid, match=reason.replace("(", r"\(")):
        script_pubkey_of_address(address)


@pytest.mark.parametrize("address, script_hex", VALID)
def test_scripts_give_back_their_addresses(address, script_hex):
    network = network_of_address(address)
    assert address_of_script_pubkey(bytes.fromhex(script_hex), network) == address.lower() \
        if address[0] in "bBtT" else address


def test_a_regtest_key_address_round_trips():
    key = AnchorKey.generate("regtest")
    assert script_pubkey_of_address(key.address) == key.script_pubkey
    assert script_pubkey_of_address(key.address, "regtest") == key.script_pubkey
    assert network_of_address(key.address) == "regtest"
    assert address_of_script_pubkey(key.script_pubkey, "regtest") == key.address


def test_an_address_of_another_network_is_refused_when_a_network_is_asked():
    with pytest.raises(AddressInvalid, match="a mainnet address, not a regtest one"):
        script_pubkey_of_address("bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0", "regtest")
    with pytest.raises(AddressInvalid, match="a mainnet address, not a testnet one"):
        script_pubkey_of_address("1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa", "testnet")


def test_the_regtest_node_decodes_with_the_same_codec():
    """One codec: the node's decoder accepts regtest addresses only and raises the one AddressInvalid."""
    key = AnchorKey.generate("regtest")
    assert script_for_address(key.address) == key.script_pubkey
    with pytest.raises(AddressInvalid):
        script_for_address("BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4")
    p2pkh = bytes.fromhex("76a91462e907b15cbf27d5425399ebf6f0fb50ebb88f1888ac")
    kind, address = script_type_and_address(p2pkh)
    assert kind == "pubkeyhash" and script_for_address(address) == p2pkh
