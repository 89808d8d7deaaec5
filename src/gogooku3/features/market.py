"""The 26 TOPIX market features (spec §1.4, `MarketFeaturesGenerator`): computed on the index series alone, then
joined to every stock on Date (the same value for every stock that day).

Without a `topix` table (user files, a plan without indices) the same features are computed on a proxy index built
from the universe itself (`proxy_index`, `features.market.proxy`): its return on day t is the mean 1-day return of
the names with a return on t, weighted by their market cap on their previous row where the dataset has market caps
(shares outstanding from statements), else equally. It reads only prices and shares known at t, so it is as point
in time as the stock features; the builder records it as a proxy in the manifest's `notes` and the coverage report.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from gogooku3.core import columns as C
from gogooku3.features.common import (
    SQRT252,
    Block,
    c,
    div,
    flag,
    per_code,
    zscore_rolling,
)

Z_COLS = ("mkt_ret_1d", "mkt_vol_20d", "mkt_bb_bw", "mkt_dd_from_peak")
REGIME_FLAGS = ("mkt_big_move_flag", "mkt_bull_200", "mkt_trend_up", "mkt_high_vol", "mkt_squeeze")


def _ema(e: pl.Expr, span: int) -> pl.Expr:
    return e.ewm_mean(span=span, adjust=False, ignore_nulls=True)


PROXY_MODES = ("auto", "equal", "off")


def proxy_index(lf: pl.LazyFrame, mode: str, weights: pl.Expr | None = None) -> tuple[pl.LazyFrame, str]:
    """(Date, C) of an index built from the daily frame's own 1-day returns `_r1`, and a one-line description.

    `weights` (per row, e.g. market cap) weight each name by its value on the name's previous row (known before t);
    a day without any weight falls back to the equal-weighted mean. Level: 100 on the first date, then
    C(t) = C(t−1)·(1 + R(t)).
    """
    if mode not in PROXY_MODES:
        from gogooku3.core.errors import ConfigError

        raise ConfigError(f"features.market.proxy must be one of {', '.join(PROXY_MODES)}, got '{mode}'")
    capw = weights is not None and mode == "auto"
    cols = [c(C.DATE), c(C.CODE), c("_r1")] + (
        [per_code(weights.shift(1)).alias("_pw")] if capw and weights is not None else []
    )
    # Day sums in a fixed (Date, Code) order with numpy: a parallel group-by adds floats in a varying order, and
    # the proxy (and every mkt_* feature built on it) must be the same on every build of the same data.
    f = lf.select(cols).collect().sort(C.DATE, C.CODE)
    dates, starts = np.unique(f[C.DATE].to_numpy(), return_index=True)
    r = f["_r1"].cast(pl.Float64).fill_null(np.nan).to_numpy()
    ok = np.isfinite(r)
    n_ok = np.add.reduceat(ok.astype(np.float64), starts)
    with np.errstate(invalid="ignore", divide="ignore"):
        ret = np.add.reduceat(np.where(ok, r, 0.0), starts) / n_ok
        if capw:
            w = f["_pw"].cast(pl.Float64).fill_null(np.nan).to_numpy()
            okw = ok & np.isfinite(w) & (w > 0)
            wsum = np.add.reduceat(np.where(okw, w, 0.0), starts)
            cw = np.add.reduceat(np.where(okw, r * w, 0.0), starts) / wsum
            ret = np.where(wsum > 0, cw, ret)  # a day without any weight: the equal-weighted mean
    ret = np.where(np.isfinite(ret), ret, 0.0)
    out = pl.DataFrame({C.DATE: pl.Series(dates).cast(pl.Date), "C": 100.0 * np.cumprod(1.0 + ret)}).lazy()
    kind = (
        "cap-weighted (market cap on the previous row; equal-weighted on days without one)"
        if capw
        else "equal-weighted"
    )
    return out, f"proxy: {kind} index of the universe's 1-day returns (no topix table)"


def market_frame(topix: pl.LazyFrame, m: dict) -> tuple[pl.LazyFrame, Block]:
    """Date + mkt_* columns from the TOPIX table (Date, C and optionally O/H/L). Returns (frame, block of names)."""
    cols = set(topix.collect_schema().names())
    b = Block("market")
    lf = topix.select([x for x in (C.DATE, "O", "H", "L", "C") if x in cols]).sort(C.DATE)
    close = c("C")
    st1 = {f"mkt_ret_{h}d": (close / close.shift(h) - 1.0) for h in (1, 5, 10, 20)}
    st1 |= {f"mkt_ema_{s}": _ema(close, s) for s in (5, 20, 60, 200)}
    mid, sd = close.rolling_mean(20, min_samples=20), close.rolling_std(20, min_samples=20, ddof=0)
    st1["mkt_bb_pct_b"] = div(close - (mid - 2 * sd), 4 * sd).clip(0.0, 1.0)
    st1["mkt_bb_bw"] = div(4 * sd, mid)
    st1["mkt_dd_from_peak"] = (close - close.cum_max()) / close.cum_max()
    has_hl = {"H", "L"} <= cols
    if has_hl:
        tr = pl.max_horizontal(c("H") - c("L"), (c("H") - close.shift(1)).abs(), (c("L") - close.shift(1)).abs())
        st1["mkt_atr_14"] = pl.when(close.shift(1).is_null()).then(None).otherwise(tr).rolling_mean(14, min_samples=14)
    st2 = {
        "mkt_dev_20": (close - c("mkt_ema_20")) / c("mkt_ema_20"),
        "mkt_gap_5_20": (c("mkt_ema_5") - c("mkt_ema_20")) / c("mkt_ema_20"),
        "mkt_ema20_slope_3": c("mkt_ema_20") / c("mkt_ema_20").shift(3) - 1.0,
        "mkt_vol_20d": c("mkt_ret_1d").rolling_std(20, min_samples=20) * SQRT252,
        "mkt_big_move_flag": flag(
            c("mkt_ret_1d").abs()
            >= 2.0 * c("mkt_ret_1d").rolling_std(m["big_move_window"], min_samples=m["big_move_window"])
        ),
        "mkt_bull_200": flag(close > c("mkt_ema_200")),
    }
    if has_hl:
        st2["mkt_natr_14"] = c("mkt_atr_14") / close
    zw = m["z_window"]
    st3 = {f"{x}_z": zscore_rolling(c(x), zw, partition=None) for x in Z_COLS}
    st3["mkt_trend_up"] = flag(c("mkt_gap_5_20") > 0)
    st4 = {"mkt_high_vol": flag(c("mkt_vol_20d_z") > 1.0), "mkt_squeeze": flag(c("mkt_bb_bw_z") < -1.0)}
    for st in (st1, st2, st3, st4):
        lf = lf.with_columns([e.alias(n) for n, e in st.items()])
        b.stages[0].update({n: c(n) for n in st})
    b.flags.update(REGIME_FLAGS)
    if not has_hl:
        b.skip("mkt_atr_14, mkt_natr_14 need index H/L")
    order = [
        "mkt_ret_1d",
        "mkt_ret_5d",
        "mkt_ret_10d",
        "mkt_ret_20d",
        "mkt_ema_5",
        "mkt_ema_20",
        "mkt_ema_60",
        "mkt_ema_200",
        "mkt_dev_20",
        "mkt_gap_5_20",
        "mkt_ema20_slope_3",
        "mkt_vol_20d",
        "mkt_atr_14",
        "mkt_natr_14",
        "mkt_bb_pct_b",
        "mkt_bb_bw",
        "mkt_dd_from_peak",
        "mkt_big_move_flag",
        *(f"{x}_z" for x in Z_COLS),
        "mkt_bull_200",
        "mkt_trend_up",
        "mkt_high_vol",
        "mkt_squeeze",
    ]
    names = [n for n in order if n in b.stages[0]]
    b.stages = [{n: c(n) for n in names}]  # the columns arrive by join; the block only names them
    return lf.select([C.DATE, *names]), b
