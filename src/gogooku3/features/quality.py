"""Quality features (group `quality`; the original's `QualityFinancialFeaturesGenerator`), a builder block.

Read from earlier blocks: `returns_1d`, `returns_{h}d` (h in `sharpe_horizons`, else Σ of h daily returns) and
`dollar_volume`. With r = returns_1d, w = `vol_window`, ε = 1e-12, z_d(x) = (x − mean_d x) / (std_d x + ε) over the
day's cross-section and vol = std_w(r) over the stock's own trailing w rows (at least w observations):

- risk_adjusted:  `sharpe_{h}d` = returns_{h}d / (vol·√h + ε)
- smart_money:    `smart_money_index` = z_d(ln(dollar_volume / (mean_w(dollar_volume) + ε) + ε)) − z_d(|r|)
                  (heavy trading without a price move), `smi_delta_5d` = smart_money_index − its value 5 rows back
- outlier_flags:  `ret_outlier_up_flag` = z_d(r) > sigma_threshold, `ret_outlier_down_flag` = z_d(r) < −sigma_threshold
- cs_quantiles:   `vol_cs_quantile` = rank_d(vol) / count_d(vol) in (0, 1] (average ranks),
                  `high_vol_flag` = quantile ≥ high_quantile, `low_vol_flag` = quantile ≤ low_quantile
- excess_returns: `excess_ret_1d` = r − mean_d(r), `excess_ret_5d` = its sum over the stock's last 5 rows

Every value is point in time: per-stock windows are trailing (`per_code`) and per-day quantities use only that day's
cross-section. Flags are null where their input is null (the first row of a stock, the first w − 1 rows for the
volatility flags). Without `dollar_volume` smart_money is skipped (noted in the block's `skipped`).

The earlier Polars port (step 2 of the safe pipeline) nested the per-stock mean of dollar_volume inside the per-day
z-score, so Polars evaluated it within each day's rows (one per stock): smart_money_index and smi_delta_5d were
always null. Here the volume surprise is a column of its own, computed before the day's z-score.
"""

from __future__ import annotations

import math

import polars as pl

from gogooku3.core import columns as C
from gogooku3.features.common import EPS, Block, c, per_code

GROUP = "quality"
NEEDS = (C.RETURNS_1D,)


def _z_day(x: pl.Expr) -> pl.Expr:
    return (x - x.mean().over(C.DATE)) / (x.std().over(C.DATE) + EPS)


def quality(avail: set[str], q: dict) -> Block:
    """The quality block from the `features.quality` settings; `avail`: the columns earlier blocks provide."""
    b = Block(GROUP, cross_sectional=True)  # day means, z-scores and ranks over Date
    r1 = c(C.RETURNS_1D).cast(pl.Float64)
    w = int(q["vol_window"])
    b.add("_q_vol", per_code(r1.rolling_std(w, min_samples=w)))
    smart = bool(q["smart_money"]) and C.DOLLAR_VOLUME in avail
    if smart:
        # a column of its own: inside `_z_day`'s over("Date") the per-stock mean would see one row per stock
        dv = c(C.DOLLAR_VOLUME).cast(pl.Float64)
        b.add("_q_surprise", (dv / (per_code(dv.rolling_mean(w, min_samples=w)) + EPS) + EPS).log())
    elif q["smart_money"]:
        b.skip("smart_money needs dollar_volume (group volume, from AdjVo)")
    if q["outlier_flags"]:
        z, thr = _z_day(r1), float(q["sigma_threshold"])
        b.add("ret_outlier_up_flag", z > thr, is_flag=True)
        b.add("ret_outlier_down_flag", z < -thr, is_flag=True)
    if q["excess_returns"]:
        b.add("excess_ret_1d", r1 - r1.mean().over(C.DATE))
    b.next_stage()
    if smart:
        b.add("smart_money_index", _z_day(c("_q_surprise")) - _z_day(r1.abs()))
    if q["risk_adjusted"]:
        for h in (int(x) for x in q["sharpe_horizons"]):
            ret_h = (
                c(f"returns_{h}d").cast(pl.Float64)
                if f"returns_{h}d" in avail
                else per_code(r1.rolling_sum(h, min_samples=h))
            )
            b.add(f"sharpe_{h}d", ret_h / (c("_q_vol") * math.sqrt(h) + EPS))
    if q["use_cross_sectional_quantiles"]:
        vol = c("_q_vol")
        rank = vol.rank("average").over(C.DATE) / vol.count().over(C.DATE)
        b.add("vol_cs_quantile", rank)
        b.add("high_vol_flag", rank >= float(q["high_quantile"]), is_flag=True)
        b.add("low_vol_flag", rank <= float(q["low_quantile"]), is_flag=True)
    if q["excess_returns"]:
        b.add("excess_ret_5d", per_code(c("excess_ret_1d").cast(pl.Float64).rolling_sum(5, min_samples=5)))
    if smart:
        b.next_stage()
        smi = c("smart_money_index")
        b.add("smi_delta_5d", smi - per_code(smi.shift(5)))
    return b
