"""Report: JSON figures and an HTML page with every section and embedded images, from a fake run directory."""

from __future__ import annotations

import base64
import json
import re
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from gogooku3.config import load_config
from gogooku3.errors import DataError
from gogooku3.evaluation import metrics
from gogooku3.evaluation.report import build_report, importance_from

HORIZONS = (1, 5)
SECTIONS = ("summary", "data", "horizons", "backtest", "rank-ic", "quantiles", "per-year", "importance", "training",
            "config", "resources")


def _preds(rng: np.random.Generator, signal: float, n_days: int = 90, n: int = 30) -> pl.DataFrame:
    dates = [date(2023, 11, 1) + timedelta(days=i) for i in range(n_days)]  # spans two calendar years
    cols: dict = {"Date": pl.Series([d for d in dates for _ in range(n)], dtype=pl.Date),
                  "Code": [f"{1300 + j}0" for _ in dates for j in range(n)]}
    for h in HORIZONS:
        y = rng.normal(scale=0.02 * np.sqrt(h), size=n_days * n)
        cols[f"pred_{h}d"] = (signal * y / y.std() + rng.normal(size=y.size)).astype(np.float32)
        cols[f"target_{h}d"] = y.astype(np.float32)
    return pl.DataFrame(cols)


def make_run_dir(root: Path) -> Path:
    rng = np.random.default_rng(0)
    run = root / "runs" / "20240101_000000"
    (run / "logs").mkdir(parents=True)
    (run / "bundle").mkdir()
    _preds(rng, 0.3).write_parquet(run / "predictions_test.parquet")
    _preds(rng, 0.1).write_parquet(run / "baseline_predictions_test.parquet")
    (run / "metrics.json").write_text(json.dumps({"n_params": 312345, "train_seconds": 12.5, "peak_rss_mb": 850.0,
                                                  "test": {"rank_ic_1d": 0.05}}))
    (run / "variable_importance.json").write_text(json.dumps({f"feat_{i}": 1.0 / (i + 1) for i in range(30)}))
    (run / "config.yaml").write_text("model:\n  hidden: 64\nseed: 42\n")
    pl.DataFrame({"epoch": [0, 0, 1, 1, 2, 2], "step": [10, 10, 20, 20, 30, 30],
                  "train_loss": [1.0, None, 0.8, None, 0.7, None], "val_loss": [None, 1.1, None, 0.9, None, 0.85],
                  "val_rank_ic_1d": [None, 0.01, None, 0.03, None, 0.04]}).write_csv(run / "logs" / "metrics.csv")
    exp = root / "output" / "experiments"
    exp.mkdir(parents=True)
    (exp / "safe_20240101_000000.json").write_text(json.dumps({
        "steps": {"load": {"rows": 2700, "stocks": 30, "features": 145},
                  "baseline": {"feature_importance": {"1": {"returns_1d": 10.0, "rsi_14": 4.0},
                                                      "5": {"returns_1d": 6.0, "rsi_14": 8.0}}}}}))
    return run


@pytest.fixture()
def run_cfg(tmp_path):
    run = make_run_dir(tmp_path)
    cfg = load_config([f"paths.output_dir={tmp_path / 'output'}", f"paths.dataset={tmp_path / 'none.parquet'}",
                       f"paths.runs_dir={tmp_path / 'runs'}"])
    return run, cfg


def test_report_json_and_html(run_cfg):
    run, cfg = run_cfg
    out = build_report(cfg, run)
    assert out["json"] == run.resolve() / "report.json" and out["html"].exists()
    rep = json.loads(out["json"].read_text())  # strict JSON: NaN became null
    assert rep["missing"] == []
    assert rep["horizons"] == [1, 5]
    model = pl.read_parquet(run / "predictions_test.parquet")
    ref = metrics.summarize_ic(metrics.daily_ic(model, "pred_1d", "target_1d"))
    assert rep["evaluation"]["model"]["1"]["rank_ic_mean"] == pytest.approx(ref["rank_ic_mean"])
    assert rep["evaluation"]["model"]["1"]["rank_ic_mean"] > rep["evaluation"]["baseline"]["1"]["rank_ic_mean"]
    assert rep["paired_model_vs_baseline"]["1"]["mean_diff"] > 0
    assert set(rep["backtest"]) == {"model", "baseline"}
    assert rep["checks"]["param_count"] == 312345 and rep["checks"]["param_within_tolerance"] is False
    assert rep["checks"]["sharpe_target"] == 0.849
    assert rep["checks"]["sharpe"] == pytest.approx(rep["backtest"]["model"]["summary"]["sharpe"])
    assert rep["feature_importance"]["LightGBM gain"] == {"returns_1d": 8.0, "rsi_14": 6.0}
    assert len(rep["feature_importance"]["model variable selection"]) == 30
    assert rep["durations"]["train_seconds"] == 12.5 and rep["peak_memory"]["peak_rss_mb"] == 850.0
    assert rep["data"]["safe_stats"]["steps.load.rows"] == 2700
    assert [r["period"] for r in rep["per_year"]["model"]] == ["2023", "2024"]
    assert [r["epoch"] for r in rep["training"]["curves"]] == [0, 1, 2]

    html = out["html"].read_text()
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in html, sid
    imgs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(imgs) == 6  # horizons, equity+drawdown, rank-ic, quantiles, importance, training
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in imgs)
    assert "http://" not in html and "https://" not in html and "<script" not in html
    assert not list(run.glob(".*.tmp"))


def test_report_without_optional_inputs(run_cfg):
    run, cfg = run_cfg
    for name in ("baseline_predictions_test.parquet", "variable_importance.json", "metrics.json", "config.yaml"):
        (run / name).unlink()
    (run / "logs" / "metrics.csv").unlink()
    out = build_report(cfg, run)
    rep = json.loads(out["json"].read_text())
    assert "baseline_predictions_test.parquet" in rep["missing"] and "metrics.json" in rep["missing"]
    assert set(rep["backtest"]) == {"model"} and rep["paired_model_vs_baseline"] == {}
    assert rep["checks"]["param_count"] is None
    html = out["html"].read_text()
    assert all(f'<section id="{sid}">' in html for sid in SECTIONS)
    assert "No baseline predictions" in html and "No config.yaml" in html
    assert rep["training"]["curves"] is None and rep["feature_importance"] == {"LightGBM gain": {"returns_1d": 8.0,
                                                                                                 "rsi_14": 6.0}}


def test_report_bad_run_dir(tmp_path, run_cfg):
    _, cfg = run_cfg
    with pytest.raises(DataError, match="not found"):
        build_report(cfg, tmp_path / "nope")
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with pytest.raises(DataError, match="predictions_test.parquet"):
        build_report(cfg, empty)
    assert list(empty.iterdir()) == []
    pl.DataFrame({"Date": [date(2024, 1, 4)], "Code": ["13010"], "score": [1.0]}).write_parquet(
        empty / "predictions_test.parquet")
    with pytest.raises(DataError, match="pred_"):
        build_report(cfg, empty)
    assert sorted(p.name for p in empty.iterdir()) == ["predictions_test.parquet"]


def test_importance_extraction_shapes():
    assert importance_from({"a": 1, "b": 2}) == {"a": 1.0, "b": 2.0}
    assert importance_from([{"feature": "a", "gain": 3.0}]) == {"a": 3.0}
    assert importance_from({"x": {"rows": 5}, "lgbm": {"gain_importance": [{"name": "a", "importance": 2}]}},
                           direct=False) == {"a": 2.0}
    assert importance_from({"rows": 3, "steps": {"n": 2}}, direct=False) is None
