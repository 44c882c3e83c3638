"""Page tokens of the List RPCs (AIP-158): opaque to clients, they carry the kind of list and where the next page
starts (an offset or the first key of the next page)."""

import base64

from ledger import errors

OFFSET_MAX = 2**63 - 1  # keys are int64 columns
# Every page and stream batch is cut at this many bytes as well as at its count, so that a client with gRPC's
# default 4 MiB receive limit can read any valid history (one item alone may exceed it only if the item is
# itself bigger; no valid event or account is).
RESPONSE_BYTES_MAX = 1 << 20


def within_bytes(items: list, budget_bytes: int = RESPONSE_BYTES_MAX) -> list:
    """The longest prefix of `items` (protobuf messages) whose encoded size fits the budget; never empty
    when `items` is not."""
    total, kept = 0, []
    for item in items:
        total += item.ByteSize() + 8  # a field tag and length prefix per repeated element, generously
        if kept and total > budget_bytes:
            break
        kept.append(item)
    return kept


def offset_of(token: str, kind: str) -> int:
    """The offset a token of this kind of list carries; 0 for no token; RequestInvalid for a token we never issued."""
    return offsets_of(token, kind, 1)[0] if token else 0


def offsets_of(token: str, kind: str, count: int) -> tuple[int, ...]:
    """The `count` offsets a token of this kind of list carries; RequestInvalid for a token we never issued."""
    try:
        found_kind, _, offsets = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        parts = offsets.split(":")
        if found_kind == kind and len(parts) == count and \
                all(part.isascii() and part.isdigit() and int(part) <= OFFSET_MAX for part in parts):
            return tuple(int(part) for part in parts)
    except (ValueError, UnicodeDecodeError):
        pass
    raise token_invalid()


def token_invalid() -> errors.RequestInvalid:
    return errors.RequestInvalid([errors.Violation("page_token", "PAGE_TOKEN_INVALID",
                                                   "page_token is not one we issued")])


def token_of(kind: str, *offsets: int) -> str:
    return base64.urlsafe_b64encode(":".join([kind, *map(str, offsets)]).encode()).decode()
