"""`gogooku3 train` with `neutral.targets` and the `blend_neutral` predictor on a tiny planted dataset: the neutral
predictions carry no sector or exposure tilt on any day, the models train on residualised labels (LightGBM in a
store of its own) while every predictor is scored on the raw ones, and the report shows raw and neutral IC side by
side with the books' exposures."""

import json
from pathlib import Path

import polars as pl
import pytest
import torch

from conftest import TINY_FIT, TINY_NET, TINY_SPLIT  # tests/ is on sys.path (rootdir conftest)
from gogooku3.config.compose import load_config
from gogooku3.pipelines.atft import CompleteATFTTrainingPipeline

torch.set_num_threads(1)
pytestmark = pytest.mark.slow  # one tiny train (members in this process) and a report: ~4 min at load 15 on 2 cores
OVERRIDES = [
    *TINY_NET,
    *TINY_SPLIT,
    *TINY_FIT,
    "predictors.fit=[atft,lightgbm,blend,blend_neutral]",
    "neutral.log=[]",
    "neutral.linear=[f_noise1]",  # the planted dataset has no size or beta: a noise column stands in
    "neutral.min_stocks=10",
    "neutral.targets=true",
]


@pytest.fixture(scope="module")
def neutral_run(tmp_path_factory, planted_dataset):
    root = tmp_path_factory.mktemp("neutral")
    ds = planted_dataset(root)
    import os

    old = os.getcwd()
    os.chdir(root)
    try:
        cfg = load_config(OVERRIDES)
        res = CompleteATFTTrainingPipeline(cfg).run()
        yield cfg, ds, Path(res["run_dir"])
    finally:
        os.chdir(old)


def test_neutral_predictions_have_no_tilt_and_are_scored_on_raw_labels(neutral_run):
    _, ds, run = neutral_run
    m = json.loads((run / "metrics.json").read_text())
    assert m["predictors"] == ["atft", "lightgbm", "blend", "blend_neutral"]
    c = m["comparison"]
    assert c["pooled"]["blend_neutral"]["1"]["rank_ic_mean"] > 0.1  # the planted signal is idiosyncratic: kept
    test = pl.read_parquet(run / "predictions" / "blend_neutral" / "test.parquet")
    raw = pl.read_parquet(ds).select("Date", "Code", "S33", "f_noise1", pl.col("target_1d").alias("raw"))
    j = test.join(raw, on=["Date", "Code"])
    assert (j["target_1d"] == j["raw"]).all()  # scored on the dataset's labels, not the residualised ones
    sector_means = j.group_by("Date", "S33").agg(pl.col("pred_1d").mean().abs())["pred_1d"]
    assert sector_means.max() < 1e-5
    tilt = j.group_by("Date").agg(pl.corr("pred_1d", "f_noise1"))["pred_1d"]
    assert tilt.abs().max() < 1e-4
    facts = m["folds"][0]["predictors"]["blend_neutral"]
    assert facts["of"] == "blend" and facts["exposures"]["linear"] == ["f_noise1"]
    # LightGBM fitted on residualised labels: a store of its own (the raw labels' fingerprint differs)
    assert (Path(m["baseline"]["directory"]) / "run.json").is_file()


def test_report_shows_raw_and_neutral_ic_and_the_books_exposures(neutral_run):
    from gogooku3.evaluation.report import build_report

    cfg, ds, run = neutral_run
    cfg = load_config([*OVERRIDES, f"paths.dataset={ds}", f"paths.output_dir={ds.parent}"])
    out = build_report(cfg, run)
    rep = json.loads(out["json"].read_text())
    nv = rep["neutral"]
    assert set(nv["ic"]) == set(rep["evaluation"])
    bn = nv["ic"]["blend_neutral"]["1"]
    # already neutral: neutralising again changes nothing
    assert bn["neutral"]["rank_ic_mean"] == pytest.approx(bn["raw"]["rank_ic_mean"], abs=1e-6)
    assert set(nv["book"]) == set(rep["backtest"])
    assert nv["book"]["blend_neutral"]["numeric"]["f_noise1"]["mean_abs"] >= 0
    assert '<section id="neutral">' in out["html"].read_text()
