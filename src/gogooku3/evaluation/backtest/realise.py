"""Realised returns of held names over [entry, exit]: the label, or from the market's prices for names that are
suspended, delisted or unfilled (each counted by status); and the overlapping-cohort book built from them: the
price index on the book's rows, the daily P&L of the live cohorts and what the book trades each session."""

from __future__ import annotations

import datetime as dt
from typing import cast

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


# ---- the overlapping-cohort book: prices on the book's rows, daily P&L, trades ---------------------------------------
def price_index(
    codes: pl.Series, lo: int, hi: int, sessions: list[dt.date], market: Market | None, y1: pl.DataFrame | None
) -> pl.DataFrame:
    """k, Code, P for rows k in [lo, hi]: P(k) = the price at the start of row k, i.e. at the entry close of signal
    date sessions[k] (session k + entry_lag), carried forward over sessions without a price (a suspension; after a
    delisting it stays at the last close, so the name earns nothing). From the market's adjusted price index, or
    without one from the 1-day labels `y1` (Date, Code, y1: the return over row k), P(lo) = 1 and a missing label
    earns 0."""
    ks = pl.DataFrame({"k": list(range(lo, hi + 1))}, schema={"k": pl.Int64})
    grid = ks.join(pl.DataFrame({C.CODE: codes.unique()}), how="cross")
    if market is not None and market.has("px"):
        lag, n = market.entry_lag, len(sessions)
        at = pl.DataFrame(
            {
                "k": list(range(lo, hi + 1)),
                "_e": [sessions[k + lag] if k + lag < n else None for k in range(lo, hi + 1)],
            },
            schema={"k": pl.Int64, "_e": pl.Date},
        )
        px = market.rows.select(pl.col(C.DATE).alias("_e"), C.CODE, "px").drop_nulls("px")
        g = grid.join(at, on="k", how="left").join(px, on=["_e", C.CODE], how="left")
        return g.sort(C.CODE, "k").select("k", C.CODE, P=pl.col("px").forward_fill().over(C.CODE))
    if y1 is None:
        return grid.with_columns(P=pl.lit(1.0))
    pos = pl.DataFrame({C.DATE: sessions, "k": list(range(len(sessions)))}, schema={C.DATE: pl.Date, "k": pl.Int64})
    y = y1.join(pos, on=C.DATE).select("k", C.CODE, "y1")
    g = grid.join(y, on=["k", C.CODE], how="left").sort(C.CODE, "k")
    growth = (1.0 + pl.col("y1").fill_null(0.0)).cum_prod().shift(1, fill_value=1.0)
    return g.select("k", C.CODE, P=growth.over(C.CODE))


def _first_row(pos: pl.DataFrame, hi: int) -> int:
    """The first formation row of `pos` (hi + 1 when it is empty: no rows)."""
    return int(cast(int, pos["k"].min())) if pos.height else hi + 1


def _lots(pos: pl.DataFrame, prices: pl.DataFrame, h: int, share: float) -> pl.DataFrame:
    """pos (k, Code, side, w, r) of nonzero w + q = share·w / P(k) (units held; 0 without an entry price) and ratio
    = P(k + h) / P(k) (1 without prices)."""
    return (
        pos.filter(pl.col("w") != 0)
        .join(prices.rename({"P": "P0"}), on=["k", C.CODE], how="left")
        .join(prices.select(pl.col("k") - h, C.CODE, Px="P"), on=["k", C.CODE], how="left")
        .with_columns(
            q=pl.when(pl.col("P0") > 0).then(share * pl.col("w") / pl.col("P0")).otherwise(0.0),
            ratio=pl.when(pl.col("P0") > 0).then(pl.col("Px") / pl.col("P0")).otherwise(None).fill_null(1.0),
        )
    )


def _held(lots: pl.DataFrame, prices: pl.DataFrame, h: int, lo: int, hi: int) -> pl.DataFrame:
    """k, Code, side, Q (units the live cohorts hold on row k: q from its formation row for h rows), P, P1 = P(k+1)."""
    events = (
        pl.concat(
            [lots.select("k", C.CODE, "side", dq="q"), lots.select(pl.col("k") + h, C.CODE, "side", dq=-pl.col("q"))]
        )
        .group_by("k", C.CODE, "side")
        .agg(pl.col("dq").sum())
    )
    rows = pl.DataFrame({"k": list(range(lo, hi + 1))}, schema={"k": pl.Int64})
    return (
        rows.join(events.select(C.CODE, "side").unique(), how="cross")
        .join(events, on=["k", C.CODE, "side"], how="left")
        .sort(C.CODE, "side", "k")
        .with_columns(Q=pl.col("dq").fill_null(0.0).cum_sum().over(C.CODE, "side"))
        .filter(pl.col("Q") != 0)
        .join(prices, on=["k", C.CODE], how="left")
        .join(prices.select(pl.col("k") - 1, C.CODE, P1="P"), on=["k", C.CODE], how="left")
        .select("k", C.CODE, "side", "Q", "P", "P1")
    )


def cohort_pnl(pos: pl.DataFrame, prices: pl.DataFrame, h: int, share: float, hi: int) -> pl.DataFrame:
    """k, long, short, exposure per row k ≤ `hi` of the cohorts in `pos` (k = formation row, Code, side, w per unit
    of the cohort's capital, r = the realised return over its h sessions), each cohort `share` of the capital.

    Cohort c holds q = share·w / P(k_c) units of each name (buy-and-hold: its weights drift with prices) on rows
    k_c … k_c + h − 1 and earns Q·(P(k+1) − P(k)) a row; on its last row it also books share·w·((1 + r) − P(k_c + h)
    / P(k_c)), so that its P&L over the h rows is exactly share·w·r (the label, or the return carried to the next
    close of a name suspended at the exit). long = Σ over long positions, short = −Σ over short ones (gross = long −
    short); exposure = Σ_i |the book's value in name i| during the row (the gross held, drifted, names netted).
    """
    lots = _lots(pos, prices, h, share)
    lo = _first_row(pos, hi)
    held = _held(lots, prices, h, lo, hi).with_columns(
        pnl=(pl.col("Q") * (pl.col("P1") - pl.col("P"))).fill_null(0.0), value=pl.col("Q") * pl.col("P")
    )
    corr = lots.select(
        pl.col("k") + h - 1, C.CODE, "side", pnl=share * pl.col("w") * ((1.0 + pl.col("r")) - pl.col("ratio"))
    )
    cols = ["k", C.CODE, "side", "pnl"]
    both = pl.concat([held.select(cols), corr.select(cols)]).filter(pl.col("k") <= hi).sort("k", "side", C.CODE)
    out = both.group_by("k", maintain_order=True).agg(
        long=pl.col("pnl").filter(pl.col("side") == 1).sum(),
        short=-pl.col("pnl").filter(pl.col("side") == -1).sum(),
    )
    net = held.group_by("k", C.CODE).agg(pl.col("value").sum().abs()).sort("k", C.CODE)
    gross = net.group_by("k", maintain_order=True).agg(exposure=pl.col("value").fill_null(0.0).sum())
    rows = pl.DataFrame({"k": list(range(lo, hi + 1))}, schema={"k": pl.Int64})
    out = rows.join(out, on="k", how="left").join(gross, on="k", how="left")
    return out.with_columns(pl.col("long", "short", "exposure").fill_null(0.0))


def cohort_holdings(pos: pl.DataFrame, prices: pl.DataFrame, h: int, share: float, hi: int) -> pl.DataFrame:
    """k, Code, w: the book's weight in each name at the start of row k (after the row's trades): the live cohorts'
    share·w drifted with the name's price since each cohort's entry (Σ over cohorts, long and short netted)."""
    lo = _first_row(pos, hi)
    held = _held(_lots(pos, prices, h, share), prices, h, lo, hi)
    return (
        held.group_by("k", C.CODE)
        .agg(w=(pl.col("Q") * pl.col("P")).sum())
        .filter(pl.col("w").abs() > 1e-15)
        .sort("k", C.CODE)
    )


def cohort_trades(pos: pl.DataFrame, h: int, share: float, hi: int, drift: bool = True) -> pl.DataFrame:
    """k, Code, dw: what the book trades at the start of row k (the entry close of signal date k), netted per name:
    the cohort formed on k buys share·w; the cohort formed on k − h sells what it holds, share·w·(1 + r) (its weights
    drifted over its h sessions; `drift` False: share·w, the undrifted target, for comparison). Within a cohort
    nothing is traded (buy-and-hold). Rows past `hi` (the final liquidation) are not traded."""
    grow = (1.0 + pl.col("r")) if drift else pl.lit(1.0)
    legs = [
        pos.select("k", C.CODE, dw=share * pl.col("w")),
        pos.select(pl.col("k") + h, C.CODE, dw=-share * pl.col("w") * grow),
    ]
    out = pl.concat(legs).filter(pl.col("k") <= hi).sort("k", C.CODE)
    return out.group_by("k", C.CODE, maintain_order=True).agg(pl.col("dw").sum())
