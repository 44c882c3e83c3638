"""Proof of reserves beyond plain addresses: descriptor expansion, reconciliation that never omits an account,
and BIP-322 proofs of key control checked by Bitcoin Core's script interpreter (libbitcoinkernel)."""
