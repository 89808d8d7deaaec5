"""`gogooku3 train` with the zoo's networks beside ATFT-GAT-FAN (predictors.nets): each fitted on the same plans,
scored in the one comparison, checkpointed and logged under its own name, resumed from its own checkpoints, trained
in member worker processes, and served from the bundle when it is the product."""

import json
import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from conftest import TINY_FIT, TINY_NET, TINY_SPLIT  # tests/ is on sys.path (rootdir conftest)
from gogooku3.config.compose import load_config
from gogooku3.core.errors import ConfigError
from gogooku3.model.zoo import MLPNet
from gogooku3.pipelines.atft import CompleteATFTTrainingPipeline
from gogooku3.predictors.bundle import load_bundle, predict_for_dates

torch.set_num_threads(1)
NETS = ["mlp", "gru", "lstm"]
OVERRIDES = [
    *TINY_NET,
    *TINY_SPLIT,
    *TINY_FIT,
    "train.cv.folds=2",
    "train.ema_decay=null",  # 16 steps: an EMA of 0.99 would still be mostly the initial weights
    f"predictors.fit=[atft,lightgbm,{','.join(NETS)},blend]",
    "predictors.product=mlp",
    *[f"predictors.zoo.{n}.hidden=16" for n in NETS],
]


def _run(overrides: list[str]) -> dict:
    return CompleteATFTTrainingPipeline(load_config(overrides)).run()


@pytest.fixture(scope="module")
def zoo_run(tmp_path_factory, planted_dataset):
    root = tmp_path_factory.mktemp("zoo")
    planted_dataset(root)
    old = os.getcwd()
    os.chdir(root)
    try:
        yield root, root / _run(OVERRIDES)["run_dir"]
    finally:
        os.chdir(old)


def test_the_zoo_trains_on_the_same_plans_and_is_compared(zoo_run):
    _, run = zoo_run
    comp = json.loads((run / "comparison.json").read_text())
    m = json.loads((run / "metrics.json").read_text())
    assert m["product"] == "mlp" and m["model"]["name"] == "small"  # model facts stay the product network's (atft)
    for n in NETS:
        assert comp["pooled"][n]["1"]["rank_ic_mean"] > 0.1, n  # the planted signal, found out of sample
        assert comp["paired"][f"{n}_vs_lightgbm"]["1"]["n_days"] > 0
        val = pl.read_parquet(run / "predictions" / n / "val.parquet")
        assert val.height > 0 and val["pred_1d"].null_count() == 0
        for fold in m["folds"]:
            facts = fold["predictors"][n]
            assert facts["arch"] == n and facts["inputs"] == "features" and facts["epochs"] == [2]
            assert facts["n_params"] > 0 and facts["best_val_rank_ic"] is not None
            assert f"fit_{n}_fold{fold['fold']['index']}" in m["durations_s"]
            sub = Path(n, f"fold{fold['fold']['index']}")
            assert (run / "checkpoints" / sub / "last.ckpt").exists() and (run / "logs" / sub / "metrics.csv").exists()
    assert m["folds"][0]["predictors"]["atft"]["arch"] == "atft_gat_fan"
    assert list((run / "checkpoints").glob("fold*/last.ckpt"))  # the product network's folders are unchanged
    # the same rows: every network's test predictions cover the same (Date, Code) keys as atft's
    keys = pl.read_parquet(run / "predictions" / "atft" / "test.parquet").select("Date", "Code")
    for n in ("gru", "lstm"):
        assert pl.read_parquet(run / "predictions" / n / "test.parquet").select("Date", "Code").equals(keys)


def test_a_zoo_network_is_served_from_the_bundle(zoo_run):
    root, run = zoo_run
    ds = root / "output" / "ml_dataset_latest.parquet"
    b = load_bundle(run, dataset=ds)
    assert isinstance(b.model, MLPNet) and b.meta["model_config"]["arch"] == "mlp" and b.meta["product"] == "mlp"
    pt = pl.read_parquet(run / "predictions" / "mlp" / "test.parquet")
    day = pt["Date"].max()
    joined = predict_for_dates(b, ds, [day]).join(pt.filter(pl.col("Date") == day), on="Code", suffix="_run")
    assert joined.height > 0 and np.allclose(joined["pred_1d"], joined["pred_1d_run"], atol=1e-4)


def test_zoo_networks_resume_from_their_own_checkpoints(zoo_run):
    """Each network resumes from RUN/checkpoints/<name>/...; a network the new run does not fit is left alone."""
    root, _ = zoo_run
    os.chdir(root)
    ov = [*OVERRIDES[:-2], "predictors.fit=[atft,lightgbm,mlp]", "predictors.zoo.mlp.hidden=16"]
    m = json.loads(
        (Path(_run([*ov, "train.resume=true", "train.max_epochs=3"])["run_dir"]) / "metrics.json").read_text()
    )
    assert [f["predictors"]["mlp"]["epochs"] for f in m["folds"]] == [[3], [3]]
    with pytest.raises(ConfigError, match="resume needs the same dataset and model settings"):
        _run([*ov, "train.resume=true", "train.max_epochs=4", "predictors.zoo.mlp.hidden=24"])


def test_zoo_network_members_in_worker_processes(tmp_path, planted_dataset):
    planted_dataset(tmp_path, n_stocks=20, n_days=130)
    os.chdir(tmp_path)
    ov = [*TINY_NET, *TINY_SPLIT, *TINY_FIT, "train.ensemble=2", "trainer.member_workers=2"]
    run = Path(
        _run([*ov, "predictors.fit=[atft,gru]", "predictors.product=atft", "predictors.zoo.gru.hidden=8"])["run_dir"]
    )
    facts = json.loads((run / "metrics.json").read_text())["folds"][0]["predictors"]["gru"]
    assert facts["epochs"] == [2, 2] and len(facts["members_best_val_rank_ic"]) == 2
    for m in (0, 1):
        assert (run / "checkpoints" / "gru" / f"member{m}" / "member_final.pt").exists()
        assert (run / "logs" / "gru" / f"member{m}" / "metrics.csv").exists()
    assert pl.read_parquet(run / "predictions" / "gru" / "test.parquet")["pred_1d"].null_count() == 0


def test_networks_on_the_raw_input_panel(tmp_path, planted_dataset):
    """gru_raw and atft_raw read the raw input panel (the planted dataset has returns_1d only: the close channel);
    the product's network keeps the features panel."""
    planted_dataset(tmp_path)
    os.chdir(tmp_path)
    ov = [*TINY_NET, *TINY_SPLIT, *TINY_FIT, "predictors.fit=[atft,gru_raw,atft_raw]", "predictors.product=atft"]
    run = tmp_path / _run([*ov, "predictors.zoo.gru_raw.hidden=8"])["run_dir"]
    m = json.loads((run / "metrics.json").read_text())
    facts = m["folds"][0]["predictors"]
    assert facts["gru_raw"]["inputs"] == "raw" and facts["atft_raw"]["inputs"] == "raw"
    assert facts["gru_raw"]["arch"] == "gru" and facts["atft_raw"]["arch"] == "atft_gat_fan"
    assert facts["atft_raw"]["n_params"] < facts["atft"]["n_params"]  # fewer input columns than the 5 features
    comp = json.loads((run / "comparison.json").read_text())
    assert {"atft", "gru_raw", "atft_raw"} <= set(comp["pooled"])
    assert (run / "checkpoints" / "atft_raw" / "last.ckpt").exists()
