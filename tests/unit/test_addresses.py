"""Addresses become the output scripts Core would pay (vectors from BIP173/BIP350 and a known P2PKH)."""

import pytest

from services.bitcoin.addresses import AddressInvalid, network_of_address, script_pubkey_of_address
from services.bitcoin.anchor_tx import AnchorKey


@pytest.mark.parametrize("address, script_hex", [
    # BIP173 test vectors (P2WPKH and P2WSH, mainnet and testnet)
    ("BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4", "0014751e76e8199196d454941c45d1b3a323f1433bd6"),
    ("tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7",
     "00201863143c14c5166804bd19203356da136c985678cd4d27a1b8c6329604903262"),
    # BIP350 (P2TR, bech32m)
    ("bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0",
     "512079be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"),
    # the genesis coinbase's P2PKH address
    ("1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa", "76a91462e907b15cbf27d5425399ebf6f0fb50ebb88f1888ac"),
])
def test_known_addresses_give_their_scripts(address, script_hex):
    assert script_pubkey_of_address(address).hex() == script_hex


def test_a_regtest_key_address_round_trips():
    key = AnchorKey.generate("regtest")
    assert script_pubkey_of_address(key.address) == key.script_pubkey
    assert network_of_address(key.address) == "regtest"


@pytest.mark.parametrize("address", ["bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t5",  # checksum off by one char
                                     "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNb", "not-an-address"])
def test_corrupted_addresses_are_refused(address):
    with pytest.raises(AddressInvalid):
        script_pubkey_of_address(address)
