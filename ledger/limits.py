"""Every bound of the ledger in one place."""

SATS_PER_BTC = 100_000_000
# The 21 million BTC that will ever exist: no amount, balance (in either direction), hold, custody total or
# sum of purchases may exceed it (rules.py refuses, the fold re-checks: SUPPLY_CAP_EXCEEDED).
SUPPLY_CAP_SATS = 21_000_000 * SATS_PER_BTC
AMOUNT_MAX_SATS = SUPPLY_CAP_SATS
# An account's cumulative credits and debits go into int64 proto fields (Balance.credits_sats/debits_sats);
# moving coins back and forth could pass it, so a posting that would is refused (TURNOVER_LIMIT_EXCEEDED).
TURNOVER_MAX_SATS = 2**63 - 1

# Times the API can express: google.protobuf.Timestamp spans 0001-01-01T00:00:00Z..9999-12-31T23:59:59.999999999Z.
TIMESTAMP_SECONDS_MIN = -62_135_596_800
TIMESTAMP_SECONDS_MAX = 253_402_300_799
TIMESTAMP_NANOS_MAX = 999_999_999

ID_LENGTH_MIN = 3
ID_LENGTH_MAX = 64
REQUEST_ID_LENGTH_MAX = 64
NAME_LENGTH_MAX = 128          # custodian, wallet label, counterparty, trade reference, ceremony reference
TEXT_LENGTH_MAX = 512          # memo, reason
DESCRIPTOR_LENGTH_MAX = 4096   # a 15-of-15 multisig of xpubs with origins is about 2,300 characters
# A ranged descriptor is expanded on each branch until this many consecutive derived scripts hold no coin.
GAP_LIMIT_DEFAULT = 20
GAP_LIMIT_MIN = 1
GAP_LIMIT_MAX = 10_000
ADDRESS_LENGTH_MAX = 100
ADDRESSES_MAX = 100
QUORUM_TOTAL_MAX = 15

# Reserves monitor: txids one discrepancy names (one account, one block), and block heights it accepts.
DISCREPANCY_TXIDS_MAX = 500
BLOCK_HEIGHT_MAX = 2**31 - 1

PRICE_INTEGER_DIGITS_MAX = 18
PRICE_FRACTION_DIGITS_MAX = 8
FIAT_INTEGER_DIGITS_MAX = 24

EXPIRY_DEFAULT_US = 24 * 3600 * 1_000_000
EXPIRY_MAX_US = 90 * 24 * 3600 * 1_000_000

PAGE_SIZE_DEFAULT = 100
PAGE_SIZE_MAX = 1000
STREAM_BATCH_DEFAULT = 200
# GetCostBasis listings whose snapshot (state and totals) a server keeps for their later pages.
COST_BASIS_SNAPSHOTS_MAX = 4
STREAM_BATCH_MAX = 1000

# Commands decided and committed together in one transaction by the writer (group commit).
COMMAND_BATCH_MAX = 256
# Attempts of one batch when another process appended first (optimistic concurrency).
COMMAND_ATTEMPTS_MAX = 12
# Events read per page when replaying the log.
REPLAY_PAGE_SIZE = 5000
# Lots per saved chunk of the FIFO lot queue (ledger/lots.py): a saved state carries at most this many lots.
LOT_CHUNK_LOTS = 1000
# Events this process decided and committed, remembered until the read projection folds them (so that it need
# not decide them again); beyond this many the oldest are forgotten and simply decided again.
OWN_EVENTS_MAX = 20_000

# Audit API: leaves per StreamLeaves message.
LEAF_BATCH_DEFAULT = 500
LEAF_BATCH_MAX = 2000

# The PSBT flow for an external anchor signer (docs/FORMATS-anchoring.md §7).
KEY_ORIGIN_DEPTH_MAX = 255               # a BIP-32 path is at most 255 levels deep (the depth is one byte)
ANCHOR_REQUEST_SIZE_MAX_BYTES = 64_000   # FILE.request.json as `anchor psbt` writes it (the PSBT is inside)
ANCHORS_SHOWN_MAX = 10                   # `anchor status` lists the last anchors only
# C2SP signed notes, checkpoints and the witness protocol (services/witness/).
NOTE_SIGNATURES_MAX = 100              # signed-note: a verifier refuses a note with more signature lines
NOTE_SIZE_MAX_BYTES = 1 << 16          # a checkpoint note with its signatures; far above any real one
WITNESS_PROOF_HASHES_MAX = 63          # tlog-witness: at most 63 consistency proof lines
WITNESS_REQUEST_SIZE_MAX_BYTES = 1 << 17
WITNESSES_MAX = 32                     # --witness options of serve and audit
KEY_NAME_LENGTH_MAX = 256              # origin lines and key names
