"""Every bound of the ledger in one place."""

SATS_PER_BTC = 100_000_000
# No amount can exceed the 21 million BTC that will ever exist.
AMOUNT_MAX_SATS = 21_000_000 * SATS_PER_BTC

ID_LENGTH_MIN = 3
ID_LENGTH_MAX = 64
REQUEST_ID_LENGTH_MAX = 64
NAME_LENGTH_MAX = 128          # custodian, wallet label, counterparty, trade reference, ceremony reference
TEXT_LENGTH_MAX = 512          # memo, reason
DESCRIPTOR_LENGTH_MAX = 1024
ADDRESS_LENGTH_MAX = 100
ADDRESSES_MAX = 100
QUORUM_TOTAL_MAX = 15

PRICE_INTEGER_DIGITS_MAX = 18
PRICE_FRACTION_DIGITS_MAX = 8
FIAT_INTEGER_DIGITS_MAX = 24

EXPIRY_DEFAULT_US = 24 * 3600 * 1_000_000
EXPIRY_MAX_US = 90 * 24 * 3600 * 1_000_000

PAGE_SIZE_DEFAULT = 100
PAGE_SIZE_MAX = 1000
STREAM_BATCH_DEFAULT = 200
STREAM_BATCH_MAX = 1000

# Commands decided and committed together in one transaction by the writer (group commit).
COMMAND_BATCH_MAX = 256
# Attempts of one batch when another process appended first (optimistic concurrency).
COMMAND_ATTEMPTS_MAX = 12
# Events read per page when replaying the log.
REPLAY_PAGE_SIZE = 5000

# Audit API: leaves per StreamLeaves message.
LEAF_BATCH_DEFAULT = 500
LEAF_BATCH_MAX = 2000
