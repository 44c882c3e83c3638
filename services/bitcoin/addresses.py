"""Bitcoin addresses to the output scripts they stand for (segwit v0/v1 bech32/bech32m, base58 P2PKH/P2SH)."""

from base58check import b58decode
from bitcoinutils.bech32 import decode as bech32_decode

from ledger.anchoring import sha256d

BECH32_PREFIXES = {"bc": "mainnet", "tb": "testnet", "bcrt": "regtest"}  # signet shares tb with testnet
BASE58_VERSIONS = {0x00: ("mainnet", "p2pkh"), 0x05: ("mainnet", "p2sh"),
                   0x6F: ("testnet", "p2pkh"), 0xC4: ("testnet", "p2sh")}  # regtest uses the testnet bytes


class AddressInvalid(ValueError):
    """Not an address of a kind this service can turn into an output script."""


def script_pubkey_of_address(address: str) -> bytes:
    prefix = address.lower().rpartition("1")[0]
    if prefix in BECH32_PREFIXES:
        return _segwit_script(prefix, address)
    return _base58_script(address)


def network_of_address(address: str) -> str:
    prefix = address.lower().rpartition("1")[0]
    if prefix in BECH32_PREFIXES:
        return BECH32_PREFIXES[prefix]
    return BASE58_VERSIONS[_base58_payload(address)[0]][0]


def _segwit_script(prefix: str, address: str) -> bytes:
    version, program = bech32_decode(prefix, address)
    if version is None:
        raise AddressInvalid(f"{address}: bad bech32 checksum or program")
    program = bytes(program)
    return bytes([0x50 + version if version else 0x00, len(program)]) + program


def _base58_payload(address: str) -> bytes:
    try:
        data = b58decode(address.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as error:
        raise AddressInvalid(f"{address}: not base58 ({error})") from None
    if len(data) != 25 or sha256d(data[:21])[:4] != data[21:] or data[0] not in BASE58_VERSIONS:
        raise AddressInvalid(f"{address}: not a P2PKH or P2SH address")
    return data[:21]


def _base58_script(address: str) -> bytes:
    payload = _base58_payload(address)
    if BASE58_VERSIONS[payload[0]][1] == "p2pkh":
        return bytes.fromhex("76a914") + payload[1:] + bytes.fromhex("88ac")
    return bytes.fromhex("a914") + payload[1:] + b"\x87"
