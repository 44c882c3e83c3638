"""The reserve's purchase lots, first in, first out, with consumed lots leaving memory and saved states.

Lots are numbered from 0 in the order the fold creates them (a purchase, or coins arriving from
nominal:adjustments). Coins leaving the reserve consume the oldest lot first, so at any moment every lot
before the *head* is fully consumed, the head lot may be partly consumed, and every later lot is whole: the
queue is an append-only sequence of immutable lots plus a head (number, sats taken). That makes it cheap to
keep and to save:
- in memory, only lots from the chunk holding the head onwards (whole chunks of LOT_CHUNK_LOTS leave);
- in a saved state, only the lots after the newest full chunk, the head, and the newest full chunk's digest.
  Each full chunk is stored once, content-addressed, and names the digest of the chunk before it, so a
  saved state's size does not grow with the number of lots, and its seal (over its bytes) covers every chunk
  through the digest chain. Loading walks the chain back to the chunk holding the head, checking each digest.
"""

import collections
import hashlib
import itertools
import json
from typing import Any, Callable, Iterator, NamedTuple

from ledger.limits import LOT_CHUNK_LOTS

_encode = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode
ChunkLoader = Callable[[str], bytes | None]   # a chunk's bytes by its digest (None: not stored)


class Lot(NamedTuple):
    """Coins that entered the reserve together at one price (adjustments: currency XXX, price 0). Immutable:
    what is left of a lot follows from the queue's head."""

    purchase_id: str
    trade_date: str
    currency_code: str
    price_per_btc: str      # decimal string
    quantity_sats: int


def chunk_digest(chunk_bytes: bytes) -> str:
    return hashlib.sha256(chunk_bytes).hexdigest()


def _chunk_bytes(number: int, previous_digest: str, lots: list[Lot]) -> bytes:
    return _encode({"number": number, "previous": previous_digest, "lots": [list(lot) for lot in lots]}).encode()


class LotQueue:
    """FIFO lots of the whole reserve. `append` and `consume` are the only writers (ReserveState.apply's)."""

    def __init__(self) -> None:
        self.chunks: collections.deque[list[Lot]] = collections.deque([[]])  # head's chunk .. the open tail chunk
        self.digests: collections.deque[str] = collections.deque()   # one per full chunk in `chunks`
        self.previous_digest = ""   # the digest of the chunk before chunks[0] ("" when there is none)
        self.first_number = 0       # the number of chunks[0][0]: a multiple of LOT_CHUNK_LOTS
        self.head_number = 0        # the oldest lot not fully consumed (== created when every lot is)
        self.head_taken_sats = 0    # sats already taken from the head lot
        self.remaining_sats = 0     # sats left in all lots

    @property
    def created(self) -> int:
        return self.first_number + (len(self.chunks) - 1) * LOT_CHUNK_LOTS + len(self.chunks[-1])

    @property
    def newest_digest(self) -> str:
        return self.digests[-1] if self.digests else self.previous_digest

    def append(self, lot: Lot) -> None:
        tail = self.chunks[-1]
        tail.append(lot)
        self.remaining_sats += lot.quantity_sats
        if len(tail) == LOT_CHUNK_LOTS:
            self.digests.append(chunk_digest(_chunk_bytes(self.created - LOT_CHUNK_LOTS, self.newest_digest, tail)))
            self.chunks.append([])

    def consume(self, amount_sats: int) -> bool:
        """Take `amount_sats` from the oldest lots; False if the lots hold less (the queue is then unusable)."""
        while amount_sats:
            chunk, index = self.chunks[0], self.head_number - self.first_number
            if index == len(chunk):
                return False
            left_sats = chunk[index].quantity_sats - self.head_taken_sats
            taken_sats = min(left_sats, amount_sats)
            amount_sats -= taken_sats
            self.remaining_sats -= taken_sats
            if taken_sats < left_sats:
                self.head_taken_sats += taken_sats
                continue
            self.head_number, self.head_taken_sats = self.head_number + 1, 0
            if self.head_number - self.first_number == LOT_CHUNK_LOTS:   # the head's chunk is used up: it leaves
                self.chunks.popleft()
                self.previous_digest = self.digests.popleft()
                self.first_number += LOT_CHUNK_LOTS
        return True

    def open_lots(self) -> Iterator[tuple[Lot, int]]:
        """Each lot not fully consumed, oldest first, with its remaining sats."""
        later = itertools.islice(self.chunks, 1, None)
        taken_sats = self.head_taken_sats
        for lot in itertools.chain(self.chunks[0][self.head_number - self.first_number:], *later):
            yield lot, lot.quantity_sats - taken_sats
            taken_sats = 0

    def full_chunks(self, number_min: int = 0) -> list[tuple[str, bytes]]:
        """(digest, bytes) of each full chunk held in memory whose first lot number is at least `number_min`."""
        found, previous = [], self.previous_digest
        for index, digest in enumerate(self.digests):
            number = self.first_number + index * LOT_CHUNK_LOTS
            if number >= number_min:
                found.append((digest, _chunk_bytes(number, previous, self.chunks[index])))
            previous = digest
        return found

    def copy(self) -> "LotQueue":
        twin = LotQueue()
        twin.chunks = collections.deque(list(chunk) for chunk in self.chunks)   # lots are immutable: shared
        twin.digests = collections.deque(self.digests)
        twin.previous_digest, twin.first_number = self.previous_digest, self.first_number
        twin.head_number, twin.head_taken_sats = self.head_number, self.head_taken_sats
        twin.remaining_sats = self.remaining_sats
        return twin

    # --- saved form ---------------------------------------------------------------------------------------

    def to_fields(self) -> dict[str, Any]:
        return {"created": self.created, "head": self.head_number, "head_taken_sats": self.head_taken_sats,
                "newest_chunk": self.newest_digest, "tail": [list(lot) for lot in self.chunks[-1]]}

    @classmethod
    def from_fields(cls, fields: dict[str, Any], load_chunk: ChunkLoader | None) -> "LotQueue":
        """The queue a saved state describes; its chunks come from `load_chunk`, each checked against the digest
        that names it. Raises ValueError when a chunk is missing, altered or out of place."""
        queue = cls()
        tail = [Lot(*lot) for lot in fields["tail"]]
        number, head = fields["created"] - len(tail), fields["head"]
        if number % LOT_CHUNK_LOTS or len(tail) >= LOT_CHUNK_LOTS or not 0 <= head <= fields["created"]:
            raise ValueError("saved lots: the tail, the count and the head do not fit together")
        queue.chunks, digest = collections.deque([tail]), fields["newest_chunk"]
        while number > head - head % LOT_CHUNK_LOTS:
            number -= LOT_CHUNK_LOTS
            chunk = _load_chunk(load_chunk, digest, number)
            queue.chunks.appendleft([Lot(*lot) for lot in chunk["lots"]])
            queue.digests.appendleft(digest)
            digest = chunk["previous"]
        queue.previous_digest, queue.first_number = digest, number
        queue.head_number, queue.head_taken_sats = head, fields["head_taken_sats"]
        queue.remaining_sats = sum(remaining_sats for _, remaining_sats in queue.open_lots())
        return queue


def _load_chunk(load_chunk: ChunkLoader | None, digest: str, number: int) -> dict[str, Any]:
    data = None if load_chunk is None else load_chunk(digest)
    if data is None:
        raise ValueError(f"saved lots: chunk {digest[:16]} (lots from {number}) is not stored")
    if chunk_digest(data) != digest:
        raise ValueError(f"saved lots: chunk {digest[:16]} does not match its digest")
    chunk = json.loads(data)
    if chunk.get("number") != number or len(chunk.get("lots", ())) != LOT_CHUNK_LOTS:
        raise ValueError(f"saved lots: chunk {digest[:16]} is not the chunk of lots from {number}")
    return chunk
