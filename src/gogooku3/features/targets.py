"""Labels: target_{h}d(t) = AdjC(t+lag+h) / AdjC(t+lag) − 1, per stock, on the trading calendar.

t+k means k trading sessions after t on the calendar (not k rows of the stock): when the stock has no row on session
t+lag or t+lag+h (suspension, delisting, or past the data's end) the label is null. Labels are never filled.

The look-up is a binary search on one sorted integer key per row (stock number, session number), so no hash join
is needed and a label can only ever come from the same stock's own row.
"""

from __future__ import annotations

import polars as pl

from gogooku3.core import columns as C
from gogooku3.core.calendar import TradingCalendar


def row_key(cal: TradingCalendar, reach: int) -> pl.Expr:
    """Strictly increasing Int64 per (Code, Date)-sorted row: 2·(stock·M + session) on sessions, odd off-session
    (those rows never get or give a label). M leaves room for look-ups up to `reach` sessions past the calendar."""
    sessions = cal.sessions
    n = len(sessions)
    pos = pl.lit(sessions).search_sorted(pl.col(C.DATE)).cast(pl.Int64)
    on_session = pl.lit(sessions).gather(pos.clip(0, max(n - 1, 0))) == pl.col(C.DATE)
    stock = (pl.col(C.CODE) != pl.col(C.CODE).shift(1)).fill_null(True).cum_sum().cast(pl.Int64)
    return 2 * (stock * (n + 1 + reach) + pos) - pl.when(on_session).then(0).otherwise(1)


def add_targets(lf: pl.LazyFrame, cal: TradingCalendar, horizons: list[int], entry_lag: int) -> pl.LazyFrame:
    """Append Float32 `target_{h}d` columns to a frame with Code, Date, Close (adjusted) sorted by (Code, Date)."""
    ks = sorted({entry_lag, *(entry_lag + h for h in horizons)})
    lf = lf.with_columns(row_key(cal, max(ks)).alias("_tkey"))
    key = pl.col("_tkey")
    # the row of session t+k of the same stock, if any: binary search (a stage of its own, so it runs once per k)
    lf = lf.with_columns(key.search_sorted(key + 2 * k).clip(upper_bound=pl.len() - 1).alias(f"_at{k}") for k in ks)

    def ahead(k: int) -> pl.Expr:
        at = pl.col(f"_at{k}")
        return pl.when((key.gather(at) == key + 2 * k) & (key % 2 == 0)).then(pl.col(C.CLOSE).gather(at))

    return lf.with_columns(
        (ahead(entry_lag + h) / ahead(entry_lag) - 1.0).cast(pl.Float32).alias(C.target(h)) for h in horizons
    ).drop("_tkey", *(f"_at{k}" for k in ks))
