"""Per-day residualisation against factor exposures (`evaluation.neutral`): hand-computed residuals, the rules for
missing exposures, small sectors and small days, point in time, the OLS it equals, a factor-structured market where
neutralising a predictor that carries factor bets brings its daily RankIC spread down to the signal's own, and a
book's factor exposures."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import polars as pl
import pytest

from gogooku3.core.errors import ConfigError, SchemaError
from gogooku3.evaluation import metrics
from gogooku3.evaluation.neutral import (
    Exposures,
    book_exposures,
    neutral_labels,
    neutralize,
    raw_and_neutral,
    residualize,
    with_labels,
)

D0 = dt.date(2024, 1, 4)


def _ex(sector: str | None = "S33", log=(), linear=(), min_sector_size: int = 1, min_stocks: int = 2) -> Exposures:
    return Exposures(sector, tuple(log), tuple(linear), min_sector_size, min_stocks)


def _day(y, sec=None, **cols) -> pl.DataFrame:
    n = len(y)
    return pl.DataFrame(
        {
            "Date": [D0] * n,
            "Code": [f"{i:04d}0" for i in range(n)],
            "S33": sec if sec is not None else ["A"] * n,
            "y": pl.Series([None if v is None else float(v) for v in y], dtype=pl.Float64),
            **cols,
        }
    )


def _res(df: pl.DataFrame, ex: Exposures) -> list[float | None]:
    return [None if v is None else round(v, 12) for v in residualize(df, ["y"], ex)["y"].to_list()]


def test_sector_dummies_demean_within_each_sector():
    df = _day([1, 2, 3, 10, 20, 30], sec=["A", "A", "A", "B", "B", "B"])
    assert _res(df, _ex()) == [-1.0, 0.0, 1.0, -10.0, 0.0, 10.0]


def test_one_numeric_exposure_and_an_intercept_by_hand():
    # y on [1, x]: x̄ = 1.5, ȳ = 4.25, Sxy = 11.5, Sxx = 5 -> b = 2.3, a = 0.8; fitted 0.8, 3.1, 5.4, 7.7
    df = _day([1, 3, 5, 8], beta=[0.0, 1.0, 2.0, 3.0])
    assert _res(df, _ex(sector=None, linear=["beta"])) == pytest.approx([0.2, -0.1, -0.4, 0.3])


def test_a_missing_or_non_positive_log_exposure_sits_at_its_sectors_mean():
    # log caps 0, 1, 2 and one cap of 0 (missing): x̃ = -1, 0, 1, 0; ỹ = y - 2 = -2, -1, 0, 3; slope 2 / 2 = 1
    df = _day([0, 1, 2, 5], cap=[1.0, math.e, math.e**2, 0.0])
    assert _res(df, _ex(log=["cap"])) == pytest.approx([-1.0, -1.0, -1.0, 3.0])
    nulled = df.with_columns(pl.when(pl.col("cap") > 0).then(pl.col("cap")).alias("cap"))
    assert _res(nulled, _ex(log=["cap"])) == pytest.approx([-1.0, -1.0, -1.0, 3.0])


def test_small_sectors_are_pooled_and_a_null_sector_is_a_group():
    df = _day([4, 8, 1, 2, 3], sec=["A", "B", "C", "C", "C"])
    assert _res(df, _ex(min_sector_size=2)) == [-2.0, 2.0, -1.0, 0.0, 1.0]
    # without pooling a sector of one stock has residual 0
    assert _res(df, _ex(min_sector_size=1))[:2] == [0.0, 0.0]
    nul = _day([1, 3, 10, 20], sec=[None, None, "C", "C"])
    assert _res(nul, _ex()) == [-1.0, 1.0, -5.0, 5.0]


def test_days_with_too_few_stocks_and_rows_without_a_value_are_null():
    small = _day([1, 2, 3, 4])
    big = _day([1, 2, 3, 4, 5]).with_columns(pl.lit(D0 + dt.timedelta(days=1)).alias("Date"))
    df = pl.concat([small, big])
    out = _res(df, _ex(min_stocks=5))
    assert out[:4] == [None] * 4 and out[4:] == [-2.0, -1.0, 0.0, 1.0, 2.0]
    gaps = _day([1.0, None, 3.0, float("nan"), 5.0])
    assert _res(gaps, _ex()) == [-2.0, None, 0.0, None, 2.0]


def test_equals_ols_with_sector_dummies_per_day_and_is_point_in_time():
    rng = np.random.default_rng(0)
    days = [D0 + dt.timedelta(days=k) for k in range(4)]
    n = 40
    df = pl.DataFrame(
        {
            "Date": pl.Series([d for d in days for _ in range(n)], dtype=pl.Date),
            "Code": [f"{i:04d}0" for i in range(n)] * len(days),
            "S33": rng.choice(["A", "B", "C"], n * len(days)),
            "cap": np.exp(rng.normal(22, 1, n * len(days))),
            "beta": rng.normal(1, 0.3, n * len(days)),
            "y": rng.normal(size=n * len(days)),
        }
    )
    ex = _ex(log=["cap"], linear=["beta"])
    got = residualize(df, ["y"], ex)
    for d in days:
        part = df.filter(pl.col("Date") == d)
        x = np.column_stack(
            [(part["S33"] == s).to_numpy().astype(float) for s in ("A", "B", "C")]
            + [np.log(part["cap"].to_numpy()), part["beta"].to_numpy()]
        )
        y = part["y"].to_numpy()
        want = y - x @ np.linalg.lstsq(x, y, rcond=None)[0]
        np.testing.assert_allclose(got.filter(pl.col("Date") == d)["y"].to_numpy(), want, atol=1e-10)
    # a later day's exposures never move an earlier day's residuals
    moved = df.with_columns(pl.when(pl.col("Date") == days[-1]).then(pl.col("beta") * 5).otherwise(pl.col("beta")))
    again = residualize(moved, ["y"], ex)
    early = pl.col("Date") < days[-1]
    assert again.filter(early)["y"].to_list() == got.filter(early)["y"].to_list()


def test_neutralize_joins_exposures_keeps_rows_and_dtype():
    preds = _day([1, 2, 3, 10, 20, 30]).select("Date", "Code", pl.col("y").cast(pl.Float32).alias("pred_1d"))
    expo = _day([0] * 6, sec=["A", "A", "A", "B", "B", "B"]).select("Date", "Code", "S33").reverse()
    out = neutralize(preds, ["pred_1d"], expo, _ex())
    assert out.columns == preds.columns and out["pred_1d"].dtype == pl.Float32
    assert out["pred_1d"].to_list() == [-1.0, 0.0, 1.0, -10.0, 0.0, 10.0]
    with pytest.raises(SchemaError, match="beta"):
        neutralize(preds, ["pred_1d"], expo, _ex(linear=["beta"]))


def test_labels_are_residualised_and_swapped_in_by_key():
    df = _day([1, 2, 3, 10, 20, 30], sec=["A", "A", "A", "B", "B", "B"]).rename({"y": "target_1d"})
    labels = neutral_labels(df, [1], _ex())
    assert labels.columns == ["Date", "Code", "target_1d"]
    swapped = with_labels(df.reverse(), labels)
    assert swapped["Code"].to_list() == df.reverse()["Code"].to_list()
    assert swapped["target_1d"].to_list() == [10.0, 0.0, -10.0, 1.0, 0.0, -1.0]


def test_exposures_config_is_checked():
    with pytest.raises(ConfigError, match="both"):
        _ex(log=["cap"], linear=["cap"])
    with pytest.raises(ConfigError, match="min_stocks"):
        _ex(min_stocks=1)


def _factor_market(n_days: int = 250, n: int = 60, seed: int = 1):
    """Returns = weak idiosyncratic signal + strong sector, size and beta factors + noise; predictions = the signal
    plus fixed factor bets (a sector tilt, long size and long beta)."""
    rng = np.random.default_rng(seed)
    sectors = np.array(list("ABCDEF"))[np.arange(n) % 6]
    size = rng.normal(0, 1, n)
    beta = np.clip(rng.normal(1, 0.5, n), 0.2, 2.0)
    tilt = {s: rng.normal() for s in "ABCDEF"}
    rows = []
    for k in range(n_days):
        d = D0 + dt.timedelta(days=k)
        s = rng.normal(0, 1, n)
        f_sec = {c: rng.normal(0, 1.5) for c in "ABCDEF"}
        r = (
            0.25 * s
            + np.array([f_sec[c] for c in sectors])
            + 1.2 * rng.normal() * size
            + 2.0 * rng.normal() * beta
            + rng.normal(0, 1, n)
        )
        bets = np.array([tilt[c] for c in sectors]) + size + 2 * beta
        rows.append(
            pl.DataFrame(
                {
                    "Date": [d] * n,
                    "Code": [f"{i:04d}0" for i in range(n)],
                    "S33": sectors,
                    "cap": np.exp(22 + size),
                    "beta": beta,
                    "pred_1d": s + bets,
                    "signal": s,
                    "target_1d": r,
                }
            )
        )
    return pl.concat(rows)


def test_on_a_factor_market_neutralising_brings_the_rankic_spread_down_to_the_signals():
    df = _factor_market()
    ex = _ex(log=["cap"], linear=["beta"], min_sector_size=3, min_stocks=20)
    neutral = neutralize(df, ["pred_1d"], df.select("Date", "Code", "S33", "cap", "beta"), ex)
    raw = metrics.summarize_ic(metrics.daily_ic(df, "pred_1d", "target_1d"))
    neu = metrics.summarize_ic(metrics.daily_ic(neutral, "pred_1d", "target_1d"))
    sig = metrics.summarize_ic(metrics.daily_ic(df, "signal", "target_1d"))
    assert raw["rank_ic_std"] > 2 * sig["rank_ic_std"]  # the bets dominate the daily swings
    # down to the signal's own or below (the neutral prediction also drops the signal's chance overlap with the
    # exposures on a day of 60 stocks, which the signal's own RankIC carries)
    assert neu["rank_ic_std"] < 1.1 * sig["rank_ic_std"]
    assert neu["rank_icir"] > 2 * raw["rank_icir"] and neu["rank_ic_tstat"] > 2
    table = raw_and_neutral({"p": df}, [1], df.select("Date", "Code", "S33", "cap", "beta"), ex)["p"]["1"]
    assert table["rows"] == df.height
    assert table["raw"]["rank_icir"] == pytest.approx(raw["rank_icir"])
    assert table["neutral"]["rank_icir"] == pytest.approx(neu["rank_icir"])


def test_book_exposures_by_hand():
    d1 = D0 + dt.timedelta(days=1)
    expo = pl.DataFrame(
        {
            "Date": [D0] * 4 + [d1] * 4,
            "Code": ["10", "20", "30", "40"] * 2,
            "S33": ["A", "A", "B", "B"] * 2,
            "cap": [math.e, math.e, math.e**3, math.e**3] * 2,  # log 1, 1, 3, 3: z -0.866 x2, +0.866 x2
            "beta": [1.5, 0.5, 1.0, 2.0] * 2,
        }
    )
    pos = pl.DataFrame(
        {
            "Date": [D0, D0, D0, d1, d1],
            "Code": ["10", "20", "30", "30", "10"],
            "w": [0.5, 0.5, -1.0, 1.0, -1.0],
        }
    )
    out = book_exposures(pos, expo, _ex(log=["cap"], linear=["beta"]))
    z = math.sqrt(3) / 2
    # cohort 1: size 0.5(-z) + 0.5(-z) - z = -2z, beta 0.75 + 0.25 - 1 = 0; cohort 2: size 2z, beta 1 - 1.5 = -0.5
    assert out["cohorts"] == 2
    assert out["numeric"]["cap"] == pytest.approx({"mean": 0.0, "mean_abs": 2 * z})
    assert out["numeric"]["beta"] == pytest.approx({"mean": -0.25, "mean_abs": 0.25})
    assert out["sectors"]["A"] == pytest.approx({"mean": 0.0, "mean_abs": 1.0})
    assert out["sectors"]["B"] == pytest.approx({"mean": 0.0, "mean_abs": 1.0})


def test_the_factor_market_experiment_and_the_beta_dispersion_knob():
    from gogooku3.config.compose import load_config
    from gogooku3.sources.synthetic.params import SynthParams
    from gogooku3.sources.synthetic.universe import make_universe

    cfg = load_config(["experiment=factor_market"])
    p = SynthParams.from_config(cfg)
    assert p.beta_sd == 0.5 and p.leadlag_coef == 0.0 and p.sector_vol > SynthParams().sector_vol
    wide = make_universe(p.replace(n_stocks=400), np.random.default_rng(0)).beta.std()
    narrow = make_universe(p.replace(n_stocks=400, beta_sd=0.1), np.random.default_rng(0)).beta.std()
    assert wide > 3 * narrow
    with pytest.raises(ConfigError, match="beta_sd"):
        SynthParams(beta_sd=-0.1)
