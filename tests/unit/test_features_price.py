"""Price, volume and technical features: hand formulas, split days, windows that never cross stocks."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from gogooku3.features.build import build_features

PER_STOCK_GROUPS = ("ohlcv", "returns", "volatility", "moving_averages", "price_position", "technicals")


def stock(built, i: int, tables) -> pl.DataFrame:
    code = tables["daily_quotes"]["Code"].unique(maintain_order=True)[i]
    return built.df.filter(pl.col("Code") == code)


def test_split_day_has_no_fake_return(mini_built, mini_tables):
    s = stock(mini_built, 1, mini_tables)
    raw = mini_tables["daily_quotes"].filter(pl.col("Code") == s["Code"][0])
    assert raw["C"][80] / raw["C"][79] < 0.6  # the raw close halves on the ex-date
    r = s["returns_1d"][80]
    assert r == pytest.approx(raw["AdjC"][80] / raw["AdjC"][79] - 1, rel=1e-5)
    assert abs(r) < 0.15
    assert s["volatility_5d"].slice(80, 5).max() < 1.5
    # market cap continues across the split: raw price halves, the split-adjusted share count doubles
    mc = s["market_cap"]
    assert mc[80] / mc[79] == pytest.approx(raw["C"][80] / raw["C"][79] * 2, rel=1e-5)
    assert s["shares_outstanding"][80] == pytest.approx(2 * s["shares_outstanding"][79])


def test_rolling_windows_never_cross_stocks(mini_built, mini_tables):
    s = stock(mini_built, 2, mini_tables)  # the previous stock in sort order has full history
    assert s["returns_1d"][0] is None
    assert s["volatility_20d"].head(20).null_count() == 20 and s["volatility_20d"][20] is not None
    assert s["sma_5"].head(4).null_count() == 4 and s["sma_5"][4] is not None
    assert s["rsi_14"].head(14).null_count() == 14
    assert s["beta_60d"].head(21).null_count() == 21


def test_each_stock_built_alone_gives_the_same_values(mini_built, mini_tables, mini_calendar, cfg):
    """Per-stock groups depend only on the stock's own rows."""
    codes = mini_tables["daily_quotes"]["Code"].unique(maintain_order=True)
    feats = [n for n, g in mini_built.groups.items() if g in PER_STOCK_GROUPS]
    for code in codes[1:3]:
        alone = {k: v for k, v in mini_tables.items() if k in ("daily_quotes", "trading_calendar")}
        alone["daily_quotes"] = alone["daily_quotes"].filter(pl.col("Code") == code)
        b = build_features(alone, mini_calendar, cfg.features, cfg.labels)
        full = mini_built.df.filter(pl.col("Code") == code)
        for n in feats:
            assert full[n].equals(b.df[n]), n


def _wilder(x: np.ndarray, n: int) -> np.ndarray:
    out = np.full(len(x), np.nan)
    m, seen = None, 0
    for i, v in enumerate(x):
        if np.isnan(v):
            continue
        m = v if m is None else m + (v - m) / n
        seen += 1
        if seen >= n:
            out[i] = m
    return out


def test_hand_formulas(mini_built, mini_tables):
    s = stock(mini_built, 0, mini_tables)
    raw = mini_tables["daily_quotes"].filter(pl.col("Code") == s["Code"][0])
    C, H, L = raw["AdjC"].to_numpy(), raw["AdjH"].to_numpy(), raw["AdjL"].to_numpy()
    r1 = np.r_[np.nan, C[1:] / C[:-1] - 1]
    i = 100
    got = lambda n: s[n][i]
    assert got("returns_5d") == pytest.approx(C[i] / C[i - 5] - 1, rel=1e-5)
    assert got("log_returns_20d") == pytest.approx(math.log(C[i] / C[i - 20]), rel=1e-5)
    assert got("volatility_20d") == pytest.approx(np.std(r1[i - 19 : i + 1], ddof=1) * math.sqrt(252), rel=1e-5)
    pk = np.log(H / L) ** 2 / (4 * math.log(2))
    assert got("realized_volatility") == pytest.approx(math.sqrt(252 * pk[i - 19 : i + 1].mean()), rel=1e-5)
    assert got("sma_20") == pytest.approx(C[i - 19 : i + 1].mean(), rel=1e-6)
    e = C[0]
    for v in C[1 : i + 1]:
        e = e + (2 / 6) * (v - e)
    assert got("ema_5") == pytest.approx(e, rel=1e-6)
    assert got("price_to_sma20") == pytest.approx(C[i] / C[i - 19 : i + 1].mean(), rel=1e-5)
    assert got("close_to_low") == pytest.approx((C[i] - L[i]) / (H[i] - L[i]), rel=1e-4)
    d = np.diff(C, prepend=np.nan)
    up, dn = (
        _wilder(np.where(np.isnan(d), np.nan, np.clip(d, 0, None)), 14),
        _wilder(np.where(np.isnan(d), np.nan, np.clip(-d, 0, None)), 14),
    )
    assert got("rsi_14") == pytest.approx(100 * up[i] / (up[i] + dn[i]), rel=1e-4)
    prev = np.r_[np.nan, C[:-1]]
    tr = np.maximum.reduce([H - L, np.abs(H - prev), np.abs(L - prev)])
    tr[0] = np.nan
    assert got("atr_14") == pytest.approx(_wilder(tr, 14)[i], rel=1e-4)
    hh, ll = H[i - 13 : i + 1].max(), L[i - 13 : i + 1].min()
    assert got("stoch_k") == pytest.approx(100 * (C[i] - ll) / (hh - ll), rel=1e-4)
    sd, mid = np.std(C[i - 19 : i + 1]), C[i - 19 : i + 1].mean()
    assert got("bb_width") == pytest.approx(4 * sd / mid, rel=1e-4)
    assert got("dollar_volume") == pytest.approx(raw["C"][i] * raw["Vo"][i], rel=1e-5)
    assert 0 <= got("adx_14") <= 100
    assert got("macd_histogram") == pytest.approx(got("macd") - got("macd_signal"), abs=1e-4)


def test_dtypes(mini_built):
    df = mini_built.df
    for n in mini_built.groups:
        assert df.schema[n] in (pl.Float32, pl.Int8), n
    assert {n for n in mini_built.groups if df.schema[n] == pl.Int8} >= {
        "is_flow_valid",
        "mkt_bull_200",
        "stmt_imp_statement",
    }
    assert df["Code"].dtype == pl.Utf8 and df["Date"].dtype == pl.Date
    assert df.select("Code", "Date").is_duplicated().sum() == 0
    assert df.select("Code", "Date").equals(df.select("Code", "Date").sort("Code", "Date"))
