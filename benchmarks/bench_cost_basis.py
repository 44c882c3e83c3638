"""GetCostBasis at scale, in process: the cost of the totals (a walk over every open lot, done once per listing),
of one page from the head and from the middle of the lots, and the size of a page against gRPC's 4 MiB limit.

    python benchmarks/bench_cost_basis.py --lots 1000000

The lots are appended to a state's FIFO queue directly (no log): what is measured is the view, not the fold.
"""

import argparse
import time

from ledger import limits
from ledger.lots import Lot
from ledger.state import CurrencyTotal, ReserveState, cost_totals, open_lots_page
from reserve_ledger.v1 import ledger_pb2 as pb


def state_with(lots: int) -> ReserveState:
    state = ReserveState()
    for n in range(lots):
        state.lots.append(Lot(f"pu-{n:012d}", "2026-11-02", "USD", f"{60000 + n % 5000}.25", 10_000 + n % 977))
    state.currencies["USD"] = CurrencyTotal(sum(10_000 + n % 977 for n in range(lots)), "1")
    assert state.lots.consume(5_000)
    return state


def timed(what: str, call):
    started = time.perf_counter()
    result = call()
    print(f"{what}: {time.perf_counter() - started:.3f} s")
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lots", type=int, default=1_000_000)
    lots = parser.parse_args().lots
    state = timed(f"append {lots} lots", lambda: state_with(lots))
    totals = timed("totals over every open lot (once per listing)", lambda: cost_totals(state))
    page = timed("a page of 1000 from the head", lambda: open_lots_page(state, 0, limits.PAGE_SIZE_MAX))
    timed("a page of 1000 from the middle", lambda: open_lots_page(state, lots // 2, limits.PAGE_SIZE_MAX))
    response = pb.GetCostBasisResponse(lots=[pb.Lot(**lot) for lot in page], lots_total=totals["lots_total"],
                                       currencies=[pb.CurrencyCost(**c) for c in totals["currencies"]])
    size = response.ByteSize()
    print(f"one page of {len(page)} lots: {size} bytes; all {totals['lots_total']} lots in one answer would be "
          f"about {size * totals['lots_total'] // len(page) / 2**20:.0f} MiB (gRPC's default limit: 4 MiB)")


if __name__ == "__main__":
    main()
