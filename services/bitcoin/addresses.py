"""Bitcoin addresses to the output scripts they stand for, and back (segwit v0/v1+ bech32/bech32m, base58 P2PKH/P2SH).

The one address codec of the service: the audit, the demo and the embedded regtest node all decode here.
Segwit rules are BIP173 (bech32, witness version 0) and BIP350 (bech32m, versions 1..16); the bech32
checksum itself is bitcoin-utils' reference implementation.
"""

from base58check import b58decode, b58encode
from bitcoinutils.bech32 import Encoding, bech32_decode, convertbits, encode as bech32_encode

from ledger.anchoring import sha256d

BECH32_PREFIXES = {"bc": "mainnet", "tb": "testnet", "bcrt": "regtest"}  # signet shares tb with testnet
BASE58_VERSIONS = {0x00: ("mainnet", "p2pkh"), 0x05: ("mainnet", "p2sh"),
                   0x6F: ("testnet", "p2pkh"), 0xC4: ("testnet", "p2sh")}  # regtest uses the testnet bytes
BASE58_PREFIX_OF = {("mainnet", "p2pkh"): 0x00, ("mainnet", "p2sh"): 0x05,
                    ("testnet", "p2pkh"): 0x6F, ("testnet", "p2sh"): 0xC4}
BECH32_PREFIX_OF = {network: prefix for prefix, network in BECH32_PREFIXES.items()}
WITNESS_VERSION_MAX = 16
WITNESS_PROGRAM_BYTES_MIN, WITNESS_PROGRAM_BYTES_MAX = 2, 40
WITNESS_V0_PROGRAM_BYTES = (20, 32)
BASE58_PAYLOAD_BYTES = 21      # version byte + 20-byte hash
ADDRESS_LENGTH_MAX = 90        # BIP173's bound on a bech32 string; base58 addresses are shorter


class AddressInvalid(ValueError):
    """Not an address of a kind this service can turn into an output script (or not of the network asked)."""


def script_pubkey_of_address(address: str, network: str | None = None) -> bytes:
    """The output script `address` pays; with `network`, an address of another network is refused."""
    if len(address) > ADDRESS_LENGTH_MAX:
        raise AddressInvalid(f"{address[:20]}...: longer than {ADDRESS_LENGTH_MAX} characters")
    prefix = address.lower().rpartition("1")[0]
    if prefix in BECH32_PREFIXES:
        script, found = _segwit_script(prefix, address), BECH32_PREFIXES[prefix]
        expected = _address_network(network) if network else found
    else:
        payload = _base58_payload(address)
        script, found = _base58_script(payload), BASE58_VERSIONS[payload[0]][0]
        expected = _base58_network(network) if network else found
    if found != expected:
        raise AddressInvalid(f"{address}: a {found} address, not a {network} one")
    return script


def network_of_address(address: str) -> str:
    """"mainnet", "testnet" or "regtest" (base58 addresses of regtest say "testnet": they share the bytes)."""
    prefix = address.lower().rpartition("1")[0]
    if prefix in BECH32_PREFIXES:
        _segwit_script(prefix, address)
        return BECH32_PREFIXES[prefix]
    return BASE58_VERSIONS[_base58_payload(address)[0]][0]


def address_of_script_pubkey(script: bytes, network: str) -> str | None:
    """The address of a P2PKH, P2SH or segwit output script on `network`; None for other scripts."""
    if len(script) == 25 and script[:3] == b"\x76\xa9\x14" and script[23:] == b"\x88\xac":
        return _base58_address(BASE58_PREFIX_OF[(_base58_network(network), "p2pkh")], script[3:23])
    if len(script) == 23 and script[:2] == b"\xa9\x14" and script[22:] == b"\x87":
        return _base58_address(BASE58_PREFIX_OF[(_base58_network(network), "p2sh")], script[2:22])
    witness = witness_program_of(script)
    if witness is None:
        return None
    version, program = witness
    return bech32_encode(BECH32_PREFIX_OF[_address_network(network)], version, list(program))


def witness_program_of(script: bytes) -> tuple[int, bytes] | None:
    """(version, program) of a segwit output script (BIP141: OP_n then one 2..40-byte push), else None."""
    if not 4 <= len(script) <= 2 + WITNESS_PROGRAM_BYTES_MAX or script[1] != len(script) - 2:
        return None
    if script[0] == 0:
        return 0, script[2:]
    if 0x51 <= script[0] <= 0x50 + WITNESS_VERSION_MAX:
        return script[0] - 0x50, script[2:]
    return None


def _address_network(network: str) -> str:
    """Signet addresses are testnet's."""
    return "testnet" if network == "signet" else network


def _base58_network(network: str) -> str:
    return "mainnet" if network == "mainnet" else "testnet"


def _segwit_script(prefix: str, address: str) -> bytes:
    hrp, data, encoding = bech32_decode(address)
    if hrp != prefix or not data:
        raise AddressInvalid(f"{address}: bad bech32 checksum, characters or case")
    version, program = data[0], convertbits(data[1:], 5, 8, False)
    if version > WITNESS_VERSION_MAX:
        raise AddressInvalid(f"{address}: witness version {version} above {WITNESS_VERSION_MAX}")
    if program is None:
        raise AddressInvalid(f"{address}: bad padding in the witness program")
    if not WITNESS_PROGRAM_BYTES_MIN <= len(program) <= WITNESS_PROGRAM_BYTES_MAX or (
            version == 0 and len(program) not in WITNESS_V0_PROGRAM_BYTES):
        raise AddressInvalid(f"{address}: a witness v{version} program cannot be {len(program)} bytes")
    if encoding != (Encoding.BECH32 if version == 0 else Encoding.BECH32M):
        raise AddressInvalid(f"{address}: witness v{version} needs {'bech32' if version == 0 else 'bech32m'} "
                             "(BIP350)")
    return bytes([0x50 + version if version else 0x00, len(program)]) + bytes(program)


def _base58_payload(address: str) -> bytes:
    try:
        data = b58decode(address.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as error:
        raise AddressInvalid(f"{address}: not base58 ({error})") from None
    body, checksum = data[:-4], data[-4:]
    if len(body) != BASE58_PAYLOAD_BYTES or sha256d(body)[:4] != checksum or body[0] not in BASE58_VERSIONS:
        raise AddressInvalid(f"{address}: not a P2PKH or P2SH address")
    return body


def _base58_script(payload: bytes) -> bytes:
    if BASE58_VERSIONS[payload[0]][1] == "p2pkh":
        return b"\x76\xa9\x14" + payload[1:] + b"\x88\xac"
    return b"\xa9\x14" + payload[1:] + b"\x87"


def _base58_address(prefix: int, payload: bytes) -> str:
    body = bytes([prefix]) + payload
    return b58encode(body + sha256d(body)[:4]).decode("ascii")
