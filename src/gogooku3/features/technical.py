"""Technical indicators (spec §1.4): RSI (Wilder), MACD, ATR, ADX, stochastic %K, Bollinger bands.

ATR and ADX use Wilder smoothing (alpha = 1/n), the textbook definition (the original's fallback used EWM span n).
No missing value is filled with a neutral number (the original filled RSI with 50). RSI, %K, ADX and the Bollinger
width/position are scale-free; MACD (line, signal, histogram) and ATR are price levels, output in the day's basis.
"""

from __future__ import annotations

import polars as pl

from gogooku3.core import columns as C
from gogooku3.features.common import (
    EPS,
    PRICE,
    Block,
    c,
    div,
    ema,
    missing,
    per_code,
    roll_mean,
    roll_std,
    wilder,
)


def _rsi(n: int) -> pl.Expr:
    d = c(C.CLOSE) - c("_prevC")
    up, down = wilder(d.clip(lower_bound=0.0), n), wilder((-d).clip(lower_bound=0.0), n)
    return 100.0 * up / (up + down + EPS)


def technicals(avail: set[str], t: dict) -> Block:
    b = Block("technicals")
    fast, slow, sig = t["macd"]
    for n in t["rsi"]:
        b.add(f"rsi_{n}", _rsi(n))
    b.add("macd", ema(c(C.CLOSE), fast, fast) - ema(c(C.CLOSE), slow, slow), level=PRICE)
    bw, k = t["bb_window"], t["bb_k"]
    mid, sd = roll_mean(c(C.CLOSE), bw), roll_std(c(C.CLOSE), bw, ddof=0)
    b.add("bb_width", div(2.0 * k * sd, mid))
    b.add("bb_position", div(c(C.CLOSE) - (mid - k * sd), 2.0 * k * sd).clip(0.0, 1.0))
    hl = missing(avail, C.HIGH, C.LOW)
    if not hl:
        hh = per_code(c(C.HIGH).rolling_max(t["stoch"], min_samples=t["stoch"]))
        ll = per_code(c(C.LOW).rolling_min(t["stoch"], min_samples=t["stoch"]))
        b.add("stoch_k", 100.0 * div(c(C.CLOSE) - ll, hh - ll))
        tr = pl.max_horizontal(c(C.HIGH) - c(C.LOW), (c(C.HIGH) - c("_prevC")).abs(), (c(C.LOW) - c("_prevC")).abs())
        b.add("_tr", pl.when(c("_prevC").is_null()).then(None).otherwise(tr))
        up_move = c(C.HIGH) - per_code(c(C.HIGH).shift(1))
        down_move = per_code(c(C.LOW).shift(1)) - c(C.LOW)
        first = up_move.is_null() | down_move.is_null()
        b.add(
            "_pdm", pl.when(first).then(None).when((up_move > down_move) & (up_move > 0)).then(up_move).otherwise(0.0)
        )
        b.add(
            "_mdm",
            pl.when(first).then(None).when((down_move > up_move) & (down_move > 0)).then(down_move).otherwise(0.0),
        )
    b.next_stage()
    b.add(
        "macd_signal",
        per_code(c("macd").ewm_mean(span=sig, adjust=False, min_samples=sig, ignore_nulls=True)),
        level=PRICE,
    )
    if not hl:
        n = t["atr"]
        b.add(f"atr_{n}", wilder(c("_tr"), n), level=PRICE)
        na = t["adx"]
        atr_a = wilder(c("_tr"), na)
        b.add("_pdi", 100.0 * div(wilder(c("_pdm"), na), atr_a))
        b.add("_mdi", 100.0 * div(wilder(c("_mdm"), na), atr_a))
    b.next_stage()
    b.add("macd_histogram", c("macd") - c("macd_signal"), level=PRICE)
    if not hl:
        b.add("_dx", 100.0 * div((c("_pdi") - c("_mdi")).abs(), c("_pdi") + c("_mdi")))
        b.next_stage()
        b.add(f"adx_{t['adx']}", wilder(c("_dx"), t["adx"]))
    else:
        b.skip(f"stoch_k, atr_{t['atr']}, adx_{t['adx']} need AdjH/AdjL")
    return b
