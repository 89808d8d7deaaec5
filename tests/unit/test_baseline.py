"""The LightGBM baseline: finds the planted signal, ≈0 on the noise canary, never uses a label, no test-fold selection;
BaselineRun save/load, fingerprints, and the stored run shared through `baseline_for_folds`."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from gogooku3.config.compose import load_config
from gogooku3.core.errors import LeakageError
from gogooku3.data.normalize import CrossSectionalNormalizer
from gogooku3.evaluation import metrics
from gogooku3.features.manifest import FeatureManifest
from gogooku3.predictors.lightgbm import LightGBMBaseline


def _market(strength: float):
    from gogooku3.core.calendar import TradingCalendar
    from gogooku3.features.build import build_features
    from gogooku3.sources.synthetic import SynthParams, simulate_market

    cfg = load_config([])
    tables = simulate_market(SynthParams(n_stocks=150, n_days=420, seed=11, signal_strength=strength))
    tables.pop("oracle")
    built = build_features(tables, TradingCalendar.from_table(tables["trading_calendar"]), cfg.features, cfg.labels)
    man = FeatureManifest.from_frame(built.df, built.groups, [1, 5, 10, 20], 1)
    return built.df, man.names


def _model(num_boost_round: int, early_stopping_rounds: int, val_days: int) -> LightGBMBaseline:
    """The configured baseline (YAML params) with a few explicit settings."""
    return LightGBMBaseline(
        dict(load_config([]).baseline.params),
        num_boost_round=num_boost_round,
        early_stopping_rounds=early_stopping_rounds,
        val_days=val_days,
        entry_lag=1,
        target_transform="rank",
        workers=1,
        holdout_days=0,
    )


def _fit_eval(df: pl.DataFrame, feats: list[str]) -> dict:
    dates = df["Date"].unique().sort()
    # walk-forward by hand: train on the first 300 sessions, 21-session gap, test on the rest
    train = df.filter(pl.col("Date") <= dates[300])
    test = df.filter(pl.col("Date") > dates[321])
    feats = [f for f in feats if df.schema[f].is_float()]
    nz = CrossSectionalNormalizer().fit(train, feats)
    model = _model(120, 20, 40)
    model.fit(nz.transform(train), feats, [1])
    pred = model.predict(nz.transform(test)).join(test.select("Date", "Code", "target_1d"), on=["Date", "Code"])
    assert model.val_range_[1] <= dates[300] and model.fit_range_[1] < model.val_range_[0]
    assert set(model.feature_importance_) == set(feats)
    return metrics.evaluate(pred, [1])["1"]


def test_finds_signal_and_nothing_in_noise():
    sig = _fit_eval(*_market(1.0))
    assert sig["rank_ic_mean"] > 0.02 and sig["rank_ic_tstat"] > 2.5, sig
    noise = _fit_eval(*_market(0.0))
    assert abs(noise["rank_ic_mean"]) < 0.025 and abs(noise["rank_ic_tstat"]) < 3.0, noise


def _toy(n_days=120, n_stocks=40, seed=0):
    rng = np.random.default_rng(seed)
    d = [dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(n_days)]
    x = rng.normal(size=(n_days, n_stocks, 3))
    y = 0.6 * x[:, :, 0] + rng.normal(size=(n_days, n_stocks))
    return pl.DataFrame(
        {
            "Date": [a for a in d for _ in range(n_stocks)],
            "Code": [f"{i:05d}" for i in range(n_stocks)] * n_days,
            "f0": x[:, :, 0].ravel(),
            "f1": x[:, :, 1].ravel(),
            "f2": x[:, :, 2].ravel(),
            "target_1d": y.ravel(),
        }
    )


def test_label_in_features_is_refused():
    df = _toy()
    with pytest.raises(LeakageError, match="target_1d"):
        _model(10, 5, 20).fit(df, ["f0", "target_1d"], [1])
    with pytest.raises(LeakageError, match="feat_ret_1d"):
        _model(10, 5, 20).fit(df.with_columns(feat_ret_1d=pl.col("f0")), ["f0", "feat_ret_1d"], [1])


def test_inner_validation_gap_and_predict_shape():
    df = _toy()
    m = _model(50, 10, 20)
    m.fit(df, ["f0", "f1", "f2"], [1])
    dates = df["Date"].unique().sort().to_list()
    # validation = last 20 dates; gap = h_max + lag = 2 dates dropped before it
    assert m.val_range_ == (dates[-20], dates[-1])
    assert m.fit_range_[1] == dates[-23]
    out = m.predict(df.head(100))
    assert out.columns == ["Date", "Code", "pred_1d"] and out.height == 100
    assert next(iter(m.feature_importance_)) == "f0"
    with pytest.raises(LeakageError):
        _model(10, 5, 20).fit(
            df.filter(pl.col("Date") > dates[50]), ["f0"], [1], val_df=df.filter(pl.col("Date") <= dates[50])
        )


def test_horizons_boosted_at_once_give_the_same_models():
    """baseline.workers: horizons fitted in threads give the same trees and predictions as one after the other."""
    rng = np.random.default_rng(1)
    df = _toy(n_days=160).with_columns(target_5d=pl.col("target_1d") + pl.Series(rng.normal(size=160 * 40)))
    fits = []
    for workers in (1, 2):
        m = LightGBMBaseline(
            dict(load_config([]).baseline.params),
            num_boost_round=40,
            early_stopping_rounds=10,
            val_days=20,
            entry_lag=1,
            target_transform="rank",
            workers=workers,
            holdout_days=0,
        )
        fits.append(m.fit(df, ["f0", "f1", "f2"], [1, 5]))
    a, b = fits
    assert a.best_iteration_ == b.best_iteration_
    for h in (1, 5):
        assert a.models_[h].model_to_string() == b.models_[h].model_to_string()
    assert a.predict(df).equals(b.predict(df))
