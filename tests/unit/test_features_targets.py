"""Labels: target_{h}d(t) = AdjC(t+lag+h)/AdjC(t+lag) − 1 on trading sessions; null when a needed row is missing."""

from __future__ import annotations

import polars as pl
import pytest

from gogooku3.core.calendar import TradingCalendar
from gogooku3.features.build import build_features
from gogooku3.features.manifest import FeatureManifest


def hand_label(px: dict, sessions: list, d, h: int, lag: int):
    i = sessions.index(d)
    if i + lag + h >= len(sessions):
        return None
    a, b = px.get(sessions[i + lag]), px.get(sessions[i + lag + h])
    return None if a is None or b is None else b / a - 1


def test_every_label_equals_the_hand_computation(mini_factory, cfg):
    t = mini_factory(n_stocks=3, n_days=90)
    code = t["daily_quotes"]["Code"][0]
    dates = t["daily_quotes"]["Date"].unique().sort()
    gap = dates[40]  # the stock is suspended on one session
    t["daily_quotes"] = t["daily_quotes"].filter(~((pl.col("Code") == code) & (pl.col("Date") == gap)))
    cal = TradingCalendar.from_table(t["trading_calendar"])
    b = build_features(t, cal, cfg.features, cfg.labels)
    sessions = cal.sessions.to_list()
    lag = int(cfg.labels.entry_lag)
    for c in t["daily_quotes"]["Code"].unique():
        q = t["daily_quotes"].filter(pl.col("Code") == c)
        px = dict(zip(q["Date"].to_list(), q["AdjC"].to_list(), strict=True))
        s = b.df.filter(pl.col("Code") == c)
        for h in cfg.labels.horizons:
            got = s[f"target_{h}d"].to_list()
            want = [hand_label(px, sessions, d, h, lag) for d in s["Date"].to_list()]
            assert [g is None for g in got] == [w is None for w in want], (c, h)
            assert [g for g in got if g is not None] == pytest.approx([w for w in want if w is not None], rel=1e-5)
    s = b.df.filter(pl.col("Code") == code)
    prev = dates[39]
    assert s.filter(pl.col("Date") == prev)["target_1d"][0] is None  # entry session missing
    assert s.filter(pl.col("Date") == dates[38])["target_1d"][0] is None  # exit session missing
    assert s.filter(pl.col("Date") == dates[41])["target_1d"][0] is not None
    assert s.tail(1 + lag)["target_1d"].null_count() == 1 + lag  # never filled at the end


def test_entry_lag_and_horizons_follow_the_config(mini_factory, cfg):
    t = mini_factory(n_stocks=2, n_days=60)
    cal = TradingCalendar.from_table(t["trading_calendar"])
    b = build_features(t, cal, cfg.features, {"horizons": [2], "entry_lag": 0})
    assert [c for c in b.df.columns if c.startswith("target_")] == ["target_2d"]
    s = b.df.filter(pl.col("Code") == b.df["Code"][0])
    q = t["daily_quotes"].filter(pl.col("Code") == s["Code"][0])["AdjC"]
    assert s["target_2d"][10] == pytest.approx(q[12] / q[10] - 1, rel=1e-6)


def test_no_label_in_the_manifest(mini_built, cfg):
    m = FeatureManifest.from_frame(
        mini_built.df, mini_built.groups, list(cfg.labels.horizons), int(cfg.labels.entry_lag)
    )
    assert not [n for n in m.names if n.startswith("target_")]
    assert m.targets == [f"target_{h}d" for h in cfg.labels.horizons]
    assert all(mini_built.df.schema[n] == pl.Float32 for n in m.targets)


def test_labels_at_the_calendar_end_never_come_from_the_next_stock(mini_factory, cfg):
    """The calendar ends on the data's last session: the last rows of every stock have no label (the next stock's
    first rows sit right after them in the sorted frame and must not be read)."""
    t = mini_factory(n_stocks=3, n_days=60)
    cal = TradingCalendar.from_dates(t["daily_quotes"]["Date"])
    b = build_features(t, cal, cfg.features, cfg.labels)
    lag = int(cfg.labels.entry_lag)
    for h in cfg.labels.horizons:
        tail = b.df.group_by("Code").agg(pl.col(f"target_{h}d").tail(lag + h).null_count().alias("n"))
        assert (tail["n"] == lag + h).all(), h
        body = b.df.group_by("Code").agg(pl.col(f"target_{h}d").head(60 - lag - h).null_count().alias("n"))
        assert (body["n"] == 0).all(), h
