"""The 8 stock-vs-market cross features (spec §1.4, `CrossMarketFeaturesGenerator(beta_lag=1)`).

beta is the rolling regression slope of the stock's 1-day return on the market return lagged by `beta_lag` of the
stock's own rows, as in the original; alphas use the same-day market return.
"""

from __future__ import annotations

import polars as pl

from gogooku3.core import columns as C
from gogooku3.features.common import Block, c, div, flag, per_code, roll_mean, roll_std


def _beta(r: pl.Expr, m: pl.Expr, w: int) -> pl.Expr:
    cov = roll_mean(r * m, w) - roll_mean(r, w) * roll_mean(m, w)
    var = roll_mean(m * m, w) - roll_mean(m, w).pow(2)
    return div(cov, var)


def cross(x: dict) -> Block:
    b = Block("cross")
    # a pair is used only where both returns exist, so mean(r), mean(m), mean(r·m) share one sample
    m_lag = per_code(c("mkt_ret_1d").shift(x["beta_lag"]))
    both = c("_r1").is_not_null() & m_lag.is_not_null()
    b.add("_bx_r", pl.when(both).then(c("_r1")))
    b.add("_bx_m", pl.when(both).then(m_lag))
    b.next_stage()
    w, wf = x["beta_window"], x["beta_fallback_window"]
    b.add("beta_60d", pl.coalesce(_beta(c("_bx_r"), c("_bx_m"), w), _beta(c("_bx_r"), c("_bx_m"), wf)))
    b.next_stage()
    b.add("alpha_1d", c("_r1") - c("beta_60d") * c("mkt_ret_1d"))
    b.add("alpha_5d", c("returns_5d") - c("beta_60d") * c("mkt_ret_5d"))
    b.add("rel_strength_5d", c("returns_5d") - c("mkt_ret_5d"))
    b.add("trend_align_mkt", flag(c("ma_gap_5_20").sign() == c("mkt_gap_5_20").sign()), is_flag=True)
    b.add("idio_vol_ratio", div(c(C.VOLATILITY_20D), c("mkt_vol_20d")))
    b.add("beta_stability_60d", 1.0 / (roll_std(c("beta_60d"), x["stability_window"]) + 1e-12))
    b.next_stage()
    b.add("alpha_vs_regime", c("alpha_1d") * c("mkt_bull_200"))
    return b


NEEDS = (
    "mkt_ret_1d",
    "mkt_ret_5d",
    "mkt_gap_5_20",
    "mkt_vol_20d",
    "mkt_bull_200",
    "returns_5d",
    "ma_gap_5_20",
    C.VOLATILITY_20D,
)
