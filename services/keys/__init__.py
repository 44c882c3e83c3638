"""Private keys: files readable by their owner only, or keys that never leave a PKCS#11 token.

files.py      creating and checking private files (mode 0600 from the first byte; group/other access refused)
uri.py        RFC 7512 `pkcs11:` URIs that name a key in a token, the PIN read from a file
signers.py    the tree-head signer (Ed25519) from a key file or a token, one interface for both
pkcs11_keys.py  keys generated and used inside a token through python-pkcs11
"""
