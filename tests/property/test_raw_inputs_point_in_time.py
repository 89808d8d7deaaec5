"""Point in time for the raw input channels (`data.raw_inputs`): a channel value, and its per-day normalised panel
value, for (Code, t) must not change when everything published after t is removed (the raw tables cut as a vendor
would have published them at t, `test_point_in_time.truncate`, future splits not applied)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from test_point_in_time import cut_dates, mismatches, split_days, truncate

from gogooku3.data.panel import PanelStore
from gogooku3.data.raw_inputs import CHANNELS, raw_channels
from gogooku3.features.build import build_features

NORM = {"method": "robust_z", "clip": 5.0}


@pytest.fixture(scope="module")
def cuts(synth_tables, synth_calendar):
    """Three cut dates with splits both before and after them (a leak through a future split would show)."""
    splits = split_days(synth_tables)
    both = [t for t in cut_dates(synth_tables, synth_calendar) if min(splits) <= t < max(splits)]
    assert len(both) >= 3
    return both[:: max(1, len(both) // 3)][:3]


def _channels(df: pl.DataFrame) -> tuple[pl.DataFrame, dict]:
    exprs = raw_channels(df.columns, CHANNELS, 20)
    return df.select("Code", "Date", *exprs.values()), exprs


def test_channels_and_their_panel_ignore_the_future(cuts, synth_tables, synth_calendar, synth_built, cfg):
    full, exprs = _channels(synth_built.df)
    assert list(exprs) == [f"raw_{c}" for c in CHANNELS]
    p_full = PanelStore.from_frame(synth_built.df, list(exprs), [], NORM, exprs=exprs)
    for t in cuts:
        cut_df = build_features(truncate(synth_tables, t), synth_calendar, cfg.features, cfg.labels).df
        cut, _ = _channels(cut_df)
        assert not mismatches(full, cut, list(exprs), t), f"cut {t}: raw channels read the future"
        p_cut = PanelStore.from_frame(cut_df, list(exprs), [], NORM, exprs=exprs)
        days = len(p_cut.dates)
        assert p_full.dates[:days] == p_cut.dates
        idx = [p_full.codes.index(c) for c in p_cut.codes]
        np.testing.assert_allclose(p_full.features[:days][:, idx], p_cut.features, rtol=1e-4, atol=1e-5)


def test_the_check_catches_a_channel_that_reads_tomorrow(cuts, synth_tables, synth_calendar, synth_built, cfg):
    """Control: a close channel made from the next row's return is caught at every cut."""
    t = cuts[0]
    ahead = {"raw_close": pl.col("returns_1d").shift(-1).over("Code").alias("raw_close")}
    cut_df = build_features(truncate(synth_tables, t), synth_calendar, cfg.features, cfg.labels).df
    full, cut = (d.select("Code", "Date", *ahead.values()) for d in (synth_built.df, cut_df))
    assert mismatches(full, cut, ["raw_close"], t) == ["raw_close (nulls)"]


def test_the_close_channel_is_the_adjusted_return_across_a_split(mini_built, mini_tables):
    """Stock 1 of the hand-made market splits 1:2 on its 81st row: the channel is ln(AdjC_t / AdjC_{t-1}) there,
    not the day-basis close ratio (about ln 0.5)."""
    code = mini_tables["daily_quotes"]["Code"].unique(maintain_order=True)[1]
    raw = mini_tables["daily_quotes"].filter(pl.col("Code") == code)
    s, _ = _channels(mini_built.df.filter(pl.col("Code") == code))
    adj, c = raw["AdjC"].to_numpy(), raw["C"].to_numpy()
    assert s["raw_close"][80] == pytest.approx(np.log(adj[80] / adj[79]), abs=1e-6)
    assert abs(np.log(c[80] / c[79]) - np.log(adj[80] / adj[79])) > 0.6  # the trap the channel avoids
    np.testing.assert_allclose(s["raw_close"].to_numpy()[1:], np.log(adj[1:] / adj[:-1]), atol=1e-6)
