"""Tear-sheet figures: IC decay bands, RankIC by group, signal stability and turnover, cumulative quantile returns,
rolling Sharpe and benchmark-relative figures, and the report page built from them."""

from __future__ import annotations

import json
import math
from datetime import date, timedelta

import numpy as np
import polars as pl
import pytest
from test_report import (
    make_run_dir,  # tests/unit is on sys.path (rootdir-relative imports)
)

from gogooku3.config.compose import load_config
from gogooku3.evaluation import metrics
from gogooku3.evaluation.backtest.benchmarks import benchmark_returns, relative_figures
from gogooku3.evaluation.backtest.engine import backtest
from gogooku3.evaluation.backtest.market import market_for, market_from_frame
from gogooku3.evaluation.backtest.summary import rolling_sharpe
from gogooku3.evaluation.report import build_report
from gogooku3.features.manifest import FeatureManifest, manifest_path

DAYS = [date(2024, 1, 1) + timedelta(days=i) for i in range(40)]


def _panel(pred, n: int = 20) -> pl.DataFrame:
    """Date, Code, pred_1d = pred(day index, stock index), target_1d random."""
    rng = np.random.default_rng(1)
    rows = [
        {"Date": d, "Code": f"{1000 + j}", "pred_1d": float(pred(k, j)), "target_1d": float(rng.normal())}
        for k, d in enumerate(DAYS)
        for j in range(n)
    ]
    return pl.DataFrame(rows)


def test_ic_decay_band_is_the_hac_interval():
    """1 day: mean ± 1.96 Newey–West se; 5 days (overlapping labels, issue 21): mean ± t_0.975(B) EWC se,
    B = floor(0.4 · 40 / 5) = 3."""
    df = _panel(lambda k, j: j)
    ev = metrics.evaluate(df.with_columns(pred_5d=pl.col("pred_1d"), target_5d=pl.col("target_1d")), [1, 5])
    d = metrics.ic_decay(ev)
    assert d["horizon"].to_list() == [1, 5]
    from scipy import stats

    for r, h, q in zip(d.to_dicts(), ("1", "5"), (1.96, stats.t.ppf(stats.norm.cdf(1.96), 3)), strict=True):
        s = ev[h]
        assert r["se"] == pytest.approx(abs(s["rank_ic_mean"] / s["rank_ic_tstat"]))
        assert r["lo"] == pytest.approx(s["rank_ic_mean"] - q * r["se"]) and r["lo"] < r["rank_ic_mean"] < r["hi"]
        assert r["hac_lag"] == s["hac_lag"] and r["tstat_method"] == s["tstat_method"]


def test_ic_by_group_scores_each_group_on_its_own_stocks():
    df = _panel(lambda k, j: j).with_columns(
        sector=pl.when(pl.col("Code").cast(pl.Int32) < 1010).then(pl.lit("A")).otherwise(pl.lit("B"))
    )
    # group A: the prediction is the target (RankIC 1); group B: its negative (RankIC -1)
    df = df.with_columns(
        pred_1d=pl.when(pl.col("sector") == "A").then(pl.col("target_1d")).otherwise(-pl.col("target_1d"))
    )
    g = metrics.ic_by_group(df, "pred_1d", "target_1d", "sector")
    assert g["group"].to_list() == ["A", "B"]
    assert g["rank_ic_mean"].to_list() == pytest.approx([1.0, -1.0])
    assert g["n_days"].to_list() == [40, 40] and g["avg_names"].to_list() == [10.0, 10.0]
    # a group too small to score a day is left out
    assert metrics.ic_by_group(df, "pred_1d", "target_1d", "sector", min_stocks=11).height == 0


def test_rank_autocorrelation_and_turnover():
    same = _panel(lambda k, j: j)
    flip = _panel(lambda k, j: j if k % 2 == 0 else -j)
    a = metrics.rank_autocorrelation(same, "pred_1d")
    assert a.height == 39 and a["autocorr"].to_list() == pytest.approx([1.0] * 39)
    assert metrics.rank_autocorrelation(flip, "pred_1d")["autocorr"].to_list() == pytest.approx([-1.0] * 39)
    t = metrics.quantile_turnover(same, "pred_1d", q=5)
    assert t.height == 39 and t["top"].max() == 0.0 and t["bottom"].max() == 0.0
    t = metrics.quantile_turnover(flip, "pred_1d", q=5)
    assert t["top"].to_list() == pytest.approx([1.0] * 39)  # the top bucket swaps with the bottom every day
    # a stock missing the previous day counts as new in its bucket
    gap = same.filter(~((pl.col("Date") == DAYS[4]) & (pl.col("Code") == "1019")))
    t = metrics.quantile_turnover(gap, "pred_1d", q=5).filter(pl.col("Date") == DAYS[5])
    assert t["top"].item() == pytest.approx(0.25)


def test_cumulative_quantile_returns_compound_the_daily_bucket_means():
    df = _panel(lambda k, j: j)
    cum = metrics.cumulative_quantile_returns(df, "pred_1d", "target_1d", q=4)
    daily = metrics.daily_quantile_returns(df, "pred_1d", "target_1d", q=4)
    for qq in (1, 4):
        want = float(np.prod(1 + daily.filter(pl.col("quantile") == qq)["ret"].to_numpy()) - 1)
        assert cum.filter(pl.col("quantile") == qq)["cum_return"][-1] == pytest.approx(want)


def test_relative_figures_and_rolling_sharpe():
    rng = np.random.default_rng(0)
    b = rng.normal(0, 0.01, 2000)
    s = 0.001 + 0.5 * b + rng.normal(0, 0.002, 2000)
    r = relative_figures(pl.Series(s), pl.Series(b), 252)
    assert r["beta"] == pytest.approx(0.5, abs=0.02) and r["n"] == 2000
    assert r["alpha"] == pytest.approx(0.252, abs=0.03)
    assert r["tracking_error"] == pytest.approx(np.std(s - b, ddof=1) * math.sqrt(252))
    assert r["information_ratio"] == pytest.approx(np.mean(s - b) * 252 / r["tracking_error"])
    assert math.isnan(relative_figures(pl.Series([0.1, None]), pl.Series([0.2, 0.1]), 252)["beta"])
    daily = pl.DataFrame({"Date": [date(2024, 1, 1) + timedelta(days=i) for i in range(80)], "net": s[:80]})
    rs = rolling_sharpe(daily, 60, 252)
    assert rs["sharpe"].null_count() == 59
    last = s[20:80]
    assert rs["sharpe"][-1] == pytest.approx(last.mean() / last.std(ddof=1) * math.sqrt(252))


def test_benchmark_returns_measure_topix_over_the_books_entry_and_exit():
    df = _panel(lambda k, j: j, n=30).with_columns(Close=pl.lit(100.0))
    market = market_from_frame(df.select("Date", "Code", "Close"), DAYS, entry_lag=1)
    res = backtest(df, 1, market=market)
    closes = pl.DataFrame({"Date": DAYS, "close": [100.0 * 1.01**k for k in range(40)]})
    br = benchmark_returns(res, market, closes)
    assert br["topix"].drop_nulls().to_list() == pytest.approx([0.01] * br["topix"].drop_nulls().len())
    assert br["equal_weight"].to_list() == res.daily["universe"].to_list()
    assert benchmark_returns(res, None, closes)["topix"].null_count() == br.height


@pytest.mark.parametrize("model_name", ["small", "full"])
def test_report_tear_sheet_with_dataset_sector_and_topix(tmp_path, model_name):
    run = make_run_dir(tmp_path)
    res = json.loads((run / "metrics.json").read_text())
    res["model"]["name"] = model_name
    (run / "metrics.json").write_text(json.dumps(res))
    model = pl.read_parquet(run / "predictions" / "atft" / "test.parquet")
    ds = tmp_path / "ds.parquet"
    model.select(
        "Date",
        "Code",
        Close=pl.lit(1000.0),
        returns_1d=pl.lit(0.0),
        S33=pl.col("Code").str.slice(2, 1),
        market_cap=(pl.col("Code").hash() % 1000 + 1).cast(pl.Float64) * 1e8,  # the neutral view's exposures
        beta_60d=(pl.col("Code").hash() % 7).cast(pl.Float64) / 5 + 0.5,
    ).write_parquet(ds)
    FeatureManifest.from_frame(pl.read_parquet(ds), {}, [1], 1).save(manifest_path(ds))  # the entry lag's source
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
    ts = rep["tear_sheet"]
    assert rep["missing"] == [] and ts["benchmark"] == "topix" and ts["topix_available"]
    assert rep["neutral"] is not None
    assert {g["group"] for g in ts["by_sector"]} == set(model["Code"].str.slice(2, 1).unique().to_list())
    assert set(ts["relative"]) == {"atft ideal", "atft realistic", "lightgbm ideal", "lightgbm realistic"}
    assert set(ts["relative"]["atft ideal"]) == {"topix", "equal_weight"}
    assert [r["horizon"] for r in ts["ic_decay"]["atft"]] == [1, 5] and "atft signal pred_1d" in ts["ic_decay"]
    assert [r["period"] for r in ts["monthly_rank_ic"]["atft"]][:2] == ["2023-11", "2023-12"]
    assert ts["rolling_sharpe"]["atft"]["window"] == 20 and ts["rolling_sharpe"]["atft"]["last"] is not None
    assert 0 < ts["signal"]["top_turnover_mean"] <= 1 and set(ts["cumulative_quantile_return"]) == {
        str(k) for k in range(1, 6)
    }
    assert rep["run_model"]["name"] == model_name and rep["checks"]["targets_apply"] is (model_name == "full")
    html = (run / "report.html").read_text()
    assert 'name="viewport"' in html and "within each S33 group" in html and "TOPIX" in html
    assert ("Sharpe target 0.849 (definition unknown)" in html) is (model_name == "full")
    assert ("apply to <code>model=full</code> only" in html) is (model_name != "full")


def test_export_alphalens_and_quantstats_frames(tmp_path):
    from typer.testing import CliRunner

    from gogooku3.cli import app
    from gogooku3.evaluation.backtest.engine import backtest_both

    run = make_run_dir(tmp_path)
    preds = pl.read_parquet(run / "predictions" / "atft" / "test.parquet")
    ds = tmp_path / "ds.parquet"
    preds.select("Date", "Code", Close=pl.lit(1000.0), S33=pl.col("Code").str.slice(2, 1)).write_parquet(ds)
    FeatureManifest.from_frame(pl.read_parquet(ds), {}, [1], 1).save(manifest_path(ds))  # the entry lag's source
    args = [f"paths.output_dir={tmp_path / 'output'}", f"paths.dataset={ds}", f"paths.raw_dir={tmp_path / 'none'}"]
    out = CliRunner().invoke(app, ["export", "--to", "alphalens", str(run), *args])  # the deprecated positional RUN
    assert out.exit_code == 0, out.output
    al = pl.read_parquet(run / "export" / "alphalens_factor.parquet")
    last = preds["Date"].max()  # its entry session lies beyond the calendar: no row
    assert al.columns == ["date", "signal_date", "asset", "factor", "1D", "5D", "group"]
    assert al.height == preds.filter(pl.col("Date") < last).height
    j = al.with_columns(pl.col("signal_date").cast(pl.Date)).join(
        preds, left_on=["signal_date", "asset"], right_on=["Date", "Code"]
    )
    assert (j["date"].cast(pl.Date) > j["signal_date"]).all()  # dated by the entry session (entry lag 1)
    assert (j["factor"] == j["pred_1d"].cast(pl.Float64)).all() and (j["5D"] == j["target_5d"].cast(pl.Float64)).all()
    assert (j["group"] == j["asset"].str.slice(2, 1)).all()
    assert (run / "export" / "alphalens_factor.csv").exists()
    out = CliRunner().invoke(app, ["export", "--to", "quantstats", "--run", str(run), *args])
    assert out.exit_code == 0, out.output
    qs = pl.read_parquet(run / "export" / "quantstats_returns.parquet")
    cfg = load_config(args)  # the headline is the realistic book, whose costs read the dataset's market
    market = market_for(cfg, preds, ds, cfg.portfolio.vol_column)
    both, headline = backtest_both(preds.with_columns(Close=pl.lit(1000.0)), cfg, market)
    assert qs.columns == ["date", "strategy", "benchmark", "topix", "signal_date"]
    assert qs["topix"].null_count() == qs.height and qs["date"].dtype == pl.Datetime("ns")
    # the labels run past the dataset's calendar: the rows realised beyond it have no session to be dated by
    daily = both[headline].daily.filter(pl.col("Date") < preds["Date"].unique().sort()[-2])
    assert qs["strategy"].to_list() == pytest.approx(daily["net"].to_list())
    assert qs["signal_date"].cast(pl.Date).to_list() == daily["Date"].to_list()
    bad = CliRunner().invoke(app, ["export", "--to", "zipline", "--run", str(run), *args])
    assert bad.exit_code == 2 and "alphalens|quantstats" in bad.output
