"""Quality block: the original generator's formulas, point in time, switchable, skipped parts, in the manifest."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math

import numpy as np
import polars as pl
import pytest

from gogooku3.config.compose import load_config
from gogooku3.core.calendar import TradingCalendar
from gogooku3.features.build import build_features
from gogooku3.features.manifest import FeatureManifest
from gogooku3.features.quality import quality

EPS = 1e-12
ALL = [
    "smart_money_index",
    "ret_outlier_up_flag",
    "ret_outlier_down_flag",
    "excess_ret_1d",
    "sharpe_5d",
    "sharpe_10d",
    "sharpe_20d",
    "vol_cs_quantile",
    "high_vol_flag",
    "low_vol_flag",
    "smi_delta_5d",
    "excess_ret_5d",
]
FLAGS = {"ret_outlier_up_flag", "ret_outlier_down_flag", "high_vol_flag", "low_vol_flag"}


def _settings(**over) -> dict:
    return {**dataclasses.asdict(load_config([]).features.quality), **over}


def _frame(n_days=60, n_stocks=30, seed=0) -> pl.DataFrame:
    """returns_1d, returns_5d and dollar_volume as the builder leaves them (Float32, sorted by Code, Date)."""
    rng = np.random.default_rng(seed)
    d = [dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(n_days)]
    r = rng.normal(0, 0.02, (n_days, n_stocks)) * np.linspace(0.5, 2, n_stocks)
    dv = rng.lognormal(15, 0.5, (n_days, n_stocks))
    df = pl.DataFrame(
        {
            "Code": [f"{i:05d}" for i in range(n_stocks)] * n_days,
            "Date": [a for a in d for _ in range(n_stocks)],
            "returns_1d": r.ravel(),
            "dollar_volume": dv.ravel(),
        }
    ).sort("Code", "Date")
    df = df.with_columns(((1 + pl.col("returns_1d")).log().rolling_sum(5).over("Code").exp() - 1).alias("returns_5d"))
    return df.with_columns(pl.col("returns_1d", "returns_5d", "dollar_volume").cast(pl.Float32))


def _apply(df: pl.DataFrame, **over):
    b = quality(set(df.columns), _settings(**over))
    out = b.apply(df.lazy()).collect()
    return out.drop([c for c in out.columns if c.startswith("_")]), b


def _z(x: pl.Expr) -> pl.Expr:
    return (x - x.mean().over("Date")) / (x.std().over("Date") + EPS)


def _original(df: pl.DataFrame, w: int = 20, thr: float = 2.0) -> pl.DataFrame:
    """The removed QualityFinancialFeaturesGenerator's expressions (default settings), the surprise fixed."""
    r1 = pl.col("returns_1d").cast(pl.Float64)
    dv = pl.col("dollar_volume").cast(pl.Float64)
    # the dollar-volume surprise materialized first: nested in _z's over("Date"), the per-stock mean sees one row
    # per stock and is null (the original's smart_money_index was always null)
    s0 = (dv / (dv.rolling_mean(w, min_samples=w).over("Code") + EPS) + EPS).log().alias("__surprise")
    s1 = [
        r1.rolling_std(w, min_samples=w).over("Code").alias("__vol_d"),
        (_z(pl.col("__surprise")) - _z(r1.abs())).alias("__smi"),
    ]
    s2 = []
    for h in (5, 10, 20):
        ret_h = (
            pl.col(f"returns_{h}d").cast(pl.Float64)
            if f"returns_{h}d" in df.columns
            else r1.rolling_sum(h, min_samples=h).over("Code")
        )
        s2.append((ret_h / (pl.col("__vol_d") * math.sqrt(h) + EPS)).cast(pl.Float32).alias(f"sharpe_{h}d"))
    s2.append(pl.col("__smi").cast(pl.Float32).alias("smart_money_index"))
    s2 += [
        (_z(r1) > thr).cast(pl.Int8).alias("ret_outlier_up_flag"),
        (_z(r1) < -thr).cast(pl.Int8).alias("ret_outlier_down_flag"),
    ]
    q = pl.col("__vol_d").rank("average").over("Date") / pl.col("__vol_d").count().over("Date")
    s2 += [
        q.cast(pl.Float32).alias("vol_cs_quantile"),
        (q >= 0.8).cast(pl.Int8).alias("high_vol_flag"),
        (q <= 0.2).cast(pl.Int8).alias("low_vol_flag"),
        (r1 - r1.mean().over("Date")).cast(pl.Float32).alias("excess_ret_1d"),
    ]
    s3 = [
        (pl.col("smart_money_index") - pl.col("smart_money_index").shift(5).over("Code"))
        .cast(pl.Float32)
        .alias("smi_delta_5d"),
        pl.col("excess_ret_1d")
        .cast(pl.Float64)
        .rolling_sum(5, min_samples=5)
        .over("Code")
        .cast(pl.Float32)
        .alias("excess_ret_5d"),
    ]
    return df.with_columns(s0).with_columns(s1).with_columns(s2).with_columns(s3).drop("__surprise", "__vol_d", "__smi")


def test_values_equal_the_original_formulas():
    df = _frame()
    out, b = _apply(df)
    assert set(b.features) == set(ALL) and b.skipped is None
    ref = _original(df)
    for n in ALL:
        assert out.schema[n] == (pl.Int8 if n in FLAGS else pl.Float32), n
        assert out[n].equals(ref[n], check_names=True), n
        assert out[n].null_count() < out.height / 2, n
    # smart_money_index by hand on one day: z of the log volume surprise minus z of |returns_1d|
    day = df["Date"].unique().sort()[45]
    hist = (
        df.filter(pl.col("Date") <= day)
        .group_by("Code")
        .agg(pl.col("dollar_volume").tail(20).cast(pl.Float64).mean().alias("m"))
    )
    d = df.filter(pl.col("Date") == day).join(hist, on="Code").sort("Code")
    s = np.log(d["dollar_volume"].to_numpy().astype(float) / (d["m"].to_numpy() + EPS) + EPS)
    a = np.abs(d["returns_1d"].to_numpy().astype(float))
    smi = (s - s.mean()) / (s.std(ddof=1) + EPS) - (a - a.mean()) / (a.std(ddof=1) + EPS)
    got = out.filter(pl.col("Date") == day).sort("Code")["smart_money_index"].to_numpy()
    assert np.allclose(got, smi, rtol=1e-5, atol=1e-5)
    # independent checks: sharpe_5d of one stock from its own past only; excess returns sum to 0 each day
    one = out.filter(pl.col("Code") == "00003")
    r, r5 = one["returns_1d"].to_numpy().astype(float), one["returns_5d"].to_numpy().astype(float)
    t = 30
    assert one["sharpe_5d"][t] == pytest.approx(r5[t] / (np.std(r[t - 19 : t + 1], ddof=1) * np.sqrt(5)), rel=1e-5)
    assert one["sharpe_5d"][:19].null_count() == 19  # 20-day vol needs 20 observations
    assert out.group_by("Date").agg(pl.col("excess_ret_1d").sum().abs())["excess_ret_1d"].max() < 1e-6
    q = out.filter(pl.col("vol_cs_quantile").is_not_null())
    assert ((q["high_vol_flag"] == 1) == (q["vol_cs_quantile"] >= 0.8)).all()


def test_sharpe_without_returns_h_sums_daily_returns():
    df = _frame().drop("returns_5d")
    out, _ = _apply(df)
    ref = _original(df)
    assert out["sharpe_5d"].equals(ref["sharpe_5d"])


def test_point_in_time_future_change_does_not_move_past():
    df = _frame()
    cut = df["Date"].unique().sort()[40]
    later = pl.col("Date") > cut
    shocked = df.with_columns(
        pl.when(later).then(pl.col("returns_1d") * 50 + 0.3).otherwise(pl.col("returns_1d")),
        pl.when(later).then(pl.col("dollar_volume") * 9).otherwise(pl.col("dollar_volume")),
    )
    a, b = _apply(df)
    s, _ = _apply(shocked)
    assert a.filter(~later).select(b.features).equals(s.filter(~later).select(b.features))


def test_sub_groups_switch_off_and_missing_dollar_volume_is_skipped():
    df = _frame()
    _, b = _apply(df, risk_adjusted=False, smart_money=False, outlier_flags=False, use_cross_sectional_quantiles=False)
    assert b.features == ["excess_ret_1d", "excess_ret_5d"]
    out, b = _apply(df.drop("dollar_volume"))
    assert "smart_money_index" not in out.columns and "smi_delta_5d" not in out.columns
    assert "smart_money" in b.skipped and "dollar_volume" in b.skipped
    assert set(b.features) == set(ALL) - {"smart_money_index", "smi_delta_5d"}


def test_prices_only_build_skips_smart_money_without_null_columns(mini_factory, cfg):
    """daily_quotes with only Date, Code, AdjC: no dollar_volume, so smart_money is skipped (noted, no column)."""
    t = mini_factory(n_stocks=4, n_days=130)
    dq = t["daily_quotes"].select("Date", "Code", "AdjC")
    b = build_features(
        {"daily_quotes": dq}, TradingCalendar.from_table(t["trading_calendar"]), cfg.features, cfg.labels
    )
    qual = [n for n, g in b.groups.items() if g == "quality"]
    assert set(qual) == set(ALL) - {"smart_money_index", "smi_delta_5d"}
    assert "smart_money" in b.skipped["quality"] and "smart_money_index" not in b.df.columns
    assert not [n for n in qual if b.df[n].null_count() == b.df.height]


def test_manifest_lists_quality_features(mini_built, cfg):
    man = FeatureManifest.from_frame(
        mini_built.df, mini_built.groups, list(cfg.labels.horizons), int(cfg.labels.entry_lag)
    )
    assert set(man.groups["quality"]) == set(ALL)
    dtypes = {f.name: f.dtype for f in man.features}
    assert all(dtypes[n] == ("Int8" if n in FLAGS else "Float32") for n in ALL)
    assert "quality" not in mini_built.skipped


def test_group_switch(mini_tables, mini_calendar):
    cfg = load_config(["features.groups.quality=false"])
    b = build_features(mini_tables, mini_calendar, cfg.features, cfg.labels)
    assert "quality" not in b.groups.values() and b.skipped["quality"] == "disabled in features.groups"
    assert "excess_ret_1d" not in b.df.columns
