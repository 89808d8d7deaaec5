"""Predict: ranking/flags by hand, bad dates and manifest mismatch, and reproduction of a tiny run's test
predictions."""

from __future__ import annotations

import copy
import datetime as dt

import numpy as np
import polars as pl
import pytest
import torch

from gogooku3.config.compose import load_config
from gogooku3.core.errors import ConfigError, DataError
from gogooku3.evaluation.backtest.config import BacktestConfig
from gogooku3.features.manifest import FeatureManifest, manifest_path
from gogooku3.pipelines.predict import predict, rank_table, resolve_date

N_STOCKS, N_DAYS = 24, 96
FEATURES = ["returns_1d", "ret_5", "vol_5", "noise_a", "noise_b"]


def test_rank_table_flags_and_ranks():
    d = dt.date(2024, 5, 1)
    preds = pl.DataFrame(
        {
            "Date": [d] * 10,
            "Code": [f"{j:05d}" for j in range(10)],
            "pred_1d": [float(v) for v in (5, 1, 9, 3, 7, 0, 8, 2, 6, 4)],
            "pred_5d": [float(-v) for v in range(10)],
            "Close": [500.0] * 9 + [10.0],
        }
    )
    names = pl.DataFrame({"Code": ["00002"], "CoName": ["Nine Corp"]})
    t = rank_table(preds, [1, 5], 1, BacktestConfig.from_any(None), names)
    assert t["Code"].to_list()[:3] == ["00002", "00006", "00004"]  # ordered by rank_1d
    assert t["rank_1d"].to_list() == list(range(1, 11))
    assert t.filter(pl.col("Code") == "00000")["rank_5d"].item() == 1
    sides = dict(zip(t["Code"], t["side"], strict=True))
    assert [c for c, s in sides.items() if s == "long"] == ["00002", "00006"]
    assert sorted(c for c, s in sides.items() if s == "short") == ["00001", "00005"]
    assert t.filter(pl.col("Code") == "00002")["CoName"].item() == "Nine Corp"
    # with a price filter the 10-yen name is flagged, leaving 9 names -> one per leg
    tf = rank_table(preds, [1, 5], 1, BacktestConfig.from_any(None, min_price=100.0), names)
    sides = dict(zip(tf["Code"], tf["side"], strict=True))
    assert sides["00009"] == "filtered"
    assert [c for c, s in sides.items() if s == "long"] == ["00002"] and [
        c for c, s in sides.items() if s == "short"
    ] == ["00005"]
    with pytest.raises(ConfigError, match="horizon=20"):
        rank_table(preds, [1, 5], 20, BacktestConfig.from_any(None))


def test_resolve_date_rules():
    dates = [dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(30)]
    assert resolve_date(dates, None, 10, "ds") == dates[-1]
    assert resolve_date(dates, dates[9], 10, "ds") == dates[9]
    with pytest.raises(DataError, match="history"):
        resolve_date(dates, dates[8], 10, "ds")
    with pytest.raises(DataError, match="not a date of the dataset"):
        resolve_date(dates, dt.date(2030, 1, 1), 10, "ds")


def _dataset(root) -> tuple:
    rng = np.random.default_rng(0)
    start = dt.date(2023, 1, 2)  # weekdays stand in for sessions: the pipeline only needs ordered dates
    days = (start + dt.timedelta(days=i) for i in range(2 * N_DAYS))
    dates = [d for d in days if d.weekday() < 5][:N_DAYS]
    rets = rng.normal(scale=0.02, size=(N_DAYS, N_STOCKS)) + rng.normal(scale=0.01, size=(N_DAYS, 1))
    close = 1000 * np.cumprod(1 + rets, axis=0)
    codes = [f"{1300 + j}0" for j in range(N_STOCKS)]
    rows = []
    for j, code in enumerate(codes):
        c = pl.Series(close[:, j])
        r = pl.Series(rets[:, j])
        rows.append(
            pl.DataFrame(
                {
                    "Code": [code] * N_DAYS,
                    "Date": dates,
                    "Section": ["TSEPrime" if j % 2 else "TSEStandard"] * N_DAYS,
                    "S33": [str(50 + j % 4)] * N_DAYS,
                    "S17": [str(j % 3)] * N_DAYS,
                    "returns_1d": r,
                    "ret_5": c / c.shift(5) - 1,
                    "vol_5": r.rolling_std(5),
                    "noise_a": rng.normal(size=N_DAYS),
                    "noise_b": rng.normal(size=N_DAYS),
                    "Close": c,
                    "dollar_volume": c * 1e6,
                    "target_1d": c.shift(-2) / c.shift(-1) - 1,
                }
            )
        )
    df = pl.concat(rows).with_columns(pl.col([*FEATURES, "target_1d"]).cast(pl.Float32)).sort("Code", "Date")
    ds = root / "output" / "ml_dataset_latest.parquet"
    ds.parent.mkdir(parents=True)
    df.write_parquet(ds)
    FeatureManifest.from_frame(df, {f: "price" for f in FEATURES}, [1], 1).save(manifest_path(ds))
    raw = root / "data" / "raw"
    raw.mkdir(parents=True)
    pl.DataFrame(
        {
            "Date": [dates[0]] * N_STOCKS,
            "Code": codes,
            "CoName": [f"Company {j}" for j in range(N_STOCKS)],
            "S17": ["1"] * N_STOCKS,
            "S33": ["50"] * N_STOCKS,
            "Mkt": ["0111"] * N_STOCKS,
            "ScaleCat": ["-"] * N_STOCKS,
        }
    ).write_parquet(raw / "listed_info.parquet")
    return ds, dates


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tiny_run")
    ds, dates = _dataset(root)
    cfg = load_config(
        [
            f"paths.dataset={ds}",
            f"paths.output_dir={root / 'output'}",
            f"paths.runs_dir={root / 'runs'}",
            f"paths.cache_dir={root / 'cache'}",
            f"paths.raw_dir={root / 'data' / 'raw'}",
            "labels.horizons=[1]",
            "model.window=10",
            "model.hidden=16",
            "model.n_heads=2",
            "model.head_hidden=8",
            "model.graph.window=10",
            "model.graph.min_obs=5",
            "split.n_splits=1",
            "split.min_train_days=50",
            "split.test_days=20",
            "split.embargo_days=5",
            "split.val_days=10",
            "train.max_epochs=1",
            "train.limit_train_batches=4",
            "baseline.enabled=false",
            "train.ensemble=1",
            "train.min_stocks_per_day=5",
            "train.min_window_frac=1.0",
            "trainer.progress_bar=false",
            "trainer.num_threads=1",
        ]
    )
    from gogooku3.pipelines.atft import CompleteATFTTrainingPipeline

    res = CompleteATFTTrainingPipeline(cfg).run()
    return cfg, root / "runs" / "last", ds, dates, res


def test_predict_reproduces_saved_test_predictions(tiny_run):
    cfg, run, _ds, dates, _ = tiny_run
    saved = pl.read_parquet(run / "predictions" / "atft" / "test.parquet")
    day = sorted(saved["Date"].unique().to_list())[len(saved["Date"].unique()) // 2]
    out = predict(cfg, run, day.isoformat())
    assert out.name == f"pred_{day.isoformat()}.parquet" and out.with_suffix(".csv").exists()
    got = pl.read_parquet(out)
    ref = saved.filter(pl.col("Date") == day).select("Code", "pred_1d")
    j = ref.join(got, on="Code", how="inner")
    assert j.height == ref.height == got.height
    np.testing.assert_allclose(j["score_1d"].to_numpy(), j["pred_1d"].to_numpy(), rtol=1e-4, atol=1e-5)
    assert got["rank_1d"].to_list() == list(range(1, got.height + 1))
    assert (got["side"] == "long").sum() == got.height // 5 and (got["side"] == "short").sum() == got.height // 5
    assert got["CoName"].str.starts_with("Company").all()
    csv = pl.read_csv(out.with_suffix(".csv"), schema_overrides={"Code": pl.String})
    assert csv["Code"].to_list() == got["Code"].to_list()
    latest = predict(cfg, run)  # default: the dataset's latest date
    assert latest.name == f"pred_{dates[-1].isoformat()}.parquet"


def test_predict_refuses_bad_dates_and_manifest_mismatch(tiny_run, tmp_path):
    cfg, run, ds, dates, _ = tiny_run
    cfg = copy.deepcopy(cfg)
    cfg.paths.output_dir = str(tmp_path / "out")
    with pytest.raises(DataError, match="not a date of the dataset"):
        predict(cfg, run, "2031-01-06")
    with pytest.raises(DataError, match="history"):
        predict(cfg, run, dates[3].isoformat())
    with pytest.raises(ConfigError, match="YYYY-MM-DD"):
        predict(cfg, run, "yesterday")
    with pytest.raises(DataError, match="no model bundle"):
        predict(cfg, tmp_path, None)
    # a dataset whose manifest differs from the bundle's
    other = tmp_path / "ds2.parquet"
    pl.read_parquet(ds).write_parquet(other)
    FeatureManifest.from_frame(pl.read_parquet(other), {f: "price" for f in FEATURES[:-1]}, [1], 1).save(
        manifest_path(other)
    )
    cfg.paths.dataset = str(other)
    with pytest.raises(DataError, match="fingerprint"):
        predict(cfg, run, None)
    assert not (tmp_path / "out").exists()


def test_predict_exports_quantiles_and_per_stock_explanations(tiny_run, tmp_path):
    cfg, run, _ds, dates, _ = tiny_run
    cfg = copy.deepcopy(cfg)
    cfg.paths.output_dir = str(tmp_path / "out")
    out = predict(cfg, run, None)
    got = pl.read_parquet(out)
    qs = ["q10_1d", "q50_1d", "q90_1d"]
    assert all(c in got.columns for c in qs) and got.select(qs).null_count().sum_horizontal().item() == 0
    assert (got["q10_1d"] <= got["q50_1d"]).all() and (got["q50_1d"] <= got["q90_1d"]).all()  # monotone heads
    ex = pl.read_parquet(out.parent / f"explain_{dates[-1].isoformat()}.parquet")
    assert ex.columns == ["Code", "rank", "feature", "weight", "share"]
    assert ex.group_by("Code").len()["len"].unique().to_list() == [5] and set(ex["Code"]) == set(got["Code"])
    assert set(ex["feature"]) <= set(FEATURES) and ex["rank"].min() == 1
    assert ex.group_by("Code").agg(pl.col("share").sum())["share"].to_list() == pytest.approx([1.0] * got.height)
    # the weights are each stock's own: not one list repeated for every stock
    assert ex.group_by("feature").agg(pl.col("weight").n_unique())["weight"].max() > 1
    first = ex.filter(pl.col("rank") == 1)["weight"].to_list()
    assert first == sorted(first, reverse=True)
    # unknown level and explain off
    cfg.predict.quantiles = [0.3]
    with pytest.raises(ConfigError, match=r"predict.quantiles"):
        predict(cfg, run, None)
    cfg.predict.quantiles, cfg.predict.explain_top = [], 0
    cfg.paths.output_dir = str(tmp_path / "out2")
    plain = predict(cfg, run, None)
    assert not [c for c in pl.read_parquet(plain).columns if c.startswith("q")]
    assert sorted(p.name for p in plain.parent.iterdir()) == [plain.with_suffix(".csv").name, plain.name]
