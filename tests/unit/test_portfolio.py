"""Backtest: turnover and costs by hand, sign convention, summary formulas, filters and bad input."""

from __future__ import annotations

import math
from datetime import date, timedelta

import numpy as np
import polars as pl
import pytest

from gogooku3.config.compose import load_config
from gogooku3.core.errors import ConfigError, DataError, SchemaError
from gogooku3.evaluation.backtest.config import BacktestConfig
from gogooku3.evaluation.backtest.engine import backtest
from gogooku3.evaluation.backtest.run import run_backtest
from gogooku3.features.manifest import FeatureManifest, manifest_path

CODES = [f"1{j:03d}0" for j in range(10)]
D = [date(2024, 1, 4), date(2024, 1, 5), date(2024, 1, 9)]
# targets per day for c0..c9
Y = [
    [-0.02, -0.01, 0.0, 0.0, 0.0, 0.0, 0.0, 0.01, 0.03, 0.02],
    [-0.01, 0.01, -0.03, 0.0, 0.0, 0.0, 0.0, 0.02, 0.01, 0.04],
    [0.01, 0.00, 0.02, 0.0, 0.0, 0.0, 0.0, -0.01, 0.0, 0.03],
]
# day 1 ranks c0 < c1 < ... < c9; days 2-3 swap c1<->c2 and c7<->c8
P = [list(range(10)), [0, 2, 1, 3, 4, 5, 6, 8, 7, 9], [0, 2, 1, 3, 4, 5, 6, 8, 7, 9]]


def _hand_frame() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "Date": [d for d in D for _ in CODES],
            "Code": CODES * 3,
            "pred_1d": [float(v) for row in P for v in row],
            "target_1d": [v for row in Y for v in row],
        },
        schema={"Date": pl.Date, "Code": pl.String, "pred_1d": pl.Float32, "target_1d": pl.Float32},
    )


def test_three_day_example_by_hand():
    res = backtest(_hand_frame(), horizon=1, cost_bps=5.0)
    d = res.daily
    assert d["Date"].to_list() == D
    assert d["n_long"].to_list() == [2, 2, 2] and d["n_short"].to_list() == [2, 2, 2]
    # day 1: long c8,c9 short c0,c1 ; day 2/3: long c7,c9 short c0,c2
    g1 = 0.5 * (0.03 + 0.02) - 0.5 * (-0.02 - 0.01)
    g2 = 0.5 * (0.02 + 0.04) - 0.5 * (-0.01 - 0.03)
    g3 = 0.5 * (-0.01 + 0.03) - 0.5 * (0.01 + 0.02)
    assert d["gross"].to_list() == pytest.approx([g1, g2, g3], abs=1e-7)
    # build = 2.0; day 2 sells day 1's book as it drifted (c8 0.5·1.03, c9 0.5·1.02, c0 −0.5·0.98, c1 −0.5·0.99)
    # and buys c7, c9 / shorts c0, c2 at 0.5; day 3 re-targets day 2's drifted book to 0.5 each
    t2 = 0.5 + 0.515 + 0.01 + 0.01 + 0.495 + 0.5
    t3 = 0.01 + 0.02 + 0.005 + 0.015
    assert d["turnover"].to_list() == pytest.approx([2.0, t2, t3], abs=1e-6)
    assert res.summary["avg_turnover_undrifted"] == pytest.approx(4 / 3)  # Σ|w_t − w_{t−1}|: the drift left out
    cost = [5e-4 * t for t in (2.0, t2, t3)]
    assert d["cost"].to_list() == pytest.approx(cost, abs=1e-9)
    assert d["net"].to_list() == pytest.approx([g1 - cost[0], g2 - cost[1], g3 - cost[2]], abs=1e-7)
    assert d["long"][0] == pytest.approx(0.025, abs=1e-7) and d["short"][0] == pytest.approx(-0.015, abs=1e-7)
    s = res.summary
    net = np.array([g1 - cost[0], g2 - cost[1], g3 - cost[2]])
    assert s["periods_per_year"] == 245.0  # a 6-day calendar: the TSE's sessions a year
    assert s["sharpe"] == pytest.approx(net.mean() / net.std(ddof=1) * math.sqrt(245), rel=1e-5)
    assert s["ann_return"] == pytest.approx(net.mean() * 245, rel=1e-5)
    assert s["avg_turnover"] == pytest.approx((2.0 + t2 + t3) / 3, abs=1e-6)
    eq = np.cumprod(1 + net)
    assert s["max_drawdown"] == pytest.approx(
        min(0.0, (eq / np.maximum.accumulate(np.r_[1.0, eq])[1:] - 1).min()), abs=1e-9
    )
    assert s["win_rate"] == pytest.approx(2 / 3)
    # top quintile benchmark (c8,c9 on day 1) and universe mean
    assert d["top_quantile"][0] == pytest.approx(0.025, abs=1e-7)
    assert d["universe"][0] == pytest.approx(np.mean(Y[0]), abs=1e-7)


def test_cost_difference_is_rate_times_turnover():
    rng = np.random.default_rng(0)
    n_days, n = 30, 40
    df = pl.DataFrame(
        {
            "Date": [date(2023, 1, 2) + timedelta(days=i) for i in range(n_days) for _ in range(n)],
            "Code": [f"{j:05d}" for _ in range(n_days) for j in range(n)],
            "pred_1d": rng.normal(size=n_days * n),
            "target_1d": rng.normal(scale=0.02, size=n_days * n),
        }
    )
    free = backtest(df, cost_bps=0.0).daily
    paid = backtest(df, cost_bps=5.0).daily
    assert (free["net"] - paid["net"]).to_list() == pytest.approx((5e-4 * paid["turnover"]).to_list(), abs=1e-12)
    assert free["turnover"].to_list() == paid["turnover"].to_list()
    assert free["turnover"][0] == pytest.approx(2.0)
    assert all(0 <= t <= 4.0 + 1e-12 for t in paid["turnover"])


def test_higher_prediction_is_long():
    df = _hand_frame()
    good = backtest(df.with_columns(pred_1d=pl.col("target_1d")), cost_bps=0.0)
    bad = backtest(df.with_columns(pred_1d=-pl.col("target_1d")), cost_bps=0.0)
    assert (good.daily["gross"] > 0).all() and (bad.daily["gross"] < 0).all()
    assert good.daily["gross"].to_list() == pytest.approx((-bad.daily["gross"]).to_list())
    assert good.quantiles["mean_return"][-1] > good.quantiles["mean_return"][0]


def test_score_weights_and_leg_sums():
    df = _hand_frame()
    res = backtest(df, weighting="score", cost_bps=0.0)
    # day 1: |p - median 4.5| -> long c8 3.5, c9 4.5 ; short c0 4.5, c1 3.5 (each leg normalised to 1)
    g1 = (3.5 * 0.03 + 4.5 * 0.02) / 8 - (4.5 * -0.02 + 3.5 * -0.01) / 8
    assert res.daily["gross"][0] == pytest.approx(g1, abs=1e-7)
    assert res.daily["turnover"][0] == pytest.approx(2.0)


def test_horizon_forms_a_cohort_every_session():
    rng = np.random.default_rng(1)
    dates = [date(2023, 3, 1) + timedelta(days=i) for i in range(12)]
    df = pl.DataFrame(
        {
            "Date": [d for d in dates for _ in range(20)],
            "Code": [f"{j:05d}" for _ in dates for j in range(20)],
            "pred_5d": rng.normal(size=240),
            "target_5d": rng.normal(scale=0.03, size=240),
            "target_1d": rng.normal(scale=0.01, size=240),
        }
    )
    res = backtest(df, horizon=5)
    assert res.daily["Date"].to_list() == dates  # one daily series, a cohort formed on every date
    assert res.summary["n_cohorts"] == 12 and res.summary["holding_sessions"] == 5
    assert res.summary["periods_per_year"] == pytest.approx(245)
    net = res.daily["net"].to_numpy()
    assert res.summary["sharpe"] == pytest.approx(net.mean() / net.std(ddof=1) * math.sqrt(245))
    assert res.daily["exposure"][0] == pytest.approx(2 / 5)  # the first cohort: 1/5 of the capital, gross 2
    with pytest.raises(SchemaError, match="pred_1d"):
        backtest(df, horizon=1)
    with pytest.raises(DataError, match="target_1d"):  # no prices, no 1-day label: no daily P&L for h > 1
        backtest(df.drop("target_1d"), horizon=5)


def test_price_and_liquidity_filters():
    df = _hand_frame().with_columns(
        Close=pl.when(pl.col("Code") == CODES[9]).then(50.0).otherwise(500.0), dollar_volume=pl.lit(1e9)
    )
    res = backtest(df, min_price=100.0, min_adv=1e8, min_names=5, cost_bps=0.0)
    # c9 gone: 9 names -> legs of 1 (floor(0.2*9)); day 1 long c8 short c0
    assert res.daily["n_long"].to_list() == [1, 1, 1]
    assert res.daily["gross"][0] == pytest.approx(0.03 - (-0.02), abs=1e-7)
    with pytest.raises(ConfigError, match="Close"):
        backtest(_hand_frame(), min_price=1.0)
    with pytest.raises(DataError, match="filters"):
        backtest(df, min_adv=2e9)
    with pytest.raises(DataError, match="eligible names"):
        backtest(df, min_price=100.0)  # 9 names < min_names 10 on every date


def test_mean_variance_is_dollar_neutral_and_follows_predictions():
    df = _hand_frame().with_columns(volatility_20d=pl.lit(0.02) + pl.col("pred_1d") * 0.001)
    res = backtest(df, method="mean_variance", cost_bps=0.0, max_weight=0.5)
    d = res.daily
    assert (d["n_long"] > 0).all() and (d["n_short"] > 0).all()
    perfect = backtest(df.with_columns(pred_1d=pl.col("target_1d") * 100), method="mean_variance", max_weight=0.5)
    assert (perfect.daily["gross"] > 0).all()
    with pytest.raises(ConfigError, match="volatility_20d"):
        backtest(_hand_frame(), method="mean_variance")
    with pytest.raises(ConfigError, match="method"):
        BacktestConfig.from_any({"method": "magic"})


def test_bad_input_errors():
    df = _hand_frame()
    with pytest.raises(SchemaError, match="target_1d"):
        backtest(df.drop("target_1d"))
    empty_day = df.with_columns(pred_1d=pl.when(pl.col("Date") == D[1]).then(None).otherwise(pl.col("pred_1d")))
    with pytest.raises(DataError, match="2024-01-05"):
        backtest(empty_day)
    with pytest.raises(DataError, match="duplicate"):
        backtest(pl.concat([df, df.head(1)]))
    with pytest.raises(DataError, match="no rows"):
        backtest(df.head(0))


def test_run_backtest_writes_reports_and_nothing_on_bad_input(tmp_path):
    df = _hand_frame()
    ds = tmp_path / "ds.parquet"
    df.select("Date", "Code", Close=pl.lit(1000.0), returns_1d=pl.lit(0.0)).write_parquet(ds)
    FeatureManifest.from_frame(pl.read_parquet(ds), {}, [1], 1).save(manifest_path(ds))  # the entry lag's source
    cfg = load_config([f"paths.output_dir={tmp_path / 'out'}", f"paths.dataset={ds}", "portfolio.min_names=5"])
    preds = tmp_path / "preds.parquet"
    df.write_parquet(preds)
    rep = run_backtest(cfg, preds)
    out = tmp_path / "out" / "portfolio"
    files = sorted(p.name for p in out.iterdir())
    assert len(files) == 2 and any(f.startswith("report_") for f in files)
    assert rep["summary"]["n_periods"] == 3 and rep["config"]["cost_bps"] == 5.0
    assert pl.read_parquet(rep["daily_path"]).height == 3

    for name, frame, err in [
        ("no_target.parquet", df.drop("target_1d"), SchemaError),
        (
            "unknown_code.parquet",
            df.with_columns(Code=pl.when(pl.col("Code") == CODES[3]).then(pl.lit("99990")).otherwise(pl.col("Code"))),
            DataError,
        ),
        (
            "unknown_date.parquet",
            df.with_columns(Date=pl.when(pl.col("Date") == D[2]).then(date(2024, 1, 10)).otherwise(pl.col("Date"))),
            DataError,
        ),
    ]:
        bad_out = tmp_path / f"out_{name}"
        bad_cfg = load_config([f"paths.output_dir={bad_out}", f"paths.dataset={ds}"])
        p = tmp_path / name
        frame.write_parquet(p)
        with pytest.raises(err):
            run_backtest(bad_cfg, p)
        assert not bad_out.exists()
    with pytest.raises(DataError, match="not found"):
        run_backtest(cfg, tmp_path / "missing.parquet")
