"""CrossSectionalNormalizer: per-day mean≈0/std≈1, day independence, nulls kept, no NaN, train-only pooled fit."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest
from scipy.stats import norm

from gogooku3.core.errors import ConfigError, SchemaError
from gogooku3.data.normalize import CrossSectionalNormalizer


def _frame(n_days=6, n_stocks=120, seed=0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    rows = n_days * n_stocks
    day = np.repeat(np.arange(n_days), n_stocks)
    a = rng.standard_t(4, rows) * (1 + day) + 10 * day  # scale and level drift over days
    b = rng.lognormal(0, 1, rows)
    a[::17] = np.nan  # NaN input must come out null, not NaN
    df = pl.DataFrame(
        {
            "Date": [dt.date(2024, 1, 1) + dt.timedelta(days=int(d)) for d in day],
            "Code": [f"{i:05d}" for i in np.tile(np.arange(n_stocks), n_days)],
            "a": a,
            "b": b,
        }
    ).with_columns(pl.when(pl.col("Code") == "00003").then(None).otherwise(pl.col("b")).alias("b"))
    return df


@pytest.mark.parametrize("method", ["robust_z", "rank_gauss"])
def test_per_day_moments_and_nulls(method):
    df = _frame()
    nz = CrossSectionalNormalizer(method, clip=5.0)
    out = nz.fit_transform(df, ["a", "b"])
    assert out.shape == df.shape and out["a"].dtype == pl.Float32
    # nulls stay where they were (NaN inputs become null), none introduced, no NaN anywhere
    assert out["b"].null_count() == df["b"].null_count()
    assert out["a"].null_count() == int(df["a"].is_nan().sum())
    assert int(out["a"].is_nan().sum()) == 0 and int(out["b"].is_nan().sum()) == 0
    daily = out.group_by("Date").agg(
        pl.col("a").median().alias("med"),
        pl.col("a").mean().alias("m"),
        pl.col("a").std().alias("s"),
        pl.col("a").abs().max().alias("mx"),
    )
    assert daily["med"].abs().max() < 0.05
    assert daily["m"].abs().max() < 0.25
    assert daily["s"].min() > 0.75 and daily["s"].max() < 1.4
    assert daily["mx"].max() <= 5.0 + 1e-6
    rep = nz.report(out)
    assert rep["mean_abs_deviation"] < 0.5 and 0.7 < rep["std_deviation"] < 2.0 and rep["nan_values"] == 0


def test_robust_z_formula_and_rank_gauss_values():
    df = pl.DataFrame({"Date": [dt.date(2024, 1, 1)] * 5, "Code": list("abcde"), "x": [1.0, 2.0, 3.0, 4.0, 100.0]})
    out = CrossSectionalNormalizer("robust_z", clip=5.0).fit_transform(df, ["x"])
    mad = 1.0 * 1.4826
    np.testing.assert_allclose(out["x"].to_numpy()[:4], (np.array([1, 2, 3, 4]) - 3) / mad, rtol=1e-5)
    assert out["x"][4] == pytest.approx(5.0)  # clipped
    rg = CrossSectionalNormalizer("rank_gauss", clip=None).fit_transform(df, ["x"])
    np.testing.assert_allclose(rg["x"].to_numpy(), norm.ppf((np.arange(1, 6) - 0.5) / 5), rtol=1e-5)


@pytest.mark.parametrize("method", ["robust_z", "rank_gauss"])
def test_day_independent_of_other_days(method):
    df = _frame(seed=1)
    nz = CrossSectionalNormalizer(method).fit(df, ["a", "b"])
    full = nz.transform(df)
    day0 = df["Date"].min()
    # Alter every other day wildly: day 0's output must not move.
    altered = df.with_columns(
        pl.when(pl.col("Date") != day0).then(pl.col("a") * 1e6 - 7).otherwise(pl.col("a")).alias("a")
    )
    alt = nz.transform(altered)
    a0 = full.filter(pl.col("Date") == day0)["a"].to_numpy()
    b0 = alt.filter(pl.col("Date") == day0)["a"].to_numpy()
    np.testing.assert_array_equal(a0, b0)
    only = nz.transform(df.filter(pl.col("Date") == day0))["a"].to_numpy()
    np.testing.assert_array_equal(a0, only)


def test_zero_mad_uses_day_std_then_train_fallback():
    d1, d2 = dt.date(2024, 1, 1), dt.date(2024, 1, 2)
    # day 1: mostly zeros (MAD 0, std > 0); day 2 in transform: constant (MAD 0, std 0) -> train-span std.
    train = pl.DataFrame({"Date": [d1] * 10, "Code": list("abcdefghij"), "f": [0.0] * 8 + [1.0, 3.0]})
    nz = CrossSectionalNormalizer("robust_z", clip=None).fit(train, ["f"])
    fb = nz.fallback_std_["f"]
    assert fb == pytest.approx(float(np.std([0.0] * 8 + [1.0, 3.0], ddof=1)))
    out = nz.transform(train)["f"].to_numpy()
    np.testing.assert_allclose(out[-1], 3.0 / fb, rtol=1e-5)  # day std == train std here
    test = pl.DataFrame({"Date": [d2] * 3, "Code": list("abc"), "f": [2.0, 2.0, 2.0]})
    np.testing.assert_allclose(nz.transform(test)["f"].to_numpy(), 0.0)
    assert not np.isnan(nz.transform(test)["f"].to_numpy()).any()
    # persistence round trip keeps the fitted fallback
    again = CrossSectionalNormalizer.from_dict(nz.to_dict())
    assert again.fallback_std_ == nz.fallback_std_


def test_errors_and_input_untouched():
    df = _frame(n_days=2, n_stocks=10)
    before = df.clone()
    with pytest.raises(ConfigError):
        CrossSectionalNormalizer("minmax")
    with pytest.raises(ConfigError):
        CrossSectionalNormalizer().transform(df)
    with pytest.raises(SchemaError, match="missing"):
        CrossSectionalNormalizer().fit(df, ["a", "zzz"])
    CrossSectionalNormalizer().fit_transform(df, ["a", "b"])
    assert df.equals(before)
    lazy = CrossSectionalNormalizer().fit_transform(df.lazy(), ["a"])
    assert isinstance(lazy, pl.LazyFrame) and lazy.collect().height == df.height


def _with_market(n_days=80, n_stocks=30, seed=1) -> pl.DataFrame:
    """A cross-sectional feature `a` and a day-level feature `mkt` (one value per day, shared by every stock)."""
    rng = np.random.default_rng(seed)
    mkt = np.cumsum(rng.normal(size=n_days)) + 100.0
    day = np.repeat(np.arange(n_days), n_stocks)
    return pl.DataFrame(
        {
            "Date": [dt.date(2024, 1, 1) + dt.timedelta(days=int(d)) for d in day],
            "Code": [f"{i:05d}" for i in np.tile(np.arange(n_stocks), n_days)],
            "a": rng.normal(size=n_days * n_stocks),
            "mkt": mkt[day],
        }
    )


def test_day_level_features_found_and_zero_by_default():
    df = _with_market()
    nz = CrossSectionalNormalizer("robust_z").fit(df, ["a", "mkt"])
    assert nz.day_level_ == ["mkt"]
    out = nz.transform(df)
    assert out["mkt"].abs().max() == 0.0  # day_level=zero: a per-day z-score of a shared value
    assert nz.history_days == 0


def test_day_level_time_z_is_point_in_time_and_round_trips():
    df = _with_market()
    nz = CrossSectionalNormalizer("robust_z", day_level="time_z", day_level_window=30).fit(df, ["a", "mkt"])
    out = nz.transform(df)
    per_day = out.group_by("Date").agg(pl.col("mkt").n_unique().alias("u"), pl.col("mkt").first()).sort("Date")
    assert per_day["u"].max() == 1  # still one value per day
    z = per_day["mkt"]
    assert z[:19].null_count() == 19 and z[19:].null_count() == 0  # undefined until 20 sessions exist
    assert float(z[19:].std()) > 0.3  # no longer all zero
    # by hand: day 40 against days 11..40
    raw = df.group_by("Date").agg(pl.col("mkt").first()).sort("Date")["mkt"].to_numpy()
    w = raw[11:41]
    assert abs(float(z[40]) - (raw[40] - w.mean()) / w.std(ddof=1)) < 1e-4
    # point in time: cutting the future changes nothing that is left
    cut = df.filter(pl.col("Date") <= dt.date(2024, 2, 20))
    out_cut = nz.transform(cut)
    merged = out_cut.join(out, on=["Date", "Code"], suffix="_full")
    assert np.allclose(merged["mkt"].fill_null(-9), merged["mkt_full"].fill_null(-9), atol=1e-6)
    # a frame that starts `history_days` before a day reproduces that day's value (what prediction does)
    assert nz.history_days == 29
    day = dt.date(2024, 3, 10)
    sub = df.filter(pl.col("Date").is_between(day - dt.timedelta(days=nz.history_days), day))
    v_sub = nz.transform(sub).filter(pl.col("Date") == day)["mkt"][0]
    v_full = out.filter(pl.col("Date") == day)["mkt"][0]
    assert abs(v_sub - v_full) < 1e-6
    # settings and the fitted list survive the bundle's dict round trip
    again = CrossSectionalNormalizer.from_dict(nz.to_dict())
    assert again.day_level_ == ["mkt"] and again.day_level == "time_z" and again.day_level_window == 30
    assert out.equals(again.transform(df))


def test_day_level_option_checked():
    with pytest.raises(ConfigError, match="day_level"):
        CrossSectionalNormalizer("robust_z", day_level="drop")
    with pytest.raises(ConfigError, match="day_level_window"):
        CrossSectionalNormalizer("robust_z", day_level="time_z", day_level_window=5)
