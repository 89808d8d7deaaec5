"""Splitter: no overlap, embargo in trading days, exact purge, forward-moving folds, clear errors."""

from __future__ import annotations

import datetime as dt
import itertools

import numpy as np
import pytest
from omegaconf import OmegaConf

from gogooku3.core.calendar import TradingCalendar
from gogooku3.core.errors import ConfigError, DataError, LeakageError
from gogooku3.data.split import (
    Fold,
    PurgedKFoldSplitter,
    WalkForwardSplitter,
    check_folds,
    inner_validation,
    make_splitter,
    resolve_embargo,
)


@pytest.fixture(scope="module")
def sessions() -> list[dt.date]:
    # Real XTKS sessions: holidays make trading-day and calendar-day counts differ.
    return TradingCalendar.from_exchange("XTKS", "2021-01-01", "2023-12-31").sessions.to_list()


def _pos(sessions):
    return {d: i for i, d in enumerate(sessions)}


@pytest.mark.parametrize("mode", ["expanding", "sliding"])
def test_walk_forward_no_overlap_embargo_and_forward(sessions, mode):
    sp = WalkForwardSplitter(
        n_splits=4,
        horizons=[1, 5, 10, 20],
        entry_lag=1,
        embargo_days=25,
        mode=mode,
        min_train_days=200,
        test_days=60,
        train_days=None,
    )
    folds = sp.split(sessions)
    pos = _pos(sessions)
    assert len(folds) == 4
    assert folds[-1].test_dates[-1] == sessions[-1]
    for a, b in itertools.pairwise(folds):
        assert b.test_dates[0] > a.test_dates[-1]  # test spans move forward
        assert b.train_dates[-1] > a.train_dates[-1]
    for f in folds:
        assert not set(f.train_dates) & set(f.test_dates)
        assert len(f.test_dates) == 60
        gap = pos[f.test_dates[0]] - pos[f.train_dates[-1]] - 1
        assert gap == 25  # embargo counted in sessions, not calendar days
        assert max(f.train_dates) < min(f.test_dates)
        assert f.purged == 21 and f.embargoed == 4
        if mode == "sliding":
            assert len(f.train_dates) == 200
    if mode == "expanding":
        assert all(f.train_dates[0] == sessions[0] for f in folds)


def test_purge_removes_exactly_the_crossing_dates(sessions):
    # embargo == h_max + lag: everything excluded is excluded because its label window reaches the test span.
    sp = WalkForwardSplitter(
        n_splits=2,
        horizons=[1, 5],
        entry_lag=2,
        embargo_days=7,
        mode="expanding",
        min_train_days=100,
        test_days=50,
        train_days=None,
    )
    folds = sp.split(sessions)
    pos = _pos(sessions)
    for f in folds:
        lo = pos[f.test_dates[0]]
        crossing = [d for d in sessions[:lo] if pos[d] + 2 + 5 >= lo]
        assert len(crossing) == 7 == f.purged
        assert not set(crossing) & set(f.train_dates)
        assert set(sessions[:lo]) - set(crossing) == set(f.train_dates)
        assert f.embargoed == 0


def test_purged_kfold_gaps_both_sides(sessions):
    sp = PurgedKFoldSplitter(
        n_splits=5, horizons=[1, 5, 10, 20], entry_lag=1, embargo_days=None, min_train_days=1, feature_lookback=0
    )
    folds = sp.split(sessions)
    pos = _pos(sessions)
    tests = [d for f in folds for d in f.test_dates]
    assert sorted(tests) == sessions  # the test blocks tile the dates
    for f in folds:
        lo, hi = pos[f.test_dates[0]], pos[f.test_dates[-1]]
        tp = np.array([pos[d] for d in f.train_dates])
        assert ((tp < lo - 21) | (tp > hi + 21)).all()
        # exact: every non-test date outside the embargo zone trains
        expected = [d for d in sessions if pos[d] < lo - 21 or pos[d] > hi + 21]
        assert f.train_dates == expected
        inner = 0 < f.index < 4
        assert f.purged == (42 if inner else 21)
    report = check_folds(folds, sessions)
    assert report["overlaps_detected"] == 0 and report["min_gap_trading_days"] == 21


def test_embargo_default_and_config_error():
    assert resolve_embargo(None, [1, 5, 10, 20], 1) == 21
    assert resolve_embargo(None, [1, 5], 1) == 20
    with pytest.raises(ConfigError, match="embargo_days=20"):
        resolve_embargo(20, [1, 5, 10, 20], 1)


def test_too_few_dates_is_data_error(sessions):
    sp = WalkForwardSplitter(
        n_splits=5,
        horizons=[1],
        entry_lag=1,
        embargo_days=None,
        mode="expanding",
        min_train_days=252,
        test_days=60,
        train_days=None,
    )
    with pytest.raises(DataError, match="too few dates"):
        sp.split(sessions[:300])
    with pytest.raises(DataError, match="too few dates"):
        PurgedKFoldSplitter(
            n_splits=5, horizons=[20], entry_lag=1, embargo_days=None, min_train_days=1, feature_lookback=0
        ).split(sessions[:80])


def test_make_splitter_from_config(sessions):
    cfg = OmegaConf.create(
        {
            "method": "walk_forward",
            "mode": "expanding",
            "n_splits": 3,
            "min_train_days": 252,
            "test_days": None,
            "train_days": None,
            "embargo_days": None,
            "val_days": 40,
            "holdout_days": 20,
        }
    )
    kfold = {
        "method": "purged_kfold",
        "n_splits": 3,
        "min_train_days": 60,
        "embargo_days": None,
        "val_days": 40,
        "holdout_days": 20,
    }
    folds = make_splitter(cfg, [1, 5, 10, 20], 1).split(sessions)
    n = len(sessions)
    assert len(folds[0].test_dates) == (n - 252 - 21) // 3
    assert len(folds[0].train_dates) >= 252
    assert isinstance(make_splitter(kfold, [1], 1, 60), PurgedKFoldSplitter)
    with pytest.raises(ConfigError, match="look-back"):  # the manifest records no look-back: refused
        make_splitter(kfold, [1], 1)
    assert isinstance(make_splitter(cfg, [1], 1), WalkForwardSplitter)  # walk-forward needs none
    with pytest.raises(ConfigError, match=r"^split\.method: unknown value 'random'"):
        make_splitter({"method": "random"}, [1], 1)
    with pytest.raises(ConfigError, match=r"^split\.min_train_days: required key missing"):  # the YAML sets every key
        make_splitter({"method": "purged_kfold", "n_splits": 3, "embargo_days": None, "val_days": 40}, [1], 1, 60)


def test_check_folds_catches_overlap_and_short_gap(sessions):
    f = Fold(0, sessions[:100], sessions[99:120], embargo_days=0)
    with pytest.raises(LeakageError, match="both train and test"):
        check_folds([f])
    g = Fold(0, sessions[:100], sessions[105:120], embargo_days=21)
    with pytest.raises(LeakageError, match="embargo"):
        check_folds([g], sessions)


def test_inner_validation_gap():
    dates = [dt.date(2022, 1, 1) + dt.timedelta(days=i) for i in range(100)]
    fit, val = inner_validation(dates, 20, 6)
    assert val == dates[80:] and fit == dates[:74]
    with pytest.raises(DataError):
        inner_validation(dates[:20], 20, 6)


def test_purged_kfold_leaves_no_training_row_whose_features_overlap_a_test_block(sessions):
    """With a 60-session feature look-back, a training date t after a test block is kept only when its window
    [t − 60, t] lies after the block: features of training rows never contain test-block information."""
    lookback = 60
    sp = PurgedKFoldSplitter(
        n_splits=4, horizons=[1, 5], entry_lag=1, embargo_days=None, min_train_days=1, feature_lookback=lookback
    )
    folds = sp.split(sessions)
    pos = _pos(sessions)
    for f in folds:
        lo, hi = pos[f.test_dates[0]], pos[f.test_dates[-1]]
        for d in f.train_dates:
            t = pos[d]
            window = range(max(t - lookback, 0), t + 1)
            assert not any(lo <= s <= hi for s in window), (f.index, d)  # no feature window reaches the block
            assert t + 1 + 5 < lo or t > hi  # nor a label window
        after = [d for d in sessions if pos[d] > hi]
        if after:
            assert f.train_dates[-1] == sessions[-1]
            first_after = min((d for d in f.train_dates if pos[d] > hi), default=None)
            assert first_after is None or pos[first_after] == hi + lookback + 1
            assert f.lookback_purged == min(lookback, len(after)) - min(sp.embargo_days, len(after))
            assert f.to_dict()["feature_lookback"] == lookback
    check_folds(folds, sessions)
    # a fold whose after-block training dates sit inside the look-back is a LeakageError
    f = folds[0]
    hi = pos[f.test_dates[-1]]
    leaky = Fold(
        0,
        [*f.train_dates, sessions[hi + lookback]],
        f.test_dates,
        embargo_days=f.embargo_days,
        feature_lookback=lookback,
    )
    leaky.train_dates.sort()
    with pytest.raises(LeakageError, match="look-back"):
        check_folds([leaky], sessions)


def test_purged_kfold_too_long_a_lookback_is_a_clear_error(sessions):
    with pytest.raises(DataError, match="look-back"):
        PurgedKFoldSplitter(
            n_splits=5, horizons=[1], entry_lag=1, embargo_days=None, feature_lookback=700, min_train_days=200
        ).split(sessions[:500])
