"""Point in time: a feature value for (Code, t) must not change when everything published after t is removed.

For several cut dates c the raw tables are cut as a vendor would have published them at c: quotes/topix/listed_info
Date ≤ c, statements DiscDate ≤ c, investor_types and margin PubDate ≤ c (the calendar is kept whole), and the
adjusted quote columns re-derived from the raw ones with only the splits known at c:
Adj{O,H,L,C}(t) = raw(t)·Π_{t<s≤c} AdjFactor(s), AdjVo(t) = Vo(t) / Π_{t<s≤c} AdjFactor(s).
Simply filtering the full (already adjusted) table would hide a leak through future splits. Every feature of every row
with Date ≤ c must equal the full build (null positions exactly, values to float32 rounding of the rescaling).
Targets look ahead by design and are excluded.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from gogooku3.features import plan
from gogooku3.features.build import build_features

CUT_FRACTIONS = (0.2, 0.45, 0.7, 0.9)
RTOL, ATOL = 1e-5, 1e-9  # float32 features; rescaling by Π AdjFactor may change the last bits
LEVELS = (
    "Open",
    "High",
    "Low",
    "Close",
    "Volume",
    "sma_20",
    "ema_200",
    "volume_ma_20",
    "macd",
    "macd_signal",
    "atr_14",
)


def as_published(dq: pl.DataFrame, t: dt.date) -> pl.DataFrame:
    """daily_quotes up to t with the adjusted columns as published at t (splits after t not applied yet)."""
    dq = dq.filter(pl.col("Date") <= t).sort("Code", "Date")
    after = (pl.col("AdjFactor").reverse().cum_prod().reverse().shift(-1).fill_null(1.0)).over("Code")
    dq = dq.with_columns(after.alias("_p"))
    return dq.with_columns(
        *[(pl.col(x) * pl.col("_p")).alias(f"Adj{x}") for x in ("O", "H", "L", "C")],
        (pl.col("Vo") / pl.col("_p")).alias("AdjVo"),
    ).drop("_p")


def stale_cut(dq: pl.DataFrame, t: dt.date) -> pl.DataFrame:
    """The old, blind truncation: the full table's adjusted columns (all future splits applied) cut at t."""
    return dq.filter(pl.col("Date") <= t)


def truncate(tables: dict, t: dt.date, quotes=as_published) -> dict:
    keep = {
        "topix": "Date",
        "listed_info": "Date",
        "statements": "DiscDate",
        "investor_types": "PubDate",
        "margin_interest": "PubDate",
    }
    out = {k: (v.filter(pl.col(keep[k]) <= t) if k in keep else v) for k, v in tables.items()}
    out["daily_quotes"] = quotes(tables["daily_quotes"], t)
    return out


def mismatches(full: pl.DataFrame, cut: pl.DataFrame, features: list[str], t: dt.date) -> list[str]:
    """Feature columns whose values or null positions differ on rows with Date ≤ t."""
    a = full.filter(pl.col("Date") <= t)
    assert a.select("Code", "Date").equals(cut.select("Code", "Date")), "row sets differ"
    bad = []
    for n in features:
        x, y = a[n], cut[n]
        if not (x.is_null() == y.is_null()).all():
            bad.append(f"{n} (nulls)")
            continue
        xv, yv = x.drop_nulls().to_numpy().astype(np.float64), y.drop_nulls().to_numpy().astype(np.float64)
        if not np.allclose(xv, yv, rtol=RTOL, atol=ATOL, equal_nan=True):
            bad.append(n)
    return bad


def split_days(tables: dict) -> list[dt.date]:
    return tables["daily_quotes"].filter(pl.col("AdjFactor") != 1.0)["Date"].sort().to_list()


def cut_dates(tables: dict, cal) -> list[dt.date]:
    dates = tables["daily_quotes"]["Date"].unique().sort()
    cuts = [dates[int(f * (len(dates) - 1))] for f in CUT_FRACTIONS]
    st = tables["statements"]
    after_close = st.filter(pl.col("DiscTime") >= "15:00:00")["DiscDate"]
    pub = tables["investor_types"]["PubDate"]
    # a disclosure day with an after-close statement and a flow publication day are the sharpest cuts
    for d in (after_close.filter(after_close > dates[len(dates) // 3]).min(), pub.filter(pub > dates[100]).min()):
        if d is not None and cal.is_session(pl.Series([d])).all():
            cuts.append(d)
    # the session before a split's ex-date: the split is the very next thing the vendor will publish
    splits = split_days(tables)
    if splits:
        cuts.append(dates.filter(dates < splits[len(splits) // 2]).max())
    return sorted(set(cuts))


@pytest.fixture(scope="module")
def synth_cuts(synth_tables, synth_calendar):
    return cut_dates(synth_tables, synth_calendar)


def test_cut_dates_are_meaningful(synth_cuts, synth_built, synth_tables):
    assert len(synth_cuts) >= 6
    assert len(synth_built.groups) >= 139
    splits = split_days(synth_tables)
    # most cuts have splits both before them (inside the kept span) and after them (the future a leak would read)
    both = [t for t in synth_cuts if min(splits) <= t < max(splits)]
    assert len(splits) >= 5 and len(both) >= 4, (splits, synth_cuts)


@pytest.mark.parametrize("i", range(7))
def test_truncated_build_equals_full_build(i, synth_cuts, synth_tables, synth_calendar, synth_built, cfg):
    if i >= len(synth_cuts):
        pytest.skip("fewer cut dates")
    t = synth_cuts[i]
    cut = build_features(truncate(synth_tables, t), synth_calendar, cfg.features, cfg.labels)
    assert set(cut.groups) == set(synth_built.groups)
    bad = mismatches(synth_built.df, cut.df, list(synth_built.groups), t)
    assert not bad, f"cut {t}: features read the future: {bad}"
    # meta columns are point in time too
    full = synth_built.df.filter(pl.col("Date") <= t)
    assert full.select("Section", "S33", "S17").equals(cut.df.select("Section", "S33", "S17"))


def test_mini_market_truncation(mini_tables, mini_calendar, mini_built, cfg):
    """The hand-made market (a 1:2 split on row 80 of stock 1, statements at 13:00/15:30/no time/15:00): cuts
    before the split (its adjusted history is re-derived unsplit) and after it."""
    dates = mini_tables["daily_quotes"]["Date"].unique().sort()
    for t in (dates[60], dates[79], dates[85], dates[126]):
        cut = build_features(truncate(mini_tables, t), mini_calendar, cfg.features, cfg.labels)
        assert not mismatches(mini_built.df, cut.df, list(mini_built.groups), t)


def test_levels_are_in_the_days_basis(mini_built, mini_tables):
    """Close is the day's traded price and Volume the day's traded shares (here the raw C, Vo), before the split too."""
    code = mini_tables["daily_quotes"]["Code"].unique(maintain_order=True)[1]
    s = mini_built.df.filter(pl.col("Code") == code)
    raw = mini_tables["daily_quotes"].filter(pl.col("Code") == code)
    assert np.allclose(s["Close"].to_numpy(), raw["C"].to_numpy(), rtol=1e-6)
    assert np.allclose(s["Volume"].to_numpy(), raw["Vo"].to_numpy(), rtol=1e-6)
    assert s["Close"][79] / raw["AdjC"][79] == pytest.approx(2.0, rel=1e-6)  # before the 1:2 split: raw = 2 × adj
    C = raw["AdjC"].to_numpy()
    assert s["sma_20"][70] == pytest.approx(2.0 * C[51:71].mean(), rel=1e-6)
    assert s["sma_20"][90] == pytest.approx(C[71:91].mean(), rel=1e-6)  # a window across the split: adjusted


def test_checker_catches_a_leak(synth_tables, synth_calendar, synth_built, cfg):
    """The comparison is not vacuous: a centred moving average and a backward fill (classic leaks) are caught."""
    t = synth_tables["daily_quotes"]["Date"].unique().sort()[150]

    def leaky(b):
        return b.df.with_columns(
            pl.col("Close").rolling_mean(5, center=True).over("Code").alias("sma_5"),
            pl.col("returns_120d").backward_fill().over("Code"),
        )

    cut = build_features(truncate(synth_tables, t), synth_calendar, cfg.features, cfg.labels)
    assert not mismatches(synth_built.df, cut.df, ["sma_5", "returns_120d"], t)
    assert mismatches(leaky(synth_built), leaky(cut), ["sma_5", "returns_120d", "returns_1d"], t) == [
        "sma_5 (nulls)",
        "returns_120d (nulls)",
    ]


def test_checker_catches_adjusted_levels(synth_tables, synth_calendar, synth_cuts, cfg, monkeypatch):
    """Control: levels left in the adjusted basis (the old behaviour) read future splits. The re-derived truncation
    catches it at a cut with a later split; the old truncation of the already adjusted table could not."""
    splits = split_days(synth_tables)
    t = next(x for x in synth_cuts if x < max(splits))
    monkeypatch.setattr(plan, "day_basis", lambda levels: [pl.col(n).cast(pl.Float32) for n in levels])
    full = build_features(synth_tables, synth_calendar, cfg.features, cfg.labels)
    honest = build_features(truncate(synth_tables, t), synth_calendar, cfg.features, cfg.labels)
    blind = build_features(truncate(synth_tables, t, stale_cut), synth_calendar, cfg.features, cfg.labels)
    assert set(mismatches(full.df, honest.df, list(LEVELS), t)) == set(LEVELS)
    assert not mismatches(full.df, blind.df, list(LEVELS), t)
    # scale-free features are unaffected by where the levels are scaled
    assert not mismatches(
        full.df,
        honest.df,
        ["returns_20d", "price_to_sma20", "rsi_14", "volume_ratio_20", "dollar_volume", "bb_width", "market_cap"],
        t,
    )


def test_market_proxy_is_point_in_time(synth_tables, synth_calendar, synth_cuts, mini_tables, mini_calendar, cfg):
    """Without a topix table the market features come from a proxy index of the universe (cap-weighted by the
    previous row's market cap on the synthetic market, which has statements; equal-weighted on prices alone). Rebuilt
    on the data as published at a cut, every feature, the proxy's mkt_* and the cross block's beta/alpha included,
    equals the full build: the proxy reads only names, prices and shares known at t."""
    no_index = {k: v for k, v in synth_tables.items() if k != "topix"}
    full = build_features(no_index, synth_calendar, cfg.features, cfg.labels)
    assert full.notes["market"].startswith("proxy: cap-weighted") and "beta_60d" in full.groups
    splits = split_days(synth_tables)
    for t in (synth_cuts[1], next(x for x in synth_cuts if x < max(splits))):
        cut = build_features(truncate(no_index, t), synth_calendar, cfg.features, cfg.labels)
        assert set(cut.groups) == set(full.groups)
        bad = mismatches(full.df, cut.df, list(full.groups), t)
        assert not bad, f"cut {t}: features read the future: {bad}"
    prices = {"daily_quotes": mini_tables["daily_quotes"], "trading_calendar": mini_tables["trading_calendar"]}
    full = build_features(prices, mini_calendar, cfg.features, cfg.labels)
    assert full.notes["market"].startswith("proxy: equal-weighted")
    dates = mini_tables["daily_quotes"]["Date"].unique().sort()
    for t in (dates[79], dates[120]):
        cut = build_features(truncate(prices, t), mini_calendar, cfg.features, cfg.labels)
        assert not mismatches(full.df, cut.df, list(full.groups), t)


def test_proxy_checker_catches_a_future_weight(synth_tables, synth_calendar, synth_cuts, cfg, monkeypatch):
    """Control: a proxy weighted by the same day's market cap of a *later* row (a leak) is caught by the cut."""
    from gogooku3.features import market

    real = market.proxy_index

    def leaky(lf, mode, weights=None):
        return real(lf, mode, None if weights is None else weights.shift(-5).over("Code"))

    monkeypatch.setattr(plan, "proxy_index", leaky)
    no_index = {k: v for k, v in synth_tables.items() if k != "topix"}
    t = synth_cuts[2]
    full = build_features(no_index, synth_calendar, cfg.features, cfg.labels)
    cut = build_features(truncate(no_index, t), synth_calendar, cfg.features, cfg.labels)
    assert "mkt_ret_1d" in mismatches(full.df, cut.df, ["mkt_ret_1d", "returns_1d"], t)
