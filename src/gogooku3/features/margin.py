"""Weekly margin interest per stock (spec §1.4 optional margin block): effective from the trading session after
PubDate (when PubDate is missing: `pub_lag_sessions` sessions after the week's Date), attached as of by Code.

Week-over-week differences and 52-week z-scores count the stock's weekly rows in publication order.
"""

from __future__ import annotations

import polars as pl

from gogooku3.core import columns as C
from gogooku3.core.calendar import TradingCalendar
from gogooku3.features.common import (
    EPS,
    Block,
    c,
    div,
    flag,
    missing,
    narrow,
    roll_mean,
)

WEEKLY = (
    "margin_long_tot",
    "margin_short_tot",
    "margin_total_gross",
    "margin_credit_ratio",
    "margin_imbalance",
    "margin_d_long_wow",
    "margin_d_short_wow",
    "margin_d_net_wow",
    "margin_d_ratio_wow",
    "margin_long_z52",
    "margin_short_z52",
    "margin_gross_z52",
    "margin_ratio_z52",
)


def _z(x: str, w: int) -> pl.Expr:
    return ((c(x) - c(x).rolling_mean(w, min_samples=w)) / (c(x).rolling_std(w, min_samples=w) + EPS)).over(C.CODE)


def weekly_table(mi: pl.DataFrame, cal: TradingCalendar, m: dict) -> pl.DataFrame:
    eff = (
        cal.next_after(mi["PubDate"])
        if "PubDate" in mi.columns
        else pl.Series("PubDate", [None] * mi.height, dtype=pl.Date)
    )
    fallback = cal.shift(cal.next_on_or_after(mi[C.DATE]), m["pub_lag_sessions"])
    df = (
        mi.with_columns(pl.coalesce(eff, fallback).alias("_eff"))
        .filter(c("_eff").is_not_null())
        .sort(C.CODE, "_eff", C.DATE)
        .unique([C.CODE, "_eff"], keep="last", maintain_order=True)
    )
    L, S = c("LongVol"), c("ShrtVol")
    df = df.with_columns(
        L.alias("margin_long_tot"),
        S.alias("margin_short_tot"),
        (L + S).alias("margin_total_gross"),
        div(L, S).alias("margin_credit_ratio"),
        div(L - S, L + S).alias("margin_imbalance"),
    )
    d = lambda e: (e - e.shift(1)).over(C.CODE)
    w = m["z_window"]
    df = df.with_columns(
        d(L).alias("margin_d_long_wow"),
        d(S).alias("margin_d_short_wow"),
        d(L - S).alias("margin_d_net_wow"),
        d(c("margin_credit_ratio")).alias("margin_d_ratio_wow"),
        _z("margin_long_tot", w).alias("margin_long_z52"),
        _z("margin_short_tot", w).alias("margin_short_z52"),
        _z("margin_total_gross", w).alias("margin_gross_z52"),
        _z("margin_credit_ratio", w).alias("margin_ratio_z52"),
        (c("IssType").cast(pl.Utf8) if "IssType" in df.columns else pl.lit(None, pl.Utf8)).alias("_iss"),
    )
    return narrow(df.select(C.CODE, c("_eff").alias("_mg_eff"), *WEEKLY, "_iss"), WEEKLY).sort(C.CODE, "_mg_eff")


def attach(
    lf: pl.LazyFrame, mi: pl.DataFrame | None, cal: TradingCalendar, m: dict, avail: set[str]
) -> tuple[pl.LazyFrame, Block]:
    b = Block("margin")
    if mi is None:
        b.skip("no margin_interest table")
        return lf, b
    gone = missing(mi.columns, "LongVol", "ShrtVol") + missing(avail, C.VOLUME)
    if gone:
        b.skip(f"margin needs {', '.join(gone)}")
        return lf, b
    lf = lf.join_asof(
        weekly_table(mi, cal, m).lazy(),
        left_on=C.DATE,
        right_on="_mg_eff",
        by=C.CODE,
        strategy="backward",
        check_sortedness=False,
    )
    # in the day's share basis, like the (raw, unadjusted) margin balances it scales
    b.add("_adv", roll_mean(c(C.VOLUME), m["adv_window"]) * c("_kv"))
    b.next_stage()
    for n in WEEKLY:
        b.add(n, c(n))
    for x in ("long", "short"):
        b.add(f"margin_{x}_to_adv20", div(c(f"margin_{x}_tot"), c("_adv")))
        b.add(f"margin_d_{x}_to_adv20", div(c(f"margin_d_{x}_wow"), c("_adv")))
    days = (c(C.DATE) - c("_mg_eff")).dt.total_days()
    b.add("margin_impulse", flag(c(C.DATE) == c("_mg_eff")), is_flag=True)
    b.add("margin_days_since", days.cast(pl.Float64))
    b.add("margin_issue_type", c("_iss").cast(pl.Float64, strict=False))
    b.add("is_borrowable", flag(c("_iss") == "2"), is_flag=True)
    b.add("_margin_fresh", days <= m["stale_days"])
    return lf, b
