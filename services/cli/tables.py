"""Plain-text tables for the terminal (balances, holdings, cost basis)."""

from ledger.anchors import Anchor
from decimal import ROUND_HALF_EVEN, Decimal

from ledger.currencies import ISO_4217_MINOR_UNITS
from ledger.limits import SATS_PER_BTC


def btc(sats: int) -> str:
    sign = "-" if sats < 0 else ""
    whole, fraction = divmod(abs(sats), SATS_PER_BTC)
    return f"{sign}{whole:,}.{fraction:08d}"


def fiat(amount: str, currency_code: str) -> str:
    """A decimal fiat amount shown with its currency's decimals (ISO 4217 minor units) and thousands separators."""
    decimals = ISO_4217_MINOR_UNITS.get(currency_code, 2)
    value = Decimal(amount).quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_EVEN)
    return f"{value:,.{decimals}f}"


def sats(amount_sats: int) -> str:
    return f"{amount_sats:,}"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows)]
    line = "-+-".join("-" * w for w in widths)
    out = [line, " | ".join(h.ljust(w) for h, w in zip(headers, widths)), line]
    for row in rows:
        out.append(" | ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
    out.append(line)
    return "\n".join(out)


def balances_table(balances: list[dict]) -> str:
    return table(["account", "kind", "balance BTC", "held BTC", "available BTC"],
                 [[b["account_id"], b["kind"], btc(b["balance_sats"]), btc(b["held_sats"]), btc(b["available_sats"])]
                  for b in balances])


def holdings_table(holdings: dict) -> str:
    rows = [[c["custodian"], str(c["wallet_count"]), btc(c["balance_sats"]), btc(c["held_sats"])]
            for c in holdings["custodians"]]
    rows.append(["TOTAL", "", btc(holdings["total_sats"]), ""])
    return table(["custodian", "wallets", "holdings BTC", "held BTC"], rows)


def cost_table(cost: dict) -> str:
    return table(["currency", "bought BTC", "fiat paid", "average price/BTC", "held BTC (FIFO)", "FIFO cost"],
                 [[c["currency_code"], btc(c["quantity_sats"]), fiat(c["fiat_total"], c["currency_code"]),
                   fiat(c["average_price_per_btc"], c["currency_code"]), btc(c["remaining_sats"]),
                   fiat(c["remaining_cost_fifo"], c["currency_code"])] for c in cost["currencies"]])


def anchors_table(anchors: list[Anchor]) -> str:
    return table(["#", "tree size", "txid", "state", "confirmations", "block height", "fee sats", "vbytes"],
                 [[str(a.anchor_id), str(a.tree_size), a.txid[:16] + "…", a.state, str(a.confirmations),
                   "" if a.block_height is None else str(a.block_height), sats(a.fee_sats), str(a.vsize)]
                  for a in anchors])
