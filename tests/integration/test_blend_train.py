"""`gogooku3 train` with the model + LightGBM blend and the market context on, over every fold; the bundle's blended
predictor reproduces the run's combined test predictions."""

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from gogooku3.predictors.bundle import load_bundle, predict_blended, predict_for_dates
from gogooku3.config.compose import load_config
from gogooku3.pipelines.atft import CompleteATFTTrainingPipeline

torch.set_num_threads(1)
OVERRIDES = ["labels.horizons=[1,5]", "model.window=10", "model.hidden=16", "model.head_hidden=8",
             "model.graph.window=10", "model.graph.min_obs=5", "train.max_epochs=2", "train.limit_train_batches=8",
             "train.warmup_steps=2", "split.min_train_days=60", "split.n_splits=2", "split.val_days=12",
             "trainer.progress_bar=false", "train.ensemble=1", "trainer.num_threads=1",
             "model.market_context=film", "train.cv.folds=all", "train.blend.grid_step=0.25"]


@pytest.fixture(scope="module")
def blended(tmp_path_factory, planted_dataset):
    root = tmp_path_factory.mktemp("blend")
    ds = planted_dataset(root)
    import os

    old = os.getcwd()
    os.chdir(root)
    try:
        res = CompleteATFTTrainingPipeline(load_config(OVERRIDES)).run()
        yield root, ds, Path(res["run_dir"])
    finally:
        os.chdir(old)


def test_blended_run_reports_every_predictor_per_fold_and_pooled(blended):
    _, _, run = blended
    m = json.loads((run / "metrics.json").read_text())
    assert m["predictor"] == "combined" and len(m["folds"]) == 2
    assert m["combined_test"]["1"]["rank_ic_mean"] > 0.1                   # the planted signal survives the blend
    for key in ("combined_vs_baseline", "combined_vs_model", "model_vs_baseline"):
        assert m[key]["1"]["tstat_method"] == "newey_west" and m[key]["1"]["n_days"] > 0
    rows = m["comparison_rows"]["frames"]
    assert rows["combined"]["kept"] == rows["model"]["kept"] == rows["baseline"]["kept"] > 0   # identical rows
    assert m["test"]["1"]["n_days"] == m["combined_test"]["1"]["n_days"] == sum(
        f["model_test"]["1"]["n_days"] for f in m["folds"])                 # pooled = the folds' test days
    for f in m["folds"]:
        assert set(f["blend_weights"]) == {"1", "5"} and all(0 <= w <= 1 for w in f["blend_weights"].values())
        assert f["combined_test"]["1"]["n_days"] > 0 and f["combined_vs_baseline"]["1"]["n_days"] > 0
        curve = m["blend"]["folds"][str(f["fold"]["index"])]
        # the weight is the validation optimum, and the validation span is the fold's, before its test block
        ic = curve["val_rank_ic"]["1"]
        assert ic[curve["grid"].index(curve["weights"]["1"])] == max(ic)
        assert f["val_range"][1] < f["test_range"][0]
    # every LightGBM prediction in the blend comes from the booster of that row's fold, fitted before its test block
    base = json.loads((Path(m["baseline"]["directory"]) / "run.json").read_text())
    for f, pf in zip(m["folds"], base["per_fold"]):
        assert pf["fold"] == f["fold"]["index"] and pf["test_range"] == f["test_range"]
        assert pf["fit_range"][1] < pf["val_range"][0] <= pf["val_range"][1] < f["test_range"][0]
    ct = pl.read_parquet(run / "predictions_combined_test.parquet")
    assert ct["Date"].min() >= pl.Series([m["folds"][0]["test_range"][0]]).str.to_date()[0]


def test_bundle_predicts_the_blend_on_its_own(blended, tmp_path):
    _, ds, run = blended
    b = load_bundle(run, dataset=ds)
    spec = b.meta["blend"]
    assert spec["method"] == "zscore" and spec["fold"] == 1
    for name in spec["boosters"].values():                                    # boosters live inside the bundle
        assert (run / "bundle" / name).is_file()
    ct = pl.read_parquet(run / "predictions_combined_test.parquet")
    day = ct["Date"].max()
    got = predict_blended(b, ds, [day])
    ref = ct.filter(pl.col("Date") == day)
    j = got.join(ref, on="Code", suffix="_run")
    assert j.height == ref.height == got.height
    for h in (1, 5):
        assert np.allclose(j[f"pred_{h}d"], j[f"pred_{h}d_run"], atol=1e-4)
    # a copied bundle still predicts (nothing outside it is read), and without the blend it is the model alone
    import shutil

    shutil.copytree(run / "bundle", tmp_path / "copy" / "bundle")
    shutil.rmtree(run.parent.parent / "output" / "baselines", ignore_errors=True)
    b2 = load_bundle(tmp_path / "copy", dataset=ds)
    assert np.allclose(predict_blended(b2, ds, [day]).sort("Code")["pred_1d"], got.sort("Code")["pred_1d"])
    b2.meta["blend"] = None
    assert predict_blended(b2, ds, [day]).equals(predict_for_dates(b2, ds, [day]))


def test_blend_off_keeps_the_model_alone(blended, monkeypatch):
    root, _, _ = blended
    monkeypatch.chdir(root)
    res = CompleteATFTTrainingPipeline(load_config(OVERRIDES + ["train.blend.enabled=false", "train.max_epochs=1",
                                                                "train.cv.folds=null"])).run()
    run = Path(res["run_dir"])
    m = json.loads((run / "metrics.json").read_text())
    assert m["predictor"] == "model" and m["combined_test"] is None and m["blend"] is None
    assert not (run / "predictions_combined_test.parquet").exists()
    assert load_bundle(run).meta["blend"] is None
