"""Shared by the embedded-chain tests: a funded anchor key and an anchor spending its coin."""

from ledger.anchoring import encode_payload
from services.bitcoin.anchor_tx import AnchorKey, build_anchor_tx

ROOT = bytes(range(32))
FUNDED_KEY_SATS = 100_000


def funded_anchor_key(chain) -> AnchorKey:
    """A new regtest key holding one confirmed coin of FUNDED_KEY_SATS."""
    key = AnchorKey.generate("regtest")
    chain.send(key.script_pubkey, FUNDED_KEY_SATS)
    chain.mine(1)
    return key


def anchor_spending(chain, key, coin=None, fee_rate=1, size=7):
    """A signed anchor of (size, ROOT) spending `coin` (default: the key's first confirmed coin)."""
    coin = coin or chain.utxos(key.script_pubkey)[0]
    return build_anchor_tx(coin, key, encode_payload(size, ROOT), fee_rate, 20_000, chain.tip_height())
