"""Trading and what it costs: the weight changes between rebalances (turnover) and both cost models (flat,
spread_impact)."""

from __future__ import annotations

import datetime as dt

import polars as pl

from gogooku3.core import columns as C
from gogooku3.evaluation.backtest.config import BacktestConfig


def weight_changes(w: pl.DataFrame, reb: list[dt.date]) -> pl.DataFrame:
    """Date, Code, dw = w_k − w_{k−1} over the union of names of consecutive rebalances k (the first: the build)."""
    days = pl.DataFrame({C.DATE: reb, "k": list(range(len(reb)))}, schema={C.DATE: pl.Date, "k": pl.Int64})
    wk = w.join(days, on=C.DATE).select("k", C.CODE, "w")
    prev = wk.with_columns(k=pl.col("k") + 1).rename({"w": "w_prev"})
    j = wk.join(prev, on=["k", C.CODE], how="full", coalesce=True).filter(pl.col("k") < days.height)
    return j.join(days, on="k").select(C.DATE, C.CODE, dw=pl.col("w").fill_null(0.0) - pl.col("w_prev").fill_null(0.0))


def cost_flat(c: BacktestConfig) -> pl.Expr:
    """The flat cost per rebalance on the daily frame's ``turnover``: cost_bps · 1e-4 · turnover."""
    return pl.col("turnover") * c.cost_bps * 1e-4


def cost_spread_impact(dw: pl.DataFrame, el: pl.DataFrame, c: BacktestConfig) -> tuple[pl.DataFrame, str]:
    """Date, cost_spread_impact per rebalance, and what it charged ("commission+spread+impact" or without impact)."""
    fixed = (c.commission_bps + c.half_spread_bps) * 1e-4
    if "adv" not in el.columns:
        out = dw.group_by(C.DATE).agg(cost_spread_impact=pl.col("dw").abs().sum() * fixed)
        return out, "commission + half-spread (no ADV for the impact)"
    info = el.select(C.DATE, C.CODE, "adv", *(["vol"] if "vol" in el.columns else []))
    d = dw.join(info, on=[C.DATE, C.CODE], how="left")
    med = lambda col: pl.col(col).fill_null(pl.col(col).median().over(C.DATE))
    vol = med("vol").fill_null(0.02) if "vol" in el.columns else pl.lit(0.02)
    adv = med("adv")
    traded = pl.col("dw").abs()
    impact = c.impact_coef * vol * (traded * c.capital / adv).sqrt()
    cost = traded * (fixed + pl.when(adv > 0).then(impact).otherwise(0.0))
    out = d.group_by(C.DATE).agg(cost_spread_impact=cost.sum())
    how = (
        "commission + half-spread + sqrt impact (σ "
        + ("from " + c.vol_column if "vol" in el.columns else "0.02 a day")
        + ")"
    )
    return out, how
