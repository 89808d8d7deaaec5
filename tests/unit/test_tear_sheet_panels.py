"""Issue 22: the tear sheet's standard panels — worst drawdowns, monthly returns, rolling volatility and beta, the
daily RankIC's distribution, features used per predictor — on tiny hand-computed series and in a built report."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import date, timedelta

import numpy as np
import polars as pl
import pytest
from scipy import stats
from test_report import make_run_dir  # tests/unit is on sys.path (rootdir-relative imports)

from gogooku3.config.compose import load_config
from gogooku3.evaluation import metrics
from gogooku3.evaluation.backtest.summary import monthly_returns, rolling_beta, rolling_vol, worst_drawdowns
from gogooku3.evaluation.report import _features_used, baseline_inputs, build_report
from gogooku3.evaluation.results import TrainResult
from gogooku3.features.manifest import FeatureManifest, manifest_path

D = [date(2024, 1, 1) + timedelta(days=i) for i in range(6)]


def test_worst_drawdowns_by_hand():
    # equity 1.1, 0.55, 0.825, 1.155, 1.21275, 0.9702: -50 % from day 0 to day 1, back above 1.1 on day 3;
    # then -20 % from the day-4 peak, not recovered by the last day
    daily = pl.DataFrame({"Date": D, "net": [0.10, -0.50, 0.50, 0.40, 0.05, -0.20]})
    w = worst_drawdowns(daily).to_dicts()
    assert [r["depth"] for r in w] == pytest.approx([-0.5, -0.2])
    assert (w[0]["start"], w[0]["trough"], w[0]["recovery"], w[0]["length"]) == (D[0], D[1], D[3], 3)
    assert (w[1]["start"], w[1]["trough"], w[1]["recovery"], w[1]["length"]) == (D[4], D[5], None, 1)
    assert worst_drawdowns(daily, n=1).height == 1
    # a loss on the first day is measured from the starting capital: peak before the first session
    w = worst_drawdowns(pl.DataFrame({"Date": D[:2], "net": [-0.1, 0.2]})).to_dicts()
    assert w == [{"start": D[0], "trough": D[0], "recovery": D[1], "depth": pytest.approx(-0.1), "length": 2}]
    assert worst_drawdowns(pl.DataFrame({"Date": D[:2], "net": [0.1, 0.2]})).height == 0


def test_monthly_returns_compound_within_the_month():
    daily = pl.DataFrame({"Date": [date(2024, 1, 30), date(2024, 1, 31), date(2024, 2, 1)], "net": [0.1, 0.1, -0.5]})
    m = monthly_returns(daily)
    assert m.select("year", "month").rows() == [(2024, 1), (2024, 2)]
    assert m["ret"].to_list() == pytest.approx([0.21, -0.5]) and m["n"].to_list() == [2, 1]


def test_rolling_vol_and_beta_by_hand():
    b = [0.01, -0.02, 0.015, 0.0, -0.01, 0.02]
    daily = pl.DataFrame({"Date": D, "net": [0.01, -0.01, 0.01, -0.01, 0.01, -0.01]})
    v = rolling_vol(daily, 3, 250.0)["vol"].to_list()
    assert v[:2] == [None, None] and v[2] == pytest.approx(np.std([0.01, -0.01, 0.01], ddof=1) * math.sqrt(250))
    s = pl.Series([2 * x + 0.001 for x in b])  # beta 2 exactly, whatever the intercept
    beta = rolling_beta(s, pl.Series(b), pl.Series(D), 3)["beta"].to_list()
    assert beta[:2] == [None, None] and beta[2:] == pytest.approx([2.0] * 4)


def test_normal_qq_distribution_and_empty_columns():
    qq = metrics.normal_qq(pl.Series([3.0, 1.0, None, 2.0]))
    assert qq["sample"].to_list() == [1.0, 2.0, 3.0]
    assert qq["theoretical"].to_list() == pytest.approx(2.0 + stats.norm.ppf([1 / 6, 0.5, 5 / 6]))
    d = metrics.distribution(pl.Series([1.0, 2.0, 3.0, 10.0]))
    assert d["n"] == 4 and d["mean"] == 4.0 and d["skew"] > 0
    lf = pl.LazyFrame({"a": [1.0, None], "b": [None, None]}, schema={"a": pl.Float64, "b": pl.Float64})
    assert metrics.empty_columns(lf, ["a", "b", "absent"]) == ["b"]


def test_report_has_the_standard_panels(tmp_path):
    run = make_run_dir(tmp_path)
    model = pl.read_parquet(run / "predictions" / "atft" / "test.parquet")
    ds = tmp_path / "ds.parquet"
    model.select(
        "Date",
        "Code",
        Close=pl.lit(1000.0),
        returns_1d=pl.lit(0.0),
        x_empty=pl.lit(None, pl.Float64),
        S33=pl.col("Code").str.slice(2, 1),
    ).write_parquet(ds)
    groups = {"returns_1d": "price", "x_empty": "price"}
    FeatureManifest.from_frame(pl.read_parquet(ds), groups, [1], 1).save(manifest_path(ds))
    raw = tmp_path / "raw"
    raw.mkdir()
    days = model["Date"].unique().sort()
    pl.DataFrame(
        {"Date": days, "O": 1.0, "H": 1.0, "L": 1.0, "C": [2000.0 * 1.001**k for k in range(days.len())]}
    ).write_parquet(raw / "topix.parquet")
    cfg = load_config(
        [
            f"paths.output_dir={tmp_path / 'output'}",
            f"paths.dataset={ds}",
            f"paths.raw_dir={raw}",
            f"paths.runs_dir={tmp_path / 'runs'}",
            "report.rolling_sharpe_days=20",
        ]
    )
    rep = json.loads(build_report(cfg, run)["json"].read_text())
    ts, bt = rep["tear_sheet"], rep["backtest"]["atft"]["summary"]
    # the deepest of the worst drawdowns is the summary's max drawdown; months compound to the total return
    worst = ts["worst_drawdowns"]["atft"]
    assert 1 <= len(worst) <= 5 and worst[0]["depth"] == pytest.approx(bt["max_drawdown"])
    assert [r["depth"] for r in worst] == sorted(r["depth"] for r in worst)
    months = ts["monthly_returns"]["atft"]
    assert math.prod(1 + r["ret"] for r in months) - 1 == pytest.approx(bt["total_return"])
    assert ts["rolling_vol"]["atft"]["window"] == 20 and ts["rolling_vol"]["atft"]["last"] > 0
    assert ts["rolling_beta"]["atft"]["benchmark"] == "topix" and set(ts["rolling_beta"]) == {"atft", "lightgbm"}
    assert ts["ic_distribution"]["atft"]["n"] == rep["evaluation"]["atft"]["1"]["n_days"]
    fu = rep["data"]["features_used"]
    # the deep model gets the whole panel (30 features); x_sparse is 80 % null on the training days, not empty
    assert fu["atft"]["features"] == 30 and fu["atft"]["entirely_empty"] == 0
    assert fu["lightgbm"]["features"] == rep["data"]["safe_stats"]["features used"] and fu["lightgbm"]["dropped"] == 1
    html = (run / "report.html").read_text()
    for text in ("Worst drawdowns", "Sortino / CAGR / Calmar", "Every predictor", "atft: 30, every manifest feature"):
        assert text in html, text
    # entirely empty: 100 % null in the safe report's training days, else no value at all in the dataset
    result = TrainResult.load(run / "metrics.json")
    safe = baseline_inputs(result)[1]
    assert safe is not None
    fu = _features_used(result, replace(safe, dropped_features={"b": 1.0, "a": 1.0, "c": 0.9}), ds)
    assert fu["atft"]["empty"] == ["a", "b"] and fu["atft"]["entirely_empty"] == 2
    assert _features_used(result, None, ds)["atft"]["empty"] == ["x_empty"]
