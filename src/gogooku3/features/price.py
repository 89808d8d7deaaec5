"""Price and volume groups (spec §1.4): OHLCV, returns, volatility, moving averages, price position, volume.

The base frame carries the split-adjusted series as Open/High/Low/Close/Volume (from AdjO/AdjH/AdjL/AdjC/AdjVo), so a
split day shows no fake return; returns, ratios and volatilities are scale-free and use them as they are.

Level features (Open/High/Low/Close, sma_*, ema_*; Volume, volume_ma_*) are output in the day's own share basis:
the adjusted value × C(t)/AdjC(t) (volumes × Vo(t)/AdjVo(t)), see `common.day_basis`. An adjusted level on day t
is rescaled by every split after t, so its cross-sectional rank would reveal a future split. The dataset's `Close`
is therefore the day-t price as traded on day t, which is what a price filter (backtest `min_price`) needs. Without
raw C/Vo in daily_quotes (user files with only AdjC) the levels stay adjusted, as point in time as the file itself.
"""

from __future__ import annotations

import math

import polars as pl

from gogooku3.core import columns as C
from gogooku3.features.common import (
    PRICE,
    SQRT252,
    VOLUME,
    Block,
    c,
    div,
    ema,
    lag,
    missing,
    per_code,
    roll_mean,
    roll_std,
)

OHLCV = (C.OPEN, C.HIGH, C.LOW, C.CLOSE, C.VOLUME, C.TURNOVER_VALUE)


def ohlcv(avail: set[str]) -> Block:
    b = Block("ohlcv")
    kinds = {C.OPEN: PRICE, C.HIGH: PRICE, C.LOW: PRICE, C.CLOSE: PRICE, C.VOLUME: VOLUME}
    for name in OHLCV:
        if name in avail:
            b.add(name, c(name), level=kinds.get(name))  # TurnoverValue (raw Va, yen) is split-invariant
    gone = missing(avail, *OHLCV)
    if gone:
        b.skip(f"daily_quotes lacks the inputs of {', '.join(gone)}")
    return b


def returns(avail: set[str], w: dict) -> Block:
    b = Block("returns")
    for h in w["returns"]:
        b.add(f"returns_{h}d", c(C.CLOSE) / lag(C.CLOSE, h) - 1.0)
    for h in w["log_returns"]:
        b.add(f"log_returns_{h}d", (c(C.CLOSE) / lag(C.CLOSE, h)).log())
    return b


def volatility(avail: set[str], w: dict) -> Block:
    """std(r1, w)·√252, and Parkinson's range volatility sqrt(252·mean_w(ln(H/L)² / (4 ln 2)))."""
    b = Block("volatility")
    for win in w["volatility"]:
        b.add(f"volatility_{win}d", roll_std(c("_r1"), win) * SQRT252)
    if missing(avail, C.HIGH, C.LOW):
        b.skip("realized_volatility needs AdjH/AdjL")
    else:
        pk = (c(C.HIGH) / c(C.LOW)).log().pow(2) / (4.0 * math.log(2.0))
        b.add("realized_volatility", (252.0 * roll_mean(pk, w["parkinson"])).sqrt())
    return b


def moving_averages(avail: set[str], w: dict) -> Block:
    b = Block("moving_averages")
    for win in w["sma"]:
        b.add(f"sma_{win}", roll_mean(c(C.CLOSE), win), level=PRICE)
    for span in w["ema"]:
        # min_samples 1 as in the spec; maturity is carried by the is_ema*_valid flags
        b.add(f"ema_{span}", ema(c(C.CLOSE), span), level=PRICE)
    return b


def price_position(avail: set[str]) -> Block:
    b = Block("price_position")
    for win in (5, 20, 60):
        b.add(f"price_to_sma{win}", div(c(C.CLOSE), roll_mean(c(C.CLOSE), win)))
    e5, e20, e60 = (ema(c(C.CLOSE), s) for s in (5, 20, 60))
    b.add("ma_gap_5_20", div(e5 - e20, e20))
    b.add("ma_gap_20_60", div(e20 - e60, e60))
    if missing(avail, C.HIGH, C.LOW):
        b.skip("high_low_ratio, close_to_high, close_to_low need AdjH/AdjL")
    else:
        rng = c(C.HIGH) - c(C.LOW)
        b.add("high_low_ratio", div(c(C.HIGH), c(C.LOW)))
        b.add("close_to_high", div(c(C.HIGH) - c(C.CLOSE), rng))
        b.add("close_to_low", div(c(C.CLOSE) - c(C.LOW), rng))
    return b


def volume(avail: set[str], w: dict) -> Block:
    """Volume averages and ratios, dollar volume. Shares-based columns are added by `statements.shares_block`."""
    b = Block("volume")
    if C.VOLUME not in avail:
        b.skip("daily_quotes lacks AdjVo")
        return b
    for win in w["volume_ma"]:
        b.add(f"volume_ma_{win}", roll_mean(c(C.VOLUME), win), level=VOLUME)
    b.next_stage()
    for win in w["volume_ma"]:
        b.add(f"volume_ratio_{win}", div(c(C.VOLUME), c(f"volume_ma_{win}")))
    # adjusted close × adjusted volume = raw close × raw volume: invariant to splits
    b.add("dollar_volume", c(C.CLOSE) * c(C.VOLUME))
    return b


def core_columns() -> dict[str, pl.Expr]:
    """Helper columns every later block may read: the 1-day adjusted return, previous close, row counter."""
    return {
        "_r1": (c(C.CLOSE) / lag(C.CLOSE, 1) - 1.0).alias("_r1"),
        "_prevC": lag(C.CLOSE, 1).alias("_prevC"),
        "_row": per_code(pl.int_range(pl.len(), dtype=pl.Int32)).alias("_row"),  # 0-based, for maturity flags
    }
