"""Point in time: a feature value for (Code, t) must not change when everything published after t is removed.

For several cut dates t the raw tables are truncated at t (quotes/topix/listed_info Date ≤ t, statements DiscDate ≤ t,
investor_types and margin PubDate ≤ t; the calendar is kept whole) and rebuilt. Every feature of every row with
Date ≤ t must equal the full build exactly, null positions included. Targets look ahead by design and are excluded.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from gogooku3.features.builder import build_features

CUT_FRACTIONS = (0.2, 0.45, 0.7, 0.9)


def truncate(tables: dict, t: dt.date) -> dict:
    keep = {"daily_quotes": "Date", "topix": "Date", "listed_info": "Date", "statements": "DiscDate",
            "investor_types": "PubDate", "margin_interest": "PubDate"}
    return {k: (v.filter(pl.col(keep[k]) <= t) if k in keep else v) for k, v in tables.items()}


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
        xv, yv = x.drop_nulls().to_numpy(), y.drop_nulls().to_numpy()
        if not np.array_equal(xv, yv, equal_nan=True):
            bad.append(n)
    return bad


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
    return sorted(set(cuts))


@pytest.fixture(scope="module")
def synth_cuts(synth_tables, synth_calendar):
    return cut_dates(synth_tables, synth_calendar)


def test_cut_dates_are_meaningful(synth_cuts, synth_built):
    assert len(synth_cuts) >= 5
    assert len(synth_built.groups) >= 139


@pytest.mark.parametrize("i", range(6))
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
    """The hand-made market (split, statements at 13:00/15:30/no time/15:00) at two cuts."""
    dates = mini_tables["daily_quotes"]["Date"].unique().sort()
    for t in (dates[85], dates[126]):
        cut = build_features(truncate(mini_tables, t), mini_calendar, cfg.features, cfg.labels)
        assert not mismatches(mini_built.df, cut.df, list(mini_built.groups), t)


def test_checker_catches_a_leak(synth_tables, synth_calendar, synth_built, cfg):
    """The comparison is not vacuous: a centred moving average and a backward fill (classic leaks) are caught."""
    t = synth_tables["daily_quotes"]["Date"].unique().sort()[150]

    def leaky(b):
        return b.df.with_columns(pl.col("Close").rolling_mean(5, center=True).over("Code").alias("sma_5"),
                                 pl.col("returns_120d").backward_fill().over("Code"))

    cut = build_features(truncate(synth_tables, t), synth_calendar, cfg.features, cfg.labels)
    assert not mismatches(synth_built.df, cut.df, ["sma_5", "returns_120d"], t)
    assert mismatches(leaky(synth_built), leaky(cut), ["sma_5", "returns_120d", "returns_1d"], t) == [
        "sma_5 (nulls)", "returns_120d (nulls)"]
