"""Group catalogue, switches and missing inputs: exactly the blocks that need an absent input are skipped."""

from __future__ import annotations

import collections

import polars as pl

from gogooku3.config.compose import load_config
from gogooku3.core.calendar import TradingCalendar
from gogooku3.features.build import build_features

EXPECTED = {
    "ohlcv": 6,
    "returns": 10,
    "volatility": 5,
    "moving_averages": 10,
    "price_position": 8,
    "volume": 8,
    "technicals": 10,
    "market": 26,
    "cross": 8,
    "flows": 13,
    "statements": 17,
    "margin": 21,
    "sector": 8,
    "quality": 12,
    "flags": 11,
}


def counts(b) -> dict:
    return dict(collections.Counter(b.groups.values()))


def test_full_catalogue(synth_built):
    assert counts(synth_built) == EXPECTED
    assert len(synth_built.groups) == sum(EXPECTED.values()) >= 139
    assert synth_built.skipped == {}
    # every group has real values somewhere (no silent all-null block)
    df = synth_built.df
    dead = [n for n in synth_built.groups if df[n].null_count() == df.height]
    assert not dead, dead
    assert df.filter(pl.col("Date") == df["Date"].max())["is_stmt_valid"].mean() > 0.5


def test_user_files_without_ohlv(mini_factory, cfg):
    """Only Date, Code, AdjC (+ an x_ column): the range/volume blocks and the absent tables are skipped, with why."""
    t = mini_factory(n_stocks=4, n_days=130)
    dq = t["daily_quotes"].select("Date", "Code", "AdjC", pl.col("AdjC").log().alias("x_signal"))
    b = build_features(
        {"daily_quotes": dq, "trading_calendar": t["trading_calendar"]},
        TradingCalendar.from_table(t["trading_calendar"]),
        cfg.features,
        cfg.labels,
    )
    c = counts(b)
    assert c["returns"] == 10 and c["moving_averages"] == 10 and c["volatility"] == 4
    assert c["user"] == 1 and b.df.schema["x_signal"] == pl.Float32
    assert "Open" not in b.df.columns and "Close" in b.df.columns
    assert c["technicals"] == 7  # RSI ×2, MACD ×3, Bollinger ×2 (no stoch, ATR, ADX without H/L)
    for g in ("statements", "flows", "margin", "volume", "sector"):
        assert g in b.skipped, g
    assert "AdjH" in b.skipped["technicals"] and "AdjVo" in b.skipped["volume"]
    assert "statements" in b.skipped["statements"]
    # no topix table: market and cross run on the universe's own (equal-weighted) proxy index, flagged as such
    assert c["market"] == 24 and c["cross"] == 8 and "index H/L" in b.skipped["market"] and "cross" not in b.skipped
    assert b.notes["market"].startswith("proxy: equal-weighted")
    assert b.df["Section"].unique().to_list() == ["AllMarket"]


def test_raw_only_ohlc_is_adjusted(mini_factory, cfg):
    t = mini_factory(n_stocks=2, n_days=100)
    dq = t["daily_quotes"].drop("AdjO", "AdjH", "AdjL", "AdjVo")
    b = build_features(
        {"daily_quotes": dq}, TradingCalendar.from_table(t["trading_calendar"]), cfg.features, cfg.labels
    )
    full = build_features(
        {"daily_quotes": t["daily_quotes"]}, TradingCalendar.from_table(t["trading_calendar"]), cfg.features, cfg.labels
    )
    for n in ("Open", "High", "Low", "Volume", "atr_14"):
        assert (b.df[n] - full.df[n]).abs().max() < 1e-3 * full.df[n].abs().max()


def test_switches(mini_tables, mini_calendar):
    cfg = load_config(["features.groups.margin=false", "features.groups.volume=false"])
    b = build_features(mini_tables, mini_calendar, cfg.features, cfg.labels)
    c = counts(b)
    assert "margin" not in c and "volume" not in c
    assert b.skipped["margin"] == "disabled in features.groups"
    assert c["sector"] == 8  # reads volume_ratio_20, computed though not output
    assert "volume_ratio_20" not in b.df.columns
