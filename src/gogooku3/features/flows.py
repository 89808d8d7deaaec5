"""Investor-type flows (spec §1.4, 13 features): weekly rows per market Section, effective from the trading session
after their publication date, expanded to every session and joined to each stock on (Section, Date).

Weekly z-scores count rows (≈ weeks) within a Section in publication order, so only published weeks enter them.
"""

from __future__ import annotations

import polars as pl

from gogooku3.core import columns as C
from gogooku3.core.calendar import TradingCalendar
from gogooku3.features.common import EPS, Block, c, div, flag, lookup, missing, narrow

BAL6 = ("Frgn", "Ind", "TrstBnk", "InvTr", "Prop", "Brk")
NEEDS = ("FrgnBal", "FrgnTot", "IndBal", "IndTot", "TotTot", *(f"{i}Bal" for i in BAL6))
FEATURES = (
    "flow_foreign_net_ratio",
    "flow_individual_net_ratio",
    "foreign_share_activity",
    "breadth_pos",
    "flow_foreign_net_z",
    "flow_individual_net_z",
    "flow_activity_z",
    "flow_activity_ratio",
    "flow_smart_idx",
    "flow_smart_mom4",
    "flow_shock_flag",
    "flow_impulse",
    "flow_days_since",
)


def _z(x: str, w: int) -> pl.Expr:
    return ((c(x) - c(x).rolling_mean(w, min_samples=w)) / (c(x).rolling_std(w, min_samples=w) + EPS)).over(C.SECTION)


def weekly_features(inv: pl.DataFrame, cal: TradingCalendar, f: dict) -> pl.DataFrame:
    """One row per (Section, effective_start) with the weekly flow features."""
    w, mom = f["z_window"], f["mom_window"]
    sort = [x for x in (C.SECTION, "PubDate", "EnDate") if x in inv.columns]
    df = (
        inv.sort(sort)
        .with_columns(cal.next_after(inv.sort(sort)["PubDate"]).alias("_eff"))
        .filter(c("_eff").is_not_null())
        .unique([C.SECTION, "_eff"], keep="last", maintain_order=True)
    )
    df = df.with_columns(
        div(c("FrgnBal"), c("FrgnTot")).alias("flow_foreign_net_ratio"),
        div(c("IndBal"), c("IndTot")).alias("flow_individual_net_ratio"),
        div(c("FrgnTot"), c("TotTot")).alias("foreign_share_activity"),
        pl.mean_horizontal([(c(f"{i}Bal") > 0).cast(pl.Float64) for i in BAL6]).alias("breadth_pos"),
        _z("FrgnBal", w).alias("flow_foreign_net_z"),
        _z("IndBal", w).alias("flow_individual_net_z"),
        _z("TotTot", w).alias("flow_activity_z"),
        div(c("TotTot"), c("TotTot").rolling_mean(w, min_samples=w).over(C.SECTION)).alias("flow_activity_ratio"),
    ).with_columns((c("flow_foreign_net_z") - c("flow_individual_net_z")).alias("flow_smart_idx"))
    df = df.with_columns(
        (c("flow_smart_idx") - c("flow_smart_idx").rolling_mean(mom, min_samples=mom).over(C.SECTION)).alias(
            "flow_smart_mom4"
        ),
        (c("flow_smart_idx").abs() >= f["shock_z"]).alias("_shock"),
    )
    return narrow(df.select(C.SECTION, "_eff", *FEATURES[:10], "_shock"), FEATURES[:10])


def attach(lf: pl.LazyFrame, inv: pl.DataFrame | None, cal: TradingCalendar, f: dict) -> tuple[pl.LazyFrame, Block]:
    b = Block("flows")
    if inv is None:
        b.skip("no investor_types table")
        return lf, b
    gone = missing(inv.columns, *NEEDS)
    if gone:
        b.skip(f"investor_types lacks {', '.join(gone)}")
        return lf, b
    wk = weekly_features(inv, cal, f)
    days = (
        pl.DataFrame({C.SECTION: wk[C.SECTION].unique().sort()})
        .join(pl.DataFrame({C.DATE: cal.sessions}), how="cross")
        .sort(C.SECTION, C.DATE)
    )
    daily = days.join_asof(
        wk.sort(C.SECTION, "_eff"),
        left_on=C.DATE,
        right_on="_eff",
        by=C.SECTION,
        strategy="backward",
        check_sortedness=False,
    ).filter(c("_eff").is_not_null())
    daily = daily.rename({"_eff": "_flow_eff", "_shock": "_flow_shock"})
    # one integer key per (Section, Date): the section's number · 10⁶ + the date's day number
    secs = {s: i for i, s in enumerate(wk[C.SECTION].unique().sort().to_list())}

    def key(sec: pl.Expr) -> pl.Expr:
        return sec.replace_strict(secs, default=None, return_dtype=pl.Int64) * 1_000_000 + c(C.DATE).cast(pl.Int64)

    daily = daily.with_columns(key(c(C.SECTION)).alias("_flow_key"))
    lf = lookup(
        lf,
        daily,
        key(c(C.SECTION)),
        "_flow_key",
        [x for x in daily.columns if x not in (C.SECTION, C.DATE, "_flow_key")],
    )
    days_since = (c(C.DATE) - c("_flow_eff")).dt.total_days()
    for n in FEATURES[:10]:
        b.add(n, c(n))
    b.add("flow_shock_flag", flag(c("_flow_shock")), is_flag=True)
    b.add("flow_impulse", flag(c(C.DATE) == c("_flow_eff")), is_flag=True)
    b.add("flow_days_since", days_since.cast(pl.Float64))
    b.add("_flow_fresh", days_since <= f["stale_days"])
    return lf, b
