"""Trading realism at the entry close: which rules apply (`realism_inputs`) and the book they leave (`execute`:
price limits on new entries, round lots)."""

from __future__ import annotations

import datetime as dt

import polars as pl

from gogooku3.core import columns as C
from gogooku3.core.scalars import as_float
from gogooku3.evaluation.backtest.config import BacktestConfig
from gogooku3.evaluation.backtest.market import Market, sessions_frame


def realism_inputs(market: Market | None, c: BacktestConfig, realistic: bool) -> dict:
    """Per rule: enabled (asked for), available (the data to apply it exists), applied, source."""
    src = market.sources if market is not None else {}

    def rule(enabled: bool, col_ok: bool, source: str | None) -> dict:
        return {
            "enabled": bool(realistic and enabled),
            "available": bool(col_ok),
            "applied": bool(realistic and enabled and col_ok),
            "source": source if col_ok else None,
        }

    has = lambda k: market is not None and market.has(k)
    return {
        "borrow": rule(c.borrow_only, has("borrowable"), src.get("borrow")),
        "price_limits": rule(c.price_limits, has("limit_up") and has("limit_down"), src.get("price_limits")),
        "round_lots": rule(c.lot_size > 0, has("close"), "Close at the entry session"),
        "capital": c.capital,
        "lot_size": c.lot_size,
    }


def execute(
    book: pl.DataFrame,
    el: pl.DataFrame,
    market: Market | None,
    c: BacktestConfig,
    realism: dict,
    reb: list[dt.date],
    h: int,
) -> pl.DataFrame:
    """The realistic rules that act at the entry close (price limits, round lots); counts go into `realism`."""
    lim, lots = realism["price_limits"], realism["round_lots"]
    lim.update(skipped_long=0, skipped_short=0)
    lots.update(skipped=0)
    if not (lim["applied"] or lots["applied"]):
        return book
    assert market is not None  # a rule is applied only where the market has its column (realism_inputs)
    ex = sessions_frame(market, reb, h).select(C.DATE, "e")
    cols = [k for k in ("close", "limit_up", "limit_down") if market.has(k)]
    at_e = market.rows.select(pl.col(C.DATE).alias("e"), C.CODE, *cols)
    b = book.join(ex, on=C.DATE, how="left").join(at_e, on=["e", C.CODE], how="left")
    if lim["applied"]:
        limited = ((pl.col("side") == 1) & pl.col("limit_up").fill_null(False)) | (
            (pl.col("side") == -1) & pl.col("limit_down").fill_null(False)
        )
        b = _new_entry_skips(b.with_columns(limited=limited), reb)
        skipped = b.filter(~pl.col("held"))
        lim.update(skipped_long=int((skipped["side"] == 1).sum()), skipped_short=int((skipped["side"] == -1).sum()))
        b = b.filter(pl.col("held")).drop("limited", "held")
    if lots["applied"]:
        lot_value = pl.col("close") * c.lot_size
        shares = (pl.col("w").abs() * c.capital / lot_value).floor() * c.lot_size
        b = b.with_columns(shares=shares)
        # no entry close: left as it is (the name is unfilled when realised); one lot above the weight: skipped
        too_big = pl.col("close").is_not_null() & (pl.col("shares") < c.lot_size)
        lots["skipped"] = int(b.filter(too_big).height)
        b = b.filter(~too_big).with_columns(
            w=pl.when(pl.col("close").is_not_null())
            .then(pl.col("side").cast(pl.Float64) * pl.col("shares") * pl.col("close") / c.capital)
            .otherwise(pl.col("w"))
        )
        lots["avg_gross_invested"] = as_float(b.group_by(C.DATE).agg(g=pl.col("w").abs().sum())["g"].mean() or 0.0)
    return b.select(C.DATE, C.CODE, "side", "w")


def _new_entry_skips(book: pl.DataFrame, reb: list[dt.date]) -> pl.DataFrame:
    """book (Date, Code, side, w, limited) -> the same with `held`: False for a new entry whose order hit the limit.

    A name is held on rebalance k when it is in the book on k and either its order filled (not limited) or it was
    held on the same side at k − 1: within each run of consecutive rebalances on one side, held from the first
    unlimited one on.
    """
    k = pl.DataFrame({C.DATE: reb, "k": list(range(len(reb)))}, schema={C.DATE: pl.Date, "k": pl.Int64})
    b = book.join(k, on=C.DATE).sort(C.CODE, "k")
    brk = ((pl.col("k") - pl.col("k").shift(1) != 1) | (pl.col("side") != pl.col("side").shift(1))).fill_null(True)
    b = b.with_columns(run=brk.cum_sum().over(C.CODE))
    held = (~pl.col("limited")).cast(pl.Int8).cum_max().over(C.CODE, "run") == 1
    return b.with_columns(held=held).drop("k", "run")
