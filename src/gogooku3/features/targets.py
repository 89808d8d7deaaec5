"""Labels: target_{h}d(t) = AdjC(t+lag+h) / AdjC(t+lag) − 1, per stock, on the trading calendar.

t+k means k trading sessions after t on the calendar (not k rows of the stock): when the stock has no row on session
t+lag or t+lag+h (suspension, delisting, or past the data's end) the label is null. Labels are never filled.
"""

from __future__ import annotations

import polars as pl

from gogooku3.calendar import TradingCalendar
from gogooku3.features.manifest import target_name


def session_index(cal: TradingCalendar) -> pl.LazyFrame:
    return pl.DataFrame({"Date": cal.sessions, "_sidx": pl.int_range(len(cal), dtype=pl.Int64, eager=True)}).lazy()


def add_targets(lf: pl.LazyFrame, cal: TradingCalendar, horizons: list[int], entry_lag: int) -> pl.LazyFrame:
    """Append Float32 `target_{h}d` columns to a frame with Code, Date, Close (adjusted) sorted by (Code, Date)."""
    idx = session_index(cal)
    px = lf.select("Code", "Date", "Close").join(idx, on="Date", how="inner")
    lf = lf.join(idx, on="Date", how="left", maintain_order="left")
    for k in sorted({entry_lag, *(entry_lag + h for h in horizons)}):
        ahead = px.select("Code", (pl.col("_sidx") - k).alias("_sidx"), pl.col("Close").alias(f"_px{k}"))
        lf = lf.join(ahead, on=["Code", "_sidx"], how="left", maintain_order="left")
    return lf.with_columns(
        (pl.col(f"_px{entry_lag + h}") / pl.col(f"_px{entry_lag}") - 1.0).cast(pl.Float32).alias(target_name(h))
        for h in horizons
    ).drop("_sidx", *(f"_px{k}" for k in sorted({entry_lag, *(entry_lag + h for h in horizons)})))
