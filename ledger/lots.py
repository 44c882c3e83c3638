"""The reserve's purchase lots, first in, first out, with consumed lots leaving memory and saved states.

Lots are numbered from 0 in the order the fold creates them (a purchase, or coins arriving from
nominal:adjustments). Coins leaving the reserve consume the oldest lot first, so at any moment every lot
before the *head* is fully consumed, the head lot may be partly consumed, and every later lot is whole: the
queue is an append-only sequence of immutable lots plus a head (number, sats taken). That makes it cheap to
keep and to save:
- in memory, only lots from the chunk holding the head onwards (whole chunks of LOT_CHUNK_LOTS leave), the
  full chunks as their saved bytes (about 50 bytes a lot), only the head's chunk parsed;
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
    """FIFO lots of the whole reserve. `append` and `consume` are the only writers (ReserveState.apply's).

    Full chunks are held as their saved bytes (about 50 bytes a lot); only the head's chunk is kept parsed."""

    def __init__(self) -> None:
        self.full: collections.deque[tuple[str, bytes]] = collections.deque()  # (digest, bytes), head's chunk on
        self.tail: list[Lot] = []           # the open chunk: fewer than LOT_CHUNK_LOTS lots
        self.previous_digest = ""           # the digest of the chunk before the first held one ("" none)
        self.first_number = 0               # the number of the first held lot: a multiple of LOT_CHUNK_LOTS
        self.head_number = 0                # the oldest lot not fully consumed (== created when every lot is)
        self.head_taken_sats = 0            # sats already taken from the head lot
        self._head_chunk: list[Lot] | None = None   # full[0] parsed, once the head needs it

    @property
    def created(self) -> int:
        return self.first_number + len(self.full) * LOT_CHUNK_LOTS + len(self.tail)

    @property
    def newest_digest(self) -> str:
        return self.full[-1][0] if self.full else self.previous_digest

    def append(self, lot: Lot) -> None:
        self.tail.append(lot)
        if len(self.tail) == LOT_CHUNK_LOTS:
            chunk = _chunk_bytes(self.created - LOT_CHUNK_LOTS, self.newest_digest, self.tail)
            if not self.full:
                self._head_chunk = self.tail   # the head's chunk, parsed already
            self.full.append((chunk_digest(chunk), chunk))
            self.tail = []

    def _head_lots(self) -> list[Lot]:
        if not self.full:
            return self.tail
        if self._head_chunk is None:
            self._head_chunk = _lots_of(json.loads(self.full[0][1]))
        return self._head_chunk

    def consume(self, amount_sats: int) -> bool:
        """Take `amount_sats` from the oldest lots; False if the lots hold less (the queue is then unusable)."""
        while amount_sats:
            chunk, index = self._head_lots(), self.head_number - self.first_number
            if index == len(chunk):
                return False
            left_sats = chunk[index].quantity_sats - self.head_taken_sats
            taken_sats = min(left_sats, amount_sats)
            amount_sats -= taken_sats
            if taken_sats < left_sats:
                self.head_taken_sats += taken_sats
                continue
            self.head_number, self.head_taken_sats = self.head_number + 1, 0
            if self.head_number - self.first_number == LOT_CHUNK_LOTS:   # the head's chunk is used up: it leaves
                self.previous_digest = self.full.popleft()[0]
                self.first_number += LOT_CHUNK_LOTS
                self._head_chunk = None
        return True

    def open_lots(self, number_min: int = 0) -> Iterator[tuple[Lot, int]]:
        """Each lot not fully consumed, oldest first, with its remaining sats; from lot number `number_min` on
        when given (the open lots are numbers head_number..created - 1; earlier chunks are skipped unparsed)."""
        start = max(number_min, self.head_number)
        if start >= self.created:
            return
        index, skip = divmod(start - self.first_number, LOT_CHUNK_LOTS)
        later = (_lots_of(json.loads(chunk)) for _, chunk in itertools.islice(self.full, max(index, 1), None))
        chunks = itertools.chain([self._head_lots()] if index == 0 and self.full else [], later, [self.tail])
        taken_sats = self.head_taken_sats if start == self.head_number else 0
        for lots in chunks:   # one chunk parsed at a time
            for lot in lots[skip:]:
                yield lot, lot.quantity_sats - taken_sats
                taken_sats = 0
            skip = 0

    def full_chunks(self, number_min: int = 0) -> list[tuple[str, bytes]]:
        """(digest, bytes) of each full chunk held in memory whose first lot number is at least `number_min`."""
        skip = max(0, -(-(number_min - self.first_number) // LOT_CHUNK_LOTS))
        return list(itertools.islice(self.full, skip, None))

    def copy(self) -> "LotQueue":
        twin = LotQueue()
        twin.full, twin.tail = collections.deque(self.full), list(self.tail)   # chunks are immutable: shared
        twin.previous_digest, twin.first_number = self.previous_digest, self.first_number
        twin.head_number, twin.head_taken_sats = self.head_number, self.head_taken_sats
        twin._head_chunk = self._head_chunk
        return twin

    # --- saved form ---------------------------------------------------------------------------------------

    def to_fields(self) -> dict[str, Any]:
        return {"created": self.created, "head": self.head_number, "head_taken_sats": self.head_taken_sats,
                "newest_chunk": self.newest_digest, "tail": [list(lot) for lot in self.tail]}

    @classmethod
    def from_fields(cls, fields: dict[str, Any], load_chunk: ChunkLoader | None) -> "LotQueue":
        """The queue a saved state describes; its chunks come from `load_chunk`, each checked against the digest
        that names it. Raises ValueError when a chunk is missing, altered or out of place."""
        queue = cls()
        queue.tail = _lots_of({"lots": fields["tail"]})
        number, head = _first_lot_of_tail(fields), fields["head"]
        digest = fields["newest_chunk"]
        while number > head - head % LOT_CHUNK_LOTS:
            number -= LOT_CHUNK_LOTS
            chunk, parsed = _load_chunk(load_chunk, digest, number)
            queue.full.appendleft((digest, chunk))
            digest = parsed["previous"]
        queue.previous_digest, queue.first_number = digest, number
        queue.head_number, queue.head_taken_sats = head, fields["head_taken_sats"]
        if not queue._head_fits():
            raise ValueError("saved lots: more is taken from the head lot than it holds")
        return queue

    def _head_fits(self) -> bool:
        lots = self._head_lots()[self.head_number - self.first_number:]
        return 0 <= self.head_taken_sats < lots[0].quantity_sats if lots else self.head_taken_sats == 0


def _lots_of(chunk: dict[str, Any]) -> list[Lot]:
    return [Lot(*lot) for lot in chunk["lots"]]


class LotChunkUnusable(ValueError):
    """A chunk a saved state needs is missing, altered or out of place; names it by its full digest."""

    def __init__(self, digest: str, number: int, problem: str):
        super().__init__(f"saved lots: chunk {digest} (lots from {number}) {problem}")
        self.digest, self.number, self.problem = digest, number, problem


def _load_chunk(load_chunk: ChunkLoader | None, digest: str, number: int) -> tuple[bytes, dict[str, Any]]:
    data = None if load_chunk is None else load_chunk(digest)
    if data is None:
        raise LotChunkUnusable(digest, number, "is not stored")
    if chunk_digest(data) != digest:
        raise LotChunkUnusable(digest, number, "does not match its digest")
    try:
        chunk = json.loads(data)
    except ValueError:
        chunk = None
    if not isinstance(chunk, dict) or chunk.get("number") != number or \
            len(chunk.get("lots", ())) != LOT_CHUNK_LOTS:
        raise LotChunkUnusable(digest, number, f"is not the chunk of lots from {number}")
    return data, chunk


def check_saved_chunks(fields: dict[str, Any], load_chunk: ChunkLoader, checked: dict[str, tuple[int, str]]) -> None:
    """Every chunk the saved queue `fields` needs to load (from its newest back to its head's) is stored and
    intact; raises LotChunkUnusable for the first that is not (ValueError for fields that do not fit).
    `checked` (digest -> (lot number, previous digest)) remembers chunks found intact, so that saved states
    sharing older chunks read each of them once."""
    number, head = _first_lot_of_tail(fields), fields["head"]
    digest = fields["newest_chunk"]
    while number > head - head % LOT_CHUNK_LOTS:
        number -= LOT_CHUNK_LOTS
        if digest not in checked:
            checked[digest] = (number, _load_chunk(load_chunk, digest, number)[1]["previous"])
        elif checked[digest][0] != number:
            raise LotChunkUnusable(digest, number, f"is not the chunk of lots from {number}")
        digest = checked[digest][1]


def _first_lot_of_tail(fields: dict[str, Any]) -> int:
    """The number of the saved tail's first lot, once the tail, the count and the head are seen to fit."""
    number, head = fields["created"] - len(fields["tail"]), fields["head"]
    if number % LOT_CHUNK_LOTS or len(fields["tail"]) >= LOT_CHUNK_LOTS or not 0 <= head <= fields["created"]:
        raise ValueError("saved lots: the tail, the count and the head do not fit together")
    return number
