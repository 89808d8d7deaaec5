"""A close-only user file (20 names of any code form × ~600 XNYS sessions, no index, no sectors, no volume) through
`gogooku3 run data=files`: import -> build -> safe -> train (1 epoch) -> backtest -> report -> predict."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from conftest import TINY_NET  # tests/ is on sys.path (rootdir conftest)
from gogooku3.config.compose import load_config
from gogooku3.core.calendar import TradingCalendar
from gogooku3.features.manifest import FeatureManifest
from gogooku3.pipelines.full import FullTrainingPipeline

torch.set_num_threads(1)
CODES = [
    "AAPL",
    "BRK.B",
    "brk.a",
    "600519",
    "000001",
    "7203.T",
    "msft",
    "ko",
    "IBM",
    "GE",
    "T",
    "XOM",
    "JNJ",
    "PG",
    "bac",
    "C",
    "F",
    "GM",
    "HD.1",
    "0700.HK",
]
TINY = [
    *TINY_NET,
    "train.max_epochs=1",
    "train.limit_train_batches=8",
    "split.val_days=20",
    "train.ensemble=1",
    "safe.graph.n_nodes=10",
]


def close_only_file(path: Path, n_days: int = 600, seed: int = 3) -> list:
    """Date, Ticker, Close on XNYS sessions from 2019-01-02; a little next-day reversal so there is something to
    learn; one name listed only for the last 200 sessions."""
    days = TradingCalendar.from_exchange("XNYS", "2019-01-02", "2022-12-30").sessions.to_list()[:n_days]
    rng = np.random.default_rng(seed)
    n = len(CODES)
    eps = rng.normal(0, 0.02, (n_days, n))
    r = rng.normal(0, 0.01, (n_days, 1)) + eps
    r[1:] -= 0.1 * eps[:-1]
    px = 30 * np.exp(np.cumsum(r, axis=0))
    rows = [
        pl.DataFrame({"Date": days[s:], "Ticker": code, "Close": px[s:, i]})
        for i, code in enumerate(CODES)
        for s in [400 if code == "GM" else 0]
    ]
    pl.concat(rows).write_csv(path)
    return days


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("close_only")
    days = close_only_file(root / "close.csv")
    import os

    old = os.getcwd()
    os.chdir(root)
    try:
        cfg = load_config(
            [
                "data=files",
                f"data.path={root / 'close.csv'}",
                "data.calendar=XNYS",
                "data.columns.code=Ticker",
                "data.columns.open=null",
                "data.columns.high=null",
                "data.columns.low=null",
                "data.columns.volume=null",
                *TINY,
            ]
        )
        yield root, days, FullTrainingPipeline(cfg).run()
    finally:
        os.chdir(old)


def test_close_only_file_runs_every_step(run):
    root, _, res = run
    assert list(res) == ["data", "build", "safe", "train", "backtest", "report", "predict"]
    ds = root / "output" / "ml_dataset_latest.parquet"
    man = FeatureManifest.for_dataset(ds)
    df = pl.read_parquet(ds)
    assert len(man.names) >= 50 and not [n for n in man.names if df[n].null_count() == df.height]
    assert man.notes["market"].startswith("proxy: equal-weighted") and "beta_60d" in man.names
    assert "sector" not in man.groups and "volume" not in man.groups
    assert (root / "output" / "ml_dataset_latest.coverage.txt").read_text().count("proxy") == 1
    safe = res["safe"]
    assert safe["step6_graph"]["ranked_by"] == "return_history" and safe["step6_graph"]["n_nodes"] == 10
    assert safe["step2_features"]["n_features"] >= 50
    m = json.loads((root / "runs" / "last" / "metrics.json").read_text())
    assert m["epochs"] == [1] and m["test"]["1"]["n_days"] > 0 and "lightgbm" in m["comparison"]["pooled"]
    assert list(res["backtest"]) == ["blend", "atft", "lightgbm", "ridge"]  # every predictor, the product first
    for who in res["backtest"]:
        summary = res["backtest"][who]["summary"]
        assert math.isfinite(summary["sharpe"]) and summary["n_periods"] > 50
    assert (root / "runs" / "last" / "report.html").stat().st_size > 10_000


def test_codes_of_any_form_survive_to_the_predictions(run):
    root, days, _ = run
    preds = sorted((root / "output" / "predictions").glob("pred_*.parquet"))
    p = pl.read_parquet(preds[-1])
    assert preds[-1].name == f"pred_{days[-1]}.parquet"
    assert set(p["Code"]) == set(CODES)  # tickers with dots, lower case, leading zeros: unchanged
