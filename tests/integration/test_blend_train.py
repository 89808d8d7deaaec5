"""`gogooku3 train` with every predictor (ATFT-GAT-FAN, LightGBM, ridge, their blend, the oracle) over every fold,
scored by the one comparison on identical rows; the bundle's product predictor (the blend) reproduces the run's
test predictions with the network run once."""

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from conftest import TINY_FIT, TINY_NET, TINY_SPLIT  # tests/ is on sys.path (rootdir conftest)
from gogooku3.config.compose import load_config
from gogooku3.pipelines.atft import CompleteATFTTrainingPipeline
from gogooku3.predictors.bundle import load_bundle, predict_for_dates, predict_product

torch.set_num_threads(1)
OVERRIDES = [
    *TINY_NET,
    *TINY_SPLIT,
    *TINY_FIT,
    "model.market_context=film",
    "train.cv.folds=all",
    "predictors.zoo.blend.grid_step=0.25",
]


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
    c = m["comparison"]
    assert m["product"] == c["product"] == "blend" and c["reference"] == "lightgbm" and len(m["folds"]) == 2
    assert m["predictors"] == ["atft", "lightgbm", "ridge", "blend"]  # no oracle: the planted data is not synthetic
    assert m["test"] == c["pooled"]["blend"] and m["test"]["1"]["rank_ic_mean"] > 0.1  # the planted signal survives
    for pair in ("atft_vs_lightgbm", "ridge_vs_lightgbm", "blend_vs_lightgbm", "blend_vs_atft", "blend_vs_ridge"):
        assert c["paired"][pair]["1"]["tstat_method"] == "newey_west" and c["paired"][pair]["1"]["n_days"] > 0
    rows = c["rows"]["frames"]
    kept = {r["kept"] for r in rows.values()}
    assert len(kept) == 1 and kept.pop() == c["rows"]["n_common"] > 0  # identical rows for every predictor
    assert c["pooled"]["blend"]["1"]["n_days"] == sum(
        c["per_fold"][str(f["fold"]["index"])]["blend"]["1"]["n_days"] for f in m["folds"]
    )  # pooled = the folds' test days
    for f in m["folds"]:
        curve = f["predictors"]["blend"]
        assert set(curve["weights"]) == {"1", "5"} and all(0 <= w <= 1 for w in curve["weights"].values())
        # the weight is the validation optimum, and the validation span is the fold's, before its test block
        ic = curve["val_rank_ic"]["1"]
        assert ic[curve["grid"].index(curve["weights"]["1"])] == max(ic)
        assert f["val_range"][1] < f["test_range"][0]
        assert set(f["predictors"]["ridge"]["alpha"]) == {"1", "5"}
    # every LightGBM prediction in the blend comes from the booster of that row's fold, fitted before its test block
    base = json.loads((Path(m["baseline"]["directory"]) / "run.json").read_text())
    for f, pf in zip(m["folds"], base["per_fold"], strict=True):
        assert pf["fold"] == f["fold"]["index"] and pf["test_range"] == f["test_range"]
        assert pf["fit_range"][1] < pf["val_range"][0] <= pf["val_range"][1] < f["test_range"][0]
    for name in m["predictors"]:
        for kind in ("val", "test"):
            assert (run / "predictions" / name / f"{kind}.parquet").is_file()
    ct = pl.read_parquet(run / "predictions" / "blend" / "test.parquet")
    assert ct["Date"].min() >= pl.Series([m["folds"][0]["test_range"][0]]).str.to_date()[0]
    assert json.loads((run / "comparison.json").read_text()) == c


def test_bundle_predicts_the_blend_on_its_own_running_the_network_once(blended, tmp_path, monkeypatch):
    _, ds, run = blended
    b = load_bundle(run, dataset=ds)
    assert b.meta["product"] == "blend"
    spec = b.meta["blend"]
    assert spec["method"] == "zscore" and spec["fold"] == 1
    for name in spec["boosters"].values():  # boosters live inside the bundle
        assert (run / "bundle" / name).is_file()
    ct = pl.read_parquet(run / "predictions" / "blend" / "test.parquet")
    day = ct["Date"].max()
    calls = []
    forward = type(b.model).forward
    monkeypatch.setattr(type(b.model), "forward", lambda self, *a, **k: calls.append(1) or forward(self, *a, **k))
    got = predict_product(b, ds, [day], quantiles=True, explain=True)
    assert len(calls) == 1  # one day, one forward pass: scores, quantiles and weights
    assert "vsn_weights" in got.columns and any(c.endswith("_q10") for c in got.columns)
    ref = ct.filter(pl.col("Date") == day)
    j = got.join(ref, on="Code", suffix="_run")
    assert j.height == ref.height == got.height
    for h in (1, 5):
        assert np.allclose(j[f"pred_{h}d"], j[f"pred_{h}d_run"], atol=1e-4)
    monkeypatch.undo()
    # a copied bundle still predicts (nothing outside it is read), and without the blend it is the model alone
    import shutil

    shutil.copytree(run / "bundle", tmp_path / "copy" / "bundle")
    shutil.rmtree(run.parent.parent / "output" / "baselines", ignore_errors=True)
    b2 = load_bundle(tmp_path / "copy", dataset=ds)
    assert np.allclose(predict_product(b2, ds, [day]).sort("Code")["pred_1d"], got.sort("Code")["pred_1d"])
    b2.meta["blend"] = None
    assert predict_product(b2, ds, [day]).equals(predict_for_dates(b2, ds, [day]))


def test_without_lightgbm_the_deep_model_is_the_product(blended, monkeypatch):
    root, _, _ = blended
    monkeypatch.chdir(root)
    res = CompleteATFTTrainingPipeline(
        load_config([*OVERRIDES, "predictors.fit=[atft,blend]", "train.max_epochs=1", "train.cv.folds=null"])
    ).run()
    run = Path(res["run_dir"])
    m = json.loads((run / "metrics.json").read_text())
    assert m["product"] == "atft" and m["predictors"] == ["atft"] and m["comparison"]["reference"] is None
    assert not (run / "predictions" / "blend").exists()
    b = load_bundle(run)
    assert b.meta["blend"] is None and b.meta["product"] == "atft"
