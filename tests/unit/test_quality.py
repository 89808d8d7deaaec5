"""Quality features: point-in-time, per-day flags, switchable groups, no overwrite."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from gogooku3.errors import SchemaError
from gogooku3.features.quality import QualityFinancialFeaturesGenerator


def _frame(n_days=60, n_stocks=30, seed=0):
    rng = np.random.default_rng(seed)
    d = [dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(n_days)]
    r = rng.normal(0, 0.02, (n_days, n_stocks)) * np.linspace(0.5, 2, n_stocks)
    dv = rng.lognormal(15, 0.5, (n_days, n_stocks))
    return pl.DataFrame({"Code": [f"{i:05d}" for i in range(n_stocks)] * n_days,
                         "Date": [a for a in d for _ in range(n_stocks)],
                         "returns_1d": r.ravel(), "dollar_volume": dv.ravel()}).sort("Code", "Date")


def test_columns_counts_and_values():
    df = _frame()
    out, new, rep = QualityFinancialFeaturesGenerator().generate(df)
    assert rep["original_columns"] == 4 and rep["enhanced_columns"] == 4 + len(new) == out.width
    assert {"sharpe_5d", "sharpe_20d", "smart_money_index", "smi_delta_5d", "ret_outlier_up_flag",
            "vol_cs_quantile", "high_vol_flag", "low_vol_flag", "excess_ret_1d", "excess_ret_5d"} <= set(new)
    # excess return sums to 0 each day; flags are Int8 and consistent with the cross-sectional z
    assert out.group_by("Date").agg(pl.col("excess_ret_1d").sum().abs())["excess_ret_1d"].max() < 1e-6
    assert out["ret_outlier_up_flag"].dtype == pl.Int8
    z = out.with_columns(((pl.col("returns_1d") - pl.col("returns_1d").mean().over("Date"))
                          / pl.col("returns_1d").std().over("Date")).alias("z"))
    assert (z["ret_outlier_up_flag"] == (z["z"] > 2.0).cast(pl.Int8)).all()
    # sharpe_5d of one stock on one day from its own past only
    one = out.filter(pl.col("Code") == "00003")
    r = one["returns_1d"].to_numpy()
    t = 30
    expect = r[t - 4:t + 1].sum() / (np.std(r[t - 19:t + 1], ddof=1) * np.sqrt(5))
    assert one["sharpe_5d"][t] == pytest.approx(expect, rel=1e-4)
    assert one["sharpe_5d"][:19].null_count() == 19   # 20-day vol needs 20 observations
    q = out.filter(pl.col("vol_cs_quantile").is_not_null())
    assert ((q["high_vol_flag"] == 1) == (q["vol_cs_quantile"] >= 0.8)).all()


def test_point_in_time_future_change_does_not_move_past():
    df = _frame()
    dates = df["Date"].unique().sort()
    cut = dates[40]
    shocked = df.with_columns(pl.when(pl.col("Date") > cut).then(pl.col("returns_1d") * 50 + 0.3)
                              .otherwise(pl.col("returns_1d")).alias("returns_1d"),
                              pl.when(pl.col("Date") > cut).then(pl.col("dollar_volume") * 9)
                              .otherwise(pl.col("dollar_volume")).alias("dollar_volume"))
    gen = QualityFinancialFeaturesGenerator()
    a, new, _ = gen.generate(df)
    b, _, _ = gen.generate(shocked)
    pa = a.filter(pl.col("Date") <= cut).select(new)
    pb = b.filter(pl.col("Date") <= cut).select(new)
    assert pa.equals(pb)


def test_groups_switch_off_and_errors():
    df = _frame()
    gen = QualityFinancialFeaturesGenerator(risk_adjusted=False, smart_money=False, outlier_flags=False,
                                            use_cross_sectional_quantiles=False, excess_returns=True)
    out, new, _ = gen.generate(df)
    assert new == ["excess_ret_1d", "excess_ret_5d"]
    _, new2, rep = QualityFinancialFeaturesGenerator().generate(df.drop("dollar_volume"))
    assert "smart_money_index" not in new2 and "smart_money" in rep["skipped_groups"]
    with pytest.raises(SchemaError, match="returns_1d"):
        QualityFinancialFeaturesGenerator().generate(df.drop("returns_1d"))
    with pytest.raises(SchemaError, match="overwrite"):
        QualityFinancialFeaturesGenerator().generate(df.with_columns(pl.lit(0.0).alias("excess_ret_1d")))
    lazy, _, _ = QualityFinancialFeaturesGenerator().generate(df.lazy())
    assert isinstance(lazy, pl.LazyFrame) and lazy.collect().height == df.height
