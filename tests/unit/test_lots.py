"""The FIFO lot queue (ledger/lots.py) against a plain list of [lot, remaining] consumed front to back: the same
open lots and remaining sats after any sequence, only a chunk's worth of consumed lots kept in memory, and a saved
queue that reloads exactly from its chunks and refuses a chunk that is missing or altered."""

import random

import pytest

from ledger import lots as lots_module
from ledger.lots import Lot, LotQueue

CHUNK_LOTS = 4


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(lots_module, "LOT_CHUNK_LOTS", CHUNK_LOTS)


def random_run(seed: int, steps: int = 400) -> tuple[LotQueue, list[list]]:
    """The same random appends and consumptions on the queue and on the naive list."""
    rng, queue, naive = random.Random(seed), LotQueue(), []
    for n in range(steps):
        left_sats = sum(remaining for _, remaining in naive)
        if left_sats and rng.random() < 0.45:
            amount_sats = rng.randint(1, left_sats)
            assert queue.consume(amount_sats)
            for entry in naive:
                taken = min(entry[1], amount_sats)
                entry[1] -= taken
                amount_sats -= taken
        else:
            lot = Lot(f"pu-{n}", "2026-11-02", rng.choice(["USD", "EUR"]), str(rng.randint(1, 90000)),
                      rng.randint(1, 5000))
            queue.append(lot)
            naive.append([lot, lot.quantity_sats])
    return queue, naive


def open_of(naive: list[list]) -> list[tuple[Lot, int]]:
    return [(lot, remaining) for lot, remaining in naive if remaining]


@pytest.mark.parametrize("seed", range(8))
def test_the_queue_consumes_lots_first_in_first_out_like_a_plain_list(seed):
    """Every sequence of purchases and disposals leaves the same open lots, with the same remaining sats, as
    consuming a plain list front to back; fully consumed lots leave memory but for the head's chunk."""
    queue, naive = random_run(seed)
    assert list(queue.open_lots()) == open_of(naive)
    assert queue.created == len(naive)
    held = len(queue.full) * CHUNK_LOTS + len(queue.tail)
    assert held <= len(open_of(naive)) + CHUNK_LOTS


def test_taking_more_than_the_lots_hold_is_refused():
    """A disposal beyond every remaining lot reports failure instead of leaving a negative lot."""
    queue = LotQueue()
    queue.append(Lot("pu-0", "2026-11-02", "USD", "1", 10))
    assert queue.consume(4) and not queue.consume(7)


@pytest.mark.parametrize("seed", range(4))
def test_a_saved_queue_reloads_exactly_from_its_chunks(seed):
    """A queue rebuilt from its saved fields and stored chunks equals the original: same saved fields, same
    open lots, and it goes on identically."""
    queue, _ = random_run(seed)
    stored = dict(queue.full_chunks())
    loaded = LotQueue.from_fields(queue.to_fields(), stored.get)
    assert loaded.to_fields() == queue.to_fields()
    assert list(loaded.open_lots()) == list(queue.open_lots())
    for twin in (queue, loaded):
        for n in range(3 * CHUNK_LOTS):
            twin.append(Lot(f"more-{n}", "2026-11-03", "USD", "5", 7))
        assert twin.consume(sum(remaining for _, remaining in twin.open_lots()) - 1)
    assert loaded.to_fields() == queue.to_fields()


def test_the_saved_fields_do_not_grow_with_the_number_of_lots():
    """Saved fields hold at most one chunk of lots, however many lots were ever created."""
    queue = LotQueue()
    for n in range(50 * CHUNK_LOTS + 1):
        queue.append(Lot(f"pu-{n}", "2026-11-02", "USD", "60000", 10))
    fields = queue.to_fields()
    assert len(fields["tail"]) < CHUNK_LOTS and fields["created"] == 50 * CHUNK_LOTS + 1


def test_a_missing_or_altered_chunk_is_refused_by_name():
    """Loading checks each chunk against the digest that names it: an altered or missing chunk is a ValueError,
    never a silently different lot."""
    queue = LotQueue()
    for n in range(3 * CHUNK_LOTS):
        queue.append(Lot(f"pu-{n}", "2026-11-02", "USD", "60000", 10))
    stored = dict(queue.full_chunks())
    digest = queue.newest_digest
    stored[digest] = stored[digest].replace(b"60000", b"60001", 1)
    with pytest.raises(ValueError, match="does not match its digest"):
        LotQueue.from_fields(queue.to_fields(), stored.get)
    with pytest.raises(ValueError, match="is not stored"):
        LotQueue.from_fields(queue.to_fields(), {}.get)


def test_cost_basis_equals_the_sum_over_every_open_lot_and_lists_only_as_many_as_asked(monkeypatch):
    """The FIFO remaining cost (summed per price, exactly) equals the per-lot sum of price x remaining sats, and
    `lots_max` shortens the listed lots without changing the totals or the count."""
    from decimal import Decimal, localcontext

    from ledger.state import CurrencyTotal, ReserveState, cost_basis
    queue, naive = random_run(seed=3)
    state = ReserveState()
    state.lots = queue
    for code in ("USD", "EUR"):
        state.currencies[code] = CurrencyTotal(sum(lot.quantity_sats for lot, _ in naive if lot.currency_code == code),
                                               "1234.5")
    full, short = cost_basis(state), cost_basis(state, lots_max=5)
    with localcontext() as ctx:
        ctx.prec = 60
        for entry in full["currencies"]:
            expected = sum(Decimal(lot.price_per_btc) * left / 100_000_000 for lot, left in open_of(naive)
                           if lot.currency_code == entry["currency_code"])
            assert entry["remaining_cost_fifo"] == format(Decimal(expected).quantize(Decimal("0.00000001")), "f")
    assert full["lots_total"] == short["lots_total"] == len(full["lots"]) == len(open_of(naive))
    assert short["lots"] == full["lots"][:5] and short["currencies"] == full["currencies"]


@pytest.mark.parametrize("seed", range(6))
def test_open_lots_from_any_lot_number_is_the_tail_of_the_whole_listing(seed):
    """open_lots(number_min), what a cost-basis page reads, lists exactly the open lots numbered number_min on
    (the whole listing when number_min is at or before the head), for every number in and around the queue."""
    queue, naive = random_run(seed)
    numbered = [(number, lot, remaining) for number, (lot, remaining) in enumerate(naive) if remaining]
    for number_min in range(queue.created + 2):
        expected = [(lot, remaining) for number, lot, remaining in numbered if number >= number_min]
        assert list(queue.open_lots(number_min)) == expected, number_min


def test_check_saved_chunks_names_a_missing_or_altered_chunk_and_reads_each_chunk_once():
    """The check walks the chunks loading needs (newest back to the head's): a missing or altered one raises
    LotChunkUnusable naming its full digest and first lot; chunks found intact are not read again."""
    from ledger.lots import LotChunkUnusable, check_saved_chunks
    queue = LotQueue()
    for n in range(3 * CHUNK_LOTS + 1):
        queue.append(Lot(f"pu-{n}", "2026-11-02", "USD", "60000", 10))
    assert queue.consume(10 * CHUNK_LOTS + 5)   # the head lies in the second chunk: the first is not needed
    stored = dict(queue.full_chunks())
    reads = []

    def load(digest):
        reads.append(digest)
        return stored.get(digest)

    checked = {}
    check_saved_chunks(queue.to_fields(), load, checked)
    check_saved_chunks(queue.to_fields(), load, checked)
    assert len(reads) == len(set(reads)) == 2
    newest = queue.newest_digest
    with pytest.raises(LotChunkUnusable, match=f"chunk {newest} \\(lots from {2 * CHUNK_LOTS}\\) is not stored"):
        check_saved_chunks(queue.to_fields(), {}.get, {})
    older = checked[newest][1]
    stored[older] = stored[older].replace(b"60000", b"60001", 1)
    with pytest.raises(LotChunkUnusable, match=f"chunk {older} \\(lots from {CHUNK_LOTS}\\) does not match"):
        check_saved_chunks(queue.to_fields(), stored.get, {})
