"""Metrics against scipy/numpy hand computations, ties, missing values and edge cases."""

from __future__ import annotations

import math
from datetime import date, timedelta

import numpy as np
import polars as pl
import pytest
from scipy import stats

from gogooku3.core.errors import SchemaError
from gogooku3.evaluation import metrics


def _panel(n_days: int = 40, n_stocks: int = 30, seed: int = 0, noise: float = 1.0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    dates = [date(2021, 12, 1) + timedelta(days=i) for i in range(n_days)]
    y = rng.normal(size=(n_days, n_stocks))
    p = y + noise * rng.normal(size=(n_days, n_stocks))
    return pl.DataFrame(
        {
            "Date": pl.Series([d for d in dates for _ in range(n_stocks)], dtype=pl.Date),
            "Code": [f"{1000 + j}0" for _ in range(n_days) for j in range(n_stocks)],
            "pred_1d": p.ravel(),
            "target_1d": y.ravel(),
        }
    )


def test_daily_ic_matches_scipy_with_ties_and_missing():
    d1, d2 = date(2024, 1, 4), date(2024, 1, 5)
    p1 = [0.1, 0.1, 0.3, None, 0.5, 0.2, float("nan"), 0.7]
    y1 = [1.0, 2.0, 2.0, 5.0, 3.0, None, 1.0, 4.0]
    p2 = [3.0, 1.0, 2.0, 2.0, 5.0, 6.0]
    y2 = [0.3, 0.1, 0.1, 0.2, 0.6, 0.5]
    df = pl.DataFrame(
        {"Date": [d1] * 8 + [d2] * 6, "pred": p1 + p2, "y": y1 + y2},
        schema={"Date": pl.Date, "pred": pl.Float32, "y": pl.Float64},
    )
    out = metrics.daily_ic(df, "pred", "y")
    assert out["Date"].to_list() == [d1, d2]
    # day 1 pairwise drop: rows 3 (null pred), 5 (null y), 6 (NaN pred) go -> 5 pairs
    keep = [0, 1, 2, 4, 7]
    a = np.array([p1[i] for i in keep], dtype=np.float32).astype(np.float64)
    b = np.array([y1[i] for i in keep])
    assert out["n"].to_list() == [5, 6]
    assert out["ic"][0] == pytest.approx(stats.pearsonr(a, b)[0], abs=1e-12)
    assert out["rank_ic"][0] == pytest.approx(stats.spearmanr(a, b)[0], abs=1e-12)
    assert out["ic"][1] == pytest.approx(stats.pearsonr(p2, y2)[0], abs=1e-12)
    assert out["rank_ic"][1] == pytest.approx(stats.spearmanr(p2, y2)[0], abs=1e-12)


def test_days_too_small_or_with_constant_target_are_excluded_and_a_constant_prediction_scores_zero():
    d = [date(2024, 1, i) for i in (4, 5, 9)]
    df = pl.DataFrame(
        {
            "Date": [d[0]] * 4 + [d[1]] * 6 + [d[2]] * 6,
            "p": [1.0, 2, 3, 4] + [1.0] * 6 + [1.0, 2, 3, 4, 5, 6],
            "y": [1.0, 2, 3, 4] + [1.0, 2, 3, 4, 5, 6] + [0.5] * 6,
        }
    )
    # 4 < 5 stocks: out; constant target: out; constant prediction: counted as IC 0
    out = metrics.daily_ic(df, "p", "y")
    assert out["Date"].to_list() == [d[1]]
    assert out["ic"].to_list() == [0.0] and out["rank_ic"].to_list() == [0.0] and out["constant"].to_list() == [True]
    assert metrics.daily_ic(df, "p", "y", min_stocks=4)["Date"].to_list() == [d[0], d[1]]
    s = metrics.summarize_ic(out)
    assert s["n_days"] == 1 and s["n_constant_days"] == 1 and s["rank_ic_mean"] == 0.0
    s = metrics.summarize_ic(metrics.daily_ic(df.filter(pl.col("Date") == d[2]), "p", "y"))
    assert s["n_days"] == 0 and math.isnan(s["rank_ic_mean"])


def test_a_constant_prediction_day_pulls_the_mean_ic_down():
    """A collapsed day is not dropped: with two perfect days and one constant one the mean RankIC is 2/3."""
    df = _panel(n_days=3, n_stocks=10, seed=1).with_columns(pred_1d=pl.col("target_1d"))
    df = df.with_columns(pred_1d=pl.when(pl.col("Date") == df["Date"].max()).then(0.5).otherwise(pl.col("pred_1d")))
    s = metrics.evaluate(df, [1])["1"]
    assert s["n_days"] == 3 and s["n_constant_days"] == 1
    assert s["rank_ic_mean"] == pytest.approx(2 / 3)


def test_perfect_reversed_and_random_predictors():
    df = _panel(noise=1.0)
    perfect = df.with_columns(pred_1d=pl.col("target_1d") * 3 + 1)
    reversed_ = df.with_columns(pred_1d=-pl.col("target_1d"))
    rng = np.random.default_rng(1)
    big = _panel(n_days=200, n_stocks=50, seed=3).with_columns(pred_1d=pl.Series(rng.normal(size=200 * 50)))
    assert metrics.summarize_ic(metrics.daily_ic(perfect, "pred_1d", "target_1d"))["rank_ic_mean"] == pytest.approx(1.0)
    assert metrics.summarize_ic(metrics.daily_ic(reversed_, "pred_1d", "target_1d"))["rank_ic_mean"] == pytest.approx(
        -1.0
    )
    s = metrics.summarize_ic(metrics.daily_ic(big, "pred_1d", "target_1d"))
    assert abs(s["rank_ic_mean"]) < 0.03 and abs(s["rank_ic_tstat"]) < 4
    assert metrics.hit_rate(perfect, "pred_1d", "target_1d") == pytest.approx(1.0)
    assert metrics.hit_rate(reversed_, "pred_1d", "target_1d") == pytest.approx(0.0)
    assert abs(metrics.hit_rate(big, "pred_1d", "target_1d") - 0.5) < 0.02


def test_summary_formulas_by_hand():
    df = _panel(n_days=25, seed=5)
    daily = metrics.daily_ic(df, "pred_1d", "target_1d")
    s = metrics.summarize_ic(daily)
    x = daily["rank_ic"].to_numpy()
    assert s["n_days"] == 25
    assert s["rank_ic_mean"] == pytest.approx(x.mean())
    assert s["rank_ic_std"] == pytest.approx(x.std(ddof=1))
    assert s["rank_icir"] == pytest.approx(x.mean() / x.std(ddof=1))
    assert s["rank_ic_tstat_naive"] == pytest.approx(x.mean() / x.std(ddof=1) * math.sqrt(25))
    lag = metrics.hac_lag(25, 1)
    assert s["hac_lag"] == lag == 2 and s["tstat_method"] == "newey_west"  # floor(4 * 0.25^(2/9)) = 2
    u = x - x.mean()
    var = (u @ u + 2 * sum((1 - j / (lag + 1)) * (u[j:] @ u[:-j]) for j in range(1, lag + 1))) / 25
    assert s["rank_ic_tstat"] == pytest.approx(x.mean() / math.sqrt(var / 25))
    assert s["rank_ic_pos_share"] == pytest.approx((x > 0).mean())
    ic = daily["ic"].to_numpy()
    assert s["icir"] == pytest.approx(ic.mean() / ic.std(ddof=1))


def test_hit_rate_by_hand():
    d = date(2024, 2, 1)
    # medians: p -> 3, y -> 0.3 ; the median row (p=3) is left out
    df = pl.DataFrame({"Date": [d] * 5, "p": [1.0, 2, 3, 4, 5], "y": [0.1, 0.5, 0.3, 0.4, 0.2]})
    # signs vs medians: p -,-,0,+,+ ; y -,+,0,+,- -> agree on rows 0 and 3 of 4 valid pairs
    assert metrics.hit_rate(df, "p", "y") == pytest.approx(0.5)


def test_quantile_returns_and_spread_by_hand():
    d1, d2 = date(2024, 3, 1), date(2024, 3, 4)
    p = list(range(10))
    y1 = [float(v) for v in range(10)]
    y2 = [float(-v) for v in range(10)]
    df = pl.DataFrame(
        {"Date": [d1] * 10 + [d2] * 10, "p": p + p, "y": y1 + y2},
        schema={"Date": pl.Date, "p": pl.Float64, "y": pl.Float64},
    )
    q = metrics.quantile_returns(df, "p", "y", q=5)
    # quintile k holds predictions 2(k-1), 2k-1: day 1 mean 2k-1.5, day 2 the negative -> mean over days 0
    assert q["quantile"].to_list() == [1, 2, 3, 4, 5]
    assert q["mean_return"].to_list() == pytest.approx([0.0] * 5)
    dq = metrics.daily_quantile_returns(df, "p", "y", q=5)
    assert dq.filter(pl.col("Date") == d1)["ret"].to_list() == pytest.approx([0.5, 2.5, 4.5, 6.5, 8.5])
    sp = metrics.daily_spread(df, "p", "y", q=5)
    assert sp["spread"].to_list() == pytest.approx([8.0, -8.0])
    assert metrics.top_bottom_spread(df.filter(pl.col("Date") == d1), "p", "y") == pytest.approx(8.0)


def test_quantile_ties_share_a_bucket():
    d = date(2024, 3, 1)
    df = pl.DataFrame(
        {"Date": [d] * 10, "p": [0.0] * 5 + list(map(float, range(1, 6))), "y": list(map(float, range(10)))}
    )
    dq = metrics.daily_quantile_returns(df, "p", "y", q=5)
    # five tied predictions have average rank 3 -> bucket 2, ranks 6..10 -> buckets 3,4,4,5,5
    assert dq["quantile"].to_list() == [2, 3, 4, 5]
    assert dq["n"].to_list() == [5, 1, 2, 2]


def test_evaluate_per_period_and_errors():
    df = _panel(n_days=62, seed=2)  # spans Dec 2021 to Jan 2022
    df = df.with_columns(pred_5d=pl.col("pred_1d"), target_5d=pl.col("target_1d") * 2)
    ev = metrics.evaluate(df, [1, 5])
    assert set(ev) == {"1", "5"}
    daily = metrics.daily_ic(df, "pred_1d", "target_1d")
    assert ev["1"]["rank_ic_mean"] == pytest.approx(metrics.summarize_ic(daily)["rank_ic_mean"])
    assert ev["5"]["rank_ic_mean"] == pytest.approx(ev["1"]["rank_ic_mean"])  # rank-invariant to scaling
    assert {"hit_rate", "top_bottom_spread", "n_days", "icir"} <= set(ev["1"])
    assert ev["1"]["top_bottom_spread"] > 0
    years = metrics.per_period(daily, "year")
    assert years["period"].to_list() == ["2021", "2022"]
    assert years["n_days"].sum() == 62
    jan = daily.filter(pl.col("Date").dt.year() == 2022)["rank_ic"]
    assert years["rank_ic_mean"][1] == pytest.approx(jan.mean())
    assert metrics.per_period(daily, "month").height == 2
    with pytest.raises(SchemaError, match="target_20d"):
        metrics.evaluate(df, [20])
    with pytest.raises(Exception, match="period"):
        metrics.per_period(daily, "week")


def test_paired_comparison_by_hand():
    good = _panel(n_days=50, seed=7, noise=0.5)
    bad = good.with_columns(
        pred_1d=pl.col("pred_1d") + pl.Series(np.random.default_rng(9).normal(size=good.height) * 3)
    )
    da = metrics.daily_ic(good, "pred_1d", "target_1d")
    db = metrics.daily_ic(bad, "pred_1d", "target_1d").slice(5)  # only the common days count
    res = metrics.paired_comparison(da, db)
    j = da.join(db, on="Date", suffix="_b")
    d = (j["rank_ic"] - j["rank_ic_b"]).to_numpy()
    assert res["n_days"] == 45
    assert res["mean_diff"] == pytest.approx(d.mean())
    assert res["t_stat_naive"] == pytest.approx(d.mean() / d.std(ddof=1) * math.sqrt(45))
    ref = stats.ttest_rel(j["rank_ic"].to_numpy(), j["rank_ic_b"].to_numpy())
    assert res["t_stat_naive"] == pytest.approx(ref.statistic)
    nw = metrics.mean_tstat(d, 1)
    assert res["t_stat"] == pytest.approx(nw["tstat"]) and res["hac_lag"] == nw["hac_lag"] == metrics.hac_lag(45)
    assert res["p_value"] == pytest.approx(2 * stats.t.sf(abs(nw["tstat"]), 44))
    assert res["tstat_method"] == "newey_west"
    long = metrics.paired_comparison(da, db, horizon=5)  # overlapping 5-day labels: EWC, B = floor(0.4 · 45 / 5) = 3
    assert long["tstat_method"] == "ewc" and long["hac_lag"] is None and long["tstat_dof"] == 3
    assert long["p_value"] == pytest.approx(2 * stats.t.sf(abs(long["t_stat"]), 3))
    assert res["mean_diff"] > 0 and res["mean_a"] > res["mean_b"]


def test_training_rank_ic_matches_the_metrics_module():
    """The validation loop's on-device RankIC is the same definition as metrics.daily_ic, ties included."""
    import torch

    from gogooku3.evaluation.device_metrics import rank_ic

    rng = np.random.default_rng(3)
    p = np.round(rng.normal(size=40), 1)  # rounding makes ties
    y = np.round(rng.normal(size=40), 1)
    df = pl.DataFrame({"Date": [date(2024, 1, 4)] * 40, "pred": p, "y": y})
    expected = metrics.daily_ic(df, "pred", "y")["rank_ic"][0]
    got = float(rank_ic(torch.tensor(p), torch.tensor(y)))
    assert abs(got - expected) < 1e-6


def _ar1(n: int, phi: float, mean: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    e = rng.normal(scale=0.05, size=n)
    x = np.empty(n)
    x[0] = e[0]
    for t in range(1, n):
        x[t] = phi * x[t - 1] + e[t]
    return mean + x


@pytest.mark.parametrize(("phi", "horizon"), [(0.0, 1), (0.72, 5), (0.88, 20)])
def test_newey_west_matches_statsmodels_on_ar1_ics(phi, horizon):
    """HAC t of a simulated AR(1) daily IC series equals statsmodels' (OLS on a constant, HAC, same lag) within 1 %.
    (Since issue 21 `mean_tstat` uses Newey–West only at h = 1; the lags h − 1 are checked on `newey_west_se`.)"""
    sm = pytest.importorskip("statsmodels.api")
    x = _ar1(500, phi, 0.02, seed=int(phi * 100) + horizon)
    lag = max(horizon - 1, math.floor(4 * (500 / 100) ** (2 / 9)))
    tstat = x.mean() / metrics.newey_west_se(x, lag)
    res = metrics.mean_tstat(x, 1)
    if horizon == 1:
        assert res["hac_lag"] == lag and res["tstat_method"] == "newey_west" and res["tstat"] == tstat
    ols = sm.OLS(x, np.ones_like(x))
    ref = ols.fit(cov_type="HAC", cov_kwds={"maxlags": lag, "use_correction": False}).tvalues[0]
    assert tstat == pytest.approx(ref, rel=0.01)
    default = ols.fit(cov_type="HAC", cov_kwds={"maxlags": lag}).tvalues[0]  # statsmodels' small-sample correction
    assert tstat == pytest.approx(default, rel=0.01)
    if phi > 0.5:  # autocorrelated ICs: the naive t overstates
        assert res["tstat_naive"] > 1.5 * tstat


def test_hac_lag_rule():
    assert metrics.hac_lag(100, 1) == 4 and metrics.hac_lag(100, 20) == 19
    assert metrics.hac_lag(1000, 1) == math.floor(4 * 10 ** (2 / 9)) == 6
    assert metrics.hac_lag(5, 20) == 4 and metrics.hac_lag(1, 5) == 0  # never beyond n - 1


def test_evaluate_uses_the_horizon_for_the_t_and_so_does_per_period():
    df = _panel(n_days=62, seed=2).with_columns(pred_20d=pl.col("pred_1d"), target_20d=pl.col("target_1d"))
    ev = metrics.evaluate(df, [1, 20])
    assert ev["1"]["hac_lag"] == metrics.hac_lag(62, 1) and ev["1"]["tstat_method"] == "newey_west"
    assert ev["1"]["tstat_dof"] == 61
    assert ev["20"]["tstat_method"] == "ewc" and ev["20"]["hac_lag"] is None and ev["20"]["tstat_dof"] == 1  # 0.4·62/20
    assert ev["1"]["rank_ic_tstat_naive"] == pytest.approx(ev["20"]["rank_ic_tstat_naive"])
    years = metrics.per_period(metrics.daily_ic(df, "pred_1d", "target_1d"), "year", horizon=5)
    jan = metrics.daily_ic(df, "pred_1d", "target_1d").filter(pl.col("Date").dt.year() == 2022)
    row = years.filter(pl.col("period") == "2022").row(0, named=True)
    assert row["tstat_dof"] == 2 * jan.height // 25 >= 1 and row["tstat_method"] == "ewc" and row["hac_lag"] is None
    assert row["rank_ic_tstat"] == pytest.approx(metrics.mean_tstat(jan["rank_ic"], 5)["tstat"])


def test_align_rows_compares_predictors_on_identical_rows():
    """The model lacks the rows without a full window and one prediction; the baseline scores every row; the oracle
    misses a stock: every frame keeps only the rows all of them have, and the exclusions are counted."""
    full = _panel(n_days=10, n_stocks=8, seed=4)
    model = full.filter(pl.col("Date") > full["Date"].min())  # no window on the first day
    model = model.with_columns(
        pred_1d=pl.when((pl.col("Code") == "10030") & (pl.col("Date") == model["Date"].max()))
        .then(None)
        .otherwise(pl.col("pred_1d"))
    )
    base = full.with_columns(pred_1d=pl.col("pred_1d") * 0.5 + pl.col("target_1d"))
    oracle = full.filter(pl.col("Code") != "10070").with_columns(pred_1d=pl.col("target_1d"))
    same, rows = metrics.align_rows({"model": model, "baseline": base, "oracle": oracle, "none": None}, [1])
    keys = {n: set(f.select("Date", "Code").iter_rows()) for n, f in same.items()}
    assert set(same) == {"model", "baseline", "oracle"}
    assert keys["model"] == keys["baseline"] == keys["oracle"]
    assert rows["n_common"] == len(keys["model"]) == 9 * 7 - 1
    m, b = rows["frames"]["model"], rows["frames"]["baseline"]
    assert m["rows"] == 72 and m["excluded_null_prediction"] == 1 and m["excluded_absent_in"]["oracle"] == 9
    assert b["kept"] == 62 and b["excluded_absent_in"]["model"] == 9
    # the paired test on the aligned frames joins the same rows' daily ICs
    da = metrics.daily_ic(same["model"], "pred_1d", "target_1d")
    db = metrics.daily_ic(same["baseline"], "pred_1d", "target_1d")
    assert (da["n"] == db["n"]).all()
    assert metrics.paired_comparison(da, db)["n_days"] == 9
