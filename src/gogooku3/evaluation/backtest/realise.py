"""Realised returns of held names over [entry, exit]: the label, or from the market's prices for names that are
suspended, delisted or unfilled (each counted by status)."""

from __future__ import annotations

import polars as pl

from gogooku3.core import columns as C
from gogooku3.evaluation.backtest.market import Market, sessions_frame

STATUSES = ("normal", "suspended", "delisted", "unfilled", "unpriced")


def realise(rows: pl.DataFrame, market: Market | None, h: int) -> pl.DataFrame:
    """rows (Date, Code, y, ...) + r (realised return over [entry, exit]) and status (see the package docstring)."""
    if market is None or not market.has("px"):
        return rows.with_columns(
            r=pl.col("y").fill_null(0.0),
            status=pl.when(pl.col("y").is_not_null()).then(pl.lit("normal")).otherwise(pl.lit("unpriced")),
        )
    ex = sessions_frame(market, rows[C.DATE].unique().to_list(), h)
    px = market.rows.select(C.DATE, C.CODE, "px").drop_nulls("px").sort(C.DATE)
    d = rows.join(ex, on=C.DATE, how="left").join(px.rename({C.DATE: "e", "px": "px_e"}), on=["e", C.CODE], how="left")
    d = d.with_row_index("_i").sort("x")
    nxt = d.join_asof(
        px.rename({"px": "px_next", C.DATE: "_dn"}),
        left_on="x",
        right_on="_dn",
        by=C.CODE,
        strategy="forward",
        check_sortedness=False,
    )
    last = d.join_asof(
        px.rename({"px": "px_last", C.DATE: "_dl"}),
        left_on="x",
        right_on="_dl",
        by=C.CODE,
        strategy="backward",
        allow_exact_matches=False,
        check_sortedness=False,
    )
    d = nxt.join(last.select("_i", "px_last", "_dl"), on="_i").sort("_i")
    status = (
        pl.when(pl.col("y").is_not_null())
        .then(pl.lit("normal"))
        .when(pl.col("x").is_null())
        .then(pl.lit("unpriced"))  # exit beyond the calendar: unknown
        .when(pl.col("px_e").is_null())
        .then(pl.lit("unfilled"))
        .when(pl.col("px_next").is_not_null())
        .then(pl.lit("suspended"))
        .otherwise(pl.lit("delisted"))
    )
    r = (
        pl.when(pl.col("status") == "normal")
        .then(pl.col("y"))
        .when(pl.col("status") == "suspended")
        .then(pl.col("px_next") / pl.col("px_e") - 1.0)
        .when(pl.col("status") == "delisted")
        .then(pl.col("px_last") / pl.col("px_e") - 1.0)
        .otherwise(0.0)
    )
    return d.with_columns(status=status).with_columns(r=r).drop("_i", "px_next", "px_last", "_dn", "_dl", "px_e")
