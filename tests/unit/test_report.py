"""Report: JSON figures and an HTML page with every section and embedded images, from a fake run directory."""

from __future__ import annotations

import base64
import json
import re
import shutil
from datetime import date, timedelta
from pathlib import Path

import lightgbm as lgb
import numpy as np
import polars as pl
import pytest

from gogooku3.config.compose import load_config
from gogooku3.core.errors import DataError
from gogooku3.evaluation import metrics
from gogooku3.evaluation.compare import Comparison, compare
from gogooku3.evaluation.report import build_report
from gogooku3.evaluation.results import BaselineRef, DatasetRef, FoldResult, ModelInfo, TrainResult
from gogooku3.features.manifest import FeatureManifest, manifest_path
from gogooku3.predictors.lightgbm import BaselineRun

HORIZONS = (1, 5)
SECTIONS = (
    "summary",
    "data",
    "horizons",
    "backtest",
    "rank-ic",
    "signal",
    "quantiles",
    "per-year",
    "importance",
    "training",
    "config",
    "resources",
)


def _preds(rng: np.random.Generator, signal: float, n_days: int = 90, n: int = 30) -> pl.DataFrame:
    dates = [date(2023, 11, 1) + timedelta(days=i) for i in range(n_days)]  # spans two calendar years
    cols: dict = {
        "Date": pl.Series([d for d in dates for _ in range(n)], dtype=pl.Date),
        "Code": [f"{1300 + j}0" for _ in dates for j in range(n)],
    }
    for h in HORIZONS:
        y = rng.normal(scale=0.02 * np.sqrt(h), size=n_days * n)
        cols[f"pred_{h}d"] = (signal * y / y.std() + rng.normal(size=y.size)).astype(np.float32)
        cols[f"target_{h}d"] = y.astype(np.float32)
    return pl.DataFrame(cols)


def _safe_report(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "final_report": {
                    "pipeline_summary": {
                        "data_processed": {"samples": 2700, "features": 145, "stocks": 30, "dates": 90}
                    },
                    "safety_validation": {
                        "dropped_features": {"x_sparse": 0.8},
                        "split_method": "walk_forward",
                        "walk_forward_splits": 3,
                        "embargo_days": 21,
                    },
                }
            }
        )
    )
    return path


def _train_result(run: Path, baseline_dir: Path) -> TrainResult:
    fold = FoldResult(
        fold={"index": 2},
        fit_range=None,
        val_range=None,
        test_range=None,
        predictors={"atft": {"epochs": [3], "best_val_rank_ic": 0.04, "train_seconds": 12.5}},
    )
    comp = Comparison.load(run / "comparison.json") if (run / "comparison.json").exists() else None
    return TrainResult(
        run_dir=str(run),
        created="20240101_000000",
        dataset=DatasetRef("ds.parquet", "fp", "mfp", 30, [1, 5], 1, "XTKS"),
        baseline=BaselineRef(str(baseline_dir), "bfp", True),
        model=ModelInfo("small", 312345, 1, 312345, 300000, 1e6),
        horizons=[1, 5],
        product="atft",
        predictors=["atft", "lightgbm"],
        folds=[fold],
        comparison={} if comp is None else comp.to_dict(),
        comparison_val={},
        samples_per_sec=100.0,
        mfu=None,
        collapse={},
        panel={"fingerprint": "p", "shape": [90, 30, 30]},
        durations_s={"train": 12.5, "total": 20.0},
        peak_rss_mb=850.0,
    )


def make_run_dir(root: Path) -> Path:
    rng = np.random.default_rng(0)
    run = root / "runs" / "20240101_000000"
    (run / "logs").mkdir(parents=True)
    (run / "bundle").mkdir()
    model, base = _preds(rng, 0.3), _preds(rng, 0.1)
    for name, frame in (("atft", model), ("lightgbm", base)):
        (run / "predictions" / name).mkdir(parents=True)
        frame.write_parquet(run / "predictions" / name / "test.parquet")
    compare({"atft": model, "lightgbm": base}, [1, 5], product="atft", reference="lightgbm")[0].save(
        run / "comparison.json"
    )  # as `train` stores it
    # the run's own baseline (content-addressed) and the safe report that fitted it; a newer, unrelated safe
    # report in output/experiments must not be read
    keyed = base.with_columns(fold=pl.lit(2, pl.Int32))
    bdir = root / "output" / "baselines" / "bfp"
    x = rng.normal(size=(200, 2))
    booster = lgb.train({"verbosity": -1, "num_threads": 1}, lgb.Dataset(x, x[:, 0]), num_boost_round=2)
    brun = BaselineRun(
        "bfp",
        [1, 5],
        ["returns_1d", "rsi_14"],
        keyed,
        keyed,
        [{"fold": 2}],
        {"returns_1d": 8.0, "rsi_14": 6.0},
        models={(2, 1): booster, (2, 5): booster},
    )
    brun.save(bdir)
    BaselineRun.load(bdir).record_safe_report(_safe_report(root / "output" / "experiments" / "safe_1.json"))
    _safe_report(root / "output" / "experiments" / "safe_2.json").write_text("{}")
    _train_result(run, bdir).save(run / "metrics.json")
    (run / "variable_importance.json").write_text(json.dumps({f"feat_{i}": 1.0 / (i + 1) for i in range(30)}))
    (run / "config.yaml").write_text("model:\n  hidden: 64\nseed: 42\n")
    pl.DataFrame(
        {
            "epoch": [0, 0, 1, 1, 2, 2],
            "step": [10, 10, 20, 20, 30, 30],
            "train_loss": [1.0, None, 0.8, None, 0.7, None],
            "val_loss": [None, 1.1, None, 0.9, None, 0.85],
            "val_rank_ic_1d": [None, 0.01, None, 0.03, None, 0.04],
        }
    ).write_csv(run / "logs" / "metrics.csv")
    return run


@pytest.fixture()
def run_cfg(tmp_path):
    run = make_run_dir(tmp_path)
    cfg = load_config(
        [
            f"paths.output_dir={tmp_path / 'output'}",
            f"paths.dataset={tmp_path / 'none.parquet'}",
            f"paths.runs_dir={tmp_path / 'runs'}",
        ]
    )
    return run, cfg


def test_report_json_and_html(run_cfg):
    run, cfg = run_cfg
    out = build_report(cfg, run)
    assert out["json"] == run.resolve() / "report.json" and out["html"].exists()
    rep = json.loads(out["json"].read_text())  # strict JSON: NaN became null
    assert [m for m in rep["missing"] if not m.startswith("sector column")] == []  # no dataset: no S33
    assert rep["horizons"] == [1, 5]
    model = pl.read_parquet(run / "predictions" / "atft" / "test.parquet")
    ref = metrics.summarize_ic(metrics.daily_ic(model, "pred_1d", "target_1d"))
    assert rep["product"] == "atft" and rep["reference"] == "lightgbm"
    assert rep["evaluation"]["atft"]["1"]["rank_ic_mean"] == pytest.approx(ref["rank_ic_mean"])
    assert rep["evaluation"]["atft"]["1"]["rank_ic_mean"] > rep["evaluation"]["lightgbm"]["1"]["rank_ic_mean"]
    assert rep["evaluation"] == json.loads((run / "comparison.json").read_text())["pooled"]  # read, not re-scored
    assert rep["paired"]["atft_vs_lightgbm"]["1"]["mean_diff"] > 0
    assert set(rep["backtest"]) == {"atft", "lightgbm"}
    assert rep["checks"]["param_count"] == 312345 and rep["checks"]["param_within_tolerance"] is False
    assert rep["checks"]["sharpe_target"] == 0.849
    assert rep["checks"]["sharpe"] == pytest.approx(rep["backtest"]["atft"]["summary"]["sharpe"])
    assert rep["feature_importance"]["LightGBM gain"] == {"returns_1d": 8.0, "rsi_14": 6.0}
    assert len(rep["feature_importance"]["model variable selection"]) == 30
    assert rep["durations"]["fold2_atft_train_seconds"] == 12.5 and rep["peak_memory"]["peak_rss_mb"] == 850.0
    assert rep["data"]["safe_stats"]["rows"] == 2700 and "x_sparse" in rep["data"]["safe_stats"]["features dropped"]
    assert rep["data"]["safe_report"].endswith("safe_1.json") and rep["data"]["dataset"]["calendar"] == "XTKS"
    assert [r["period"] for r in rep["per_year"]["atft"]] == ["2023", "2024"]
    assert [r["epoch"] for r in rep["training"]["curves"]] == [0, 1, 2]
    # t-stats with their method everywhere one is shown: Newey–West at 1 day, EWC at 5 days (issue 21)
    for name in ("atft", "lightgbm"):
        e1, e5 = rep["evaluation"][name]["1"], rep["evaluation"][name]["5"]
        assert e1["tstat_method"] == "newey_west" and e1["hac_lag"] >= 0 and "rank_ic_tstat_naive" in e1
        assert e5["tstat_method"] == "ewc" and e5["tstat_dof"] == 2 * e5["n_days"] // 25 and e5["hac_lag"] is None
    assert rep["paired"]["atft_vs_lightgbm"]["5"]["tstat_method"] == "ewc"
    assert rep["checks"]["sharpe_tstat_method"] == "newey_west" and rep["checks"]["sharpe_hac_lag"] >= 0
    assert all(r["tstat_method"] == "newey_west" for r in rep["per_year"]["atft"])
    # the same rows for both predictors, ideal and realistic backtests side by side
    assert rep["rows"]["frames"]["atft"]["kept"] == rep["rows"]["frames"]["lightgbm"]["kept"] == model.height
    bt = rep["backtest"]["atft"]
    # the realistic book is the headline for every source (issue 21), the ideal one beside it; capacity at 3 capitals
    assert bt["headline"] == "realistic" and bt["summary"] == bt["realistic"] and bt["ideal"]["mode"] == "ideal"
    cap, by_h = rep["backtest_capacity"], rep["backtest_by_horizon"]
    assert cap["predictor"] == "atft" and set(cap["horizons"]) == set(by_h["atft"]) == {"1", "5"}
    assert all([r["capital"] for r in c["rows"]] == [1e8, 1e9, 1e10] for c in cap["horizons"].values())
    # every horizon's overlapping-cohort book; at the backtest's own horizon, the same book as the headline one
    assert by_h["atft"]["1"]["realistic"]["sharpe"] == pytest.approx(bt["realistic"]["sharpe"])
    assert by_h["atft"]["1"]["ideal"]["sharpe"] == pytest.approx(bt["ideal"]["sharpe"])
    assert cap["horizons"]["1"]["rows"][0]["sharpe"] == pytest.approx(bt["realistic"]["sharpe"])  # ¥100 M = capital
    assert bt["realistic"]["realism"]["borrow"]["available"] is False  # no dataset: reported unavailable

    html = out["html"].read_text()
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in html, sid
    imgs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    # IC decay; daily RankIC, IC histogram + Q-Q, 2 monthly heatmaps, sectors; signal; 3 quantile charts (means,
    # cumulative, per-day distribution); equity, rolling Sharpe, rolling volatility, rolling beta, monthly returns;
    # capacity; 2 importance charts; 2 training charts (issue 22: the standard panels)
    assert len(imgs) == 20
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in imgs)
    assert "http://" not in html and "https://" not in html and "<script" not in html
    assert not list(run.glob(".*.tmp"))


def test_report_without_optional_inputs(run_cfg):
    run, cfg = run_cfg
    shutil.rmtree(run / "predictions" / "lightgbm")
    for name in ("comparison.json", "variable_importance.json", "metrics.json", "config.yaml"):
        (run / name).unlink()
    (run / "logs" / "metrics.csv").unlink()
    out = build_report(cfg, run)
    rep = json.loads(out["json"].read_text())
    assert "comparison.json" in rep["missing"] and "metrics.json" in rep["missing"]
    assert set(rep["backtest"]) == {"atft"} and rep["paired"] == {}
    assert rep["checks"]["param_count"] is None
    html = out["html"].read_text()
    assert all(f'<section id="{sid}">' in html for sid in SECTIONS)
    assert "Only one predictor" in html and "No config.yaml" in html
    # without metrics.json the run names no baseline run: no LightGBM importance, no safe figures
    assert rep["training"]["curves"] is None and rep["feature_importance"] == {}
    assert rep["data"]["safe_stats"] == {}


def test_report_bad_run_dir(tmp_path, run_cfg):
    _, cfg = run_cfg
    with pytest.raises(DataError, match="not found"):
        build_report(cfg, tmp_path / "nope")
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with pytest.raises(DataError, match=r"test.parquet"):
        build_report(cfg, empty)
    assert list(empty.iterdir()) == []
    (empty / "predictions" / "x").mkdir(parents=True)
    pl.DataFrame({"Date": [date(2024, 1, 4)], "Code": ["13010"], "score": [1.0]}).write_parquet(
        empty / "predictions" / "x" / "test.parquet"
    )
    with pytest.raises(DataError, match="pred_"):
        build_report(cfg, empty)
    assert sorted(p.name for p in empty.iterdir()) == ["predictions"]


def test_report_with_the_dataset_excludes_rows_and_trades_realistically(run_cfg, tmp_path):
    """With the dataset: a row the model lacks is left out of every comparison (and counted), the realistic
    backtest uses its borrowability, and the HTML shows both backtests and the exclusions."""
    run, _ = run_cfg
    model = pl.read_parquet(run / "predictions" / "atft" / "test.parquet")
    dropped = model.filter(pl.col("Code") == "13000")
    model.filter(pl.col("Code") != "13000").write_parquet(run / "predictions" / "atft" / "test.parquet")
    (run / "comparison.json").unlink()  # scored again by the one scorer, on the rows left
    ds = tmp_path / "ds.parquet"
    model.select(
        "Date",
        "Code",
        Close=pl.lit(1000.0),
        returns_1d=pl.lit(0.0),
        is_borrowable=(pl.col("Code").str.slice(2, 2).cast(pl.Int32) % 2).cast(pl.Int8),
    ).write_parquet(ds)
    FeatureManifest.from_frame(pl.read_parquet(ds), {}, [1], 1).save(manifest_path(ds))  # the entry lag's source
    cfg = load_config(
        [
            f"paths.output_dir={tmp_path / 'output'}",
            f"paths.dataset={ds}",
            f"paths.runs_dir={tmp_path / 'runs'}",
            f"paths.raw_dir={tmp_path / 'no_raw'}",
            "portfolio.realism=realistic",
            "portfolio.cost_model=spread_impact",
        ]
    )
    rep = json.loads(build_report(cfg, run)["json"].read_text())
    rows = rep["rows"]["frames"]
    assert rows["lightgbm"]["rows"] - rows["lightgbm"]["kept"] == dropped.height
    assert rows["lightgbm"]["excluded_absent_in"]["atft"] == dropped.height
    bt = rep["backtest"]["atft"]
    assert bt["headline"] == "realistic" and bt["summary"] == bt["realistic"]
    assert (
        bt["realistic"]["realism"]["borrow"]["applied"]
        and bt["realistic"]["realism"]["borrow"]["short_names_passed_over"] > 0
    )
    assert bt["realistic"]["cost_model"] == "spread_impact" and set(bt["realistic"]["by_cost_model"]) == {
        "flat",
        "spread_impact",
    }
    assert rep["checks"]["sharpe"] == pytest.approx(bt["realistic"]["sharpe"])
    assert rep["backtest_market"]["borrow"] == "dataset is_borrowable"
    html = (run / "report.html").read_text()
    assert "atft ideal" in html and "atft realistic (headline)" in html and "Rows compared" in html
    assert "Newey–West" in html and "EWC t(" in html  # the 5-day t's method (issue 21)


def test_train_result_round_trip_and_older_results_refused(tmp_path):
    run = tmp_path / "r"
    res = _train_result(run, tmp_path / "b")
    path = res.save(tmp_path / "metrics.json")
    back = TrainResult.load(path)
    assert back.product == "atft" and back.folds[0].predictors["atft"]["epochs"] == [3] and back.epochs == [3]
    d = json.loads(path.read_text())
    d.pop("comparison")
    path.write_text(json.dumps(d))
    with pytest.raises(DataError, match="not a training result of this version"):
        TrainResult.load(path)
