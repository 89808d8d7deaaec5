"""`gogooku3 train` end to end on a tiny planted dataset: run dir, resume, bundle round trip, DDP on 2 CPUs."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from conftest import TINY_FIT, TINY_NET, TINY_SPLIT  # tests/ is on sys.path (rootdir conftest)
from gogooku3.config.compose import load_config
from gogooku3.core.errors import DataError
from gogooku3.core.io import write_parquet
from gogooku3.features.manifest import FeatureManifest, manifest_path
from gogooku3.pipelines.atft import CompleteATFTTrainingPipeline
from gogooku3.predictors.bundle import load_bundle, predict_for_dates

torch.set_num_threads(1)
FEATS = ["returns_1d", "f_signal", "f_noise1", "f_noise2", "f_noise3"]  # conftest.write_planted_dataset
OVERRIDES = [
    *TINY_NET,
    *TINY_SPLIT,
    *TINY_FIT,
    "train.average_top_k=3",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, planted_dataset):
    root = tmp_path_factory.mktemp("train")
    planted_dataset(root)
    import os

    old = os.getcwd()
    os.chdir(root)
    try:
        res = CompleteATFTTrainingPipeline(load_config(OVERRIDES)).run()
        yield root, res
    finally:
        os.chdir(old)


def test_train_writes_run_dir_and_resumes(trained, monkeypatch):
    root, res = trained
    run = Path(res["run_dir"])
    assert (root / "runs" / "last").resolve() == run.resolve()  # a finished run becomes runs/last
    for f in [
        "config.yaml",
        "predictions/atft/val.parquet",
        "predictions/atft/test.parquet",
        "predictions/lightgbm/test.parquet",
        "metrics.json",
        "logs/metrics.csv",
        "variable_importance.json",
        "bundle/model.safetensors",
        "bundle/bundle.json",
        "checkpoints/last.ckpt",
    ]:
        assert (run / f).exists(), f
    assert len(list((run / "checkpoints").glob("epoch*.ckpt"))) >= 1
    pt = pl.read_parquet(run / "predictions" / "atft" / "test.parquet")
    assert pt.columns == ["Date", "Code", "pred_1d", "pred_5d", "target_1d", "target_5d"]
    assert pt["pred_1d"].std() > 0.05  # not collapsed
    m = json.loads((run / "metrics.json").read_text())
    assert m["comparison"]["pooled"]["atft"]["1"]["rank_ic_mean"] > 0.1  # the planted signal is found out of sample
    assert m["model"]["n_params"] > 0 and m["samples_per_sec"] > 0 and m["epochs"] == [2]
    assert m["product"] == "blend" and m["comparison"]["paired"]["atft_vs_lightgbm"]["1"]["n_days"] > 0
    assert m["dataset"]["entry_lag"] == 1 and m["dataset"]["horizons"] == [1, 5]
    assert m["baseline"]["fingerprint"] and Path(m["baseline"]["directory"]).is_dir()
    w = m["folds"][0]["predictors"]["atft"]["weights"][0]  # 2 epochs -> 2 checkpoints to average
    assert w["kind"] in ("best_epoch", "top2_average")
    kept_avg = w["val_rank_ic_top_k_average"] > w["val_rank_ic_best_epoch"]
    assert (w["kind"] == "top2_average") == kept_avg  # the average is kept only if it validates better
    vi = json.loads((run / "variable_importance.json").read_text())
    assert set(vi) == set(FEATS)
    log_csv = pl.read_csv(run / "logs" / "metrics.csv")
    assert {"epoch", "train_loss", "val_loss", "val_rank_ic_1d"} <= set(log_csv.columns)

    # resume from runs/last/checkpoints/last.ckpt continues at the saved epoch
    monkeypatch.chdir(root)
    res2 = CompleteATFTTrainingPipeline(load_config([*OVERRIDES, "train.resume=true", "train.max_epochs=3"])).run()
    m2 = json.loads((Path(res2["run_dir"]) / "metrics.json").read_text())
    assert m2["epochs"] == [3]
    epochs = pl.read_csv(Path(res2["run_dir"]) / "logs" / "metrics.csv")["epoch"].drop_nulls().unique().to_list()
    assert epochs == [2]  # only the new epoch ran


def test_bundle_round_trip(trained, tmp_path):
    root, res = trained
    run = Path(res["run_dir"])
    ds = root / "output" / "ml_dataset_latest.parquet"
    b = load_bundle(run, dataset=ds)
    pt = pl.read_parquet(run / "predictions" / "atft" / "test.parquet")
    day = pt["Date"].max()
    p = predict_for_dates(b, ds, [day])
    ref = pt.filter(pl.col("Date") == day).select("Code", "pred_1d")
    joined = p.join(ref, on="Code", suffix="_run")
    assert joined.height == ref.height
    assert np.allclose(joined["pred_1d"], joined["pred_1d_run"], atol=1e-4)
    # a dataset whose manifest differs is refused with a clear error
    other = tmp_path / "other.parquet"
    df = pl.read_parquet(ds)
    write_parquet(df, other)
    FeatureManifest.from_frame(df, {f: "price" for f in FEATS[:-1]}, [1, 5], 1).save(manifest_path(other))
    with pytest.raises(DataError, match="fingerprint"):
        load_bundle(run, dataset=other)


@pytest.mark.slow  # ~45 s on the shared 2-core machine (two processes start Lightning); still in the suite
def test_ddp_two_cpu_processes(tmp_path, planted_dataset):
    planted_dataset(tmp_path, n_stocks=20, n_days=130)
    cmd = [
        sys.executable,
        "-m",
        "gogooku3.cli",
        "train",
        "trainer=ddp",
        *OVERRIDES,
        "train.max_epochs=1",
        "train.limit_train_batches=4",
        "baseline.enabled=false",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [p for p in (tmp_path / "runs").iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "last"]
    assert len(runs) == 1  # only rank 0 created a run directory
    m = json.loads((runs[0] / "metrics.json").read_text())
    assert m["epochs"] == [1] and (runs[0] / "predictions" / "atft" / "test.parquet").exists()


def test_ema_keeps_the_best_epochs_averaged_weights(tmp_path, monkeypatch, planted_dataset):
    from safetensors.torch import load_file

    from gogooku3.training.callbacks import ema_weights

    planted_dataset(tmp_path, seed=1)
    monkeypatch.chdir(tmp_path)
    res = CompleteATFTTrainingPipeline(
        load_config(
            [*OVERRIDES, "train.ema_decay=0.9", "baseline.enabled=false", "train.max_epochs=3", "train.patience=5"]
        )
    ).run()
    m = json.loads((Path(res["run_dir"]) / "metrics.json").read_text())
    best = m["folds"][0]["predictors"]["atft"]["best_checkpoint"][0]
    shadow = ema_weights(best)
    assert shadow is not None
    raw = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
    saved = load_file(str(Path(res["run_dir"]) / "bundle" / "model.safetensors"))
    key = next(k for k, v in saved.items() if v.dtype.is_floating_point and v.ndim == 2)
    assert torch.allclose(saved[key], shadow["model." + key])  # the bundle holds the EMA weights
    assert not torch.allclose(raw["model." + key], shadow["model." + key])  # which differ from the raw ones


@pytest.mark.slow  # ~20 s: a seed ensemble trains, resumes and predicts
def test_seed_ensemble_with_day_level_features_trains_resumes_and_predicts(tmp_path, monkeypatch, planted_dataset):
    """train.ensemble=2: two members (two seeds) under checkpoints/member{0,1}, one bundle whose predictions are
    their mean; a day-level feature standardised over time (day_level=time_z) is reproduced at prediction time."""
    ds = planted_dataset(tmp_path)
    df = pl.read_parquet(ds)
    mkt = df.group_by("Date").agg(pl.col("returns_1d").mean().alias("mkt_ret"))
    df = df.join(mkt, on="Date").sort("Code", "Date")
    write_parquet(df, ds)
    feats = [*FEATS, "mkt_ret"]
    FeatureManifest.from_frame(df, {f: "price" for f in feats}, [1, 5], 1).save(manifest_path(ds))
    monkeypatch.chdir(tmp_path)
    ov = [
        *OVERRIDES,
        "train.ensemble=2",
        "baseline.enabled=false",
        "train.normalizer.day_level=time_z",
        "train.normalizer.day_level_window=30",
        "train.max_epochs=4",
        "train.patience=5",
    ]
    res = CompleteATFTTrainingPipeline(load_config(ov)).run()
    run = Path(res["run_dir"])
    for m in (0, 1):
        assert (run / "checkpoints" / f"member{m}" / "last.ckpt").exists()
        assert (run / "logs" / f"member{m}" / "metrics.csv").exists()
    met = json.loads((run / "metrics.json").read_text())
    assert met["model"]["members"] == 2 and met["model"]["n_params"] == 2 * met["model"]["n_params_per_member"]
    assert met["epochs"] == [[4, 4]] and len(met["folds"][0]["predictors"]["atft"]["members_best_val_rank_ic"]) == 2
    assert (
        met["comparison"]["pooled"]["atft"]["1"]["rank_ic_mean"] > 0.05
    )  # planted signal found (tiny, seed-noisy training)
    b = load_bundle(run, dataset=ds)
    assert b.meta["members"] == 2 and b.meta["normalizer"]["day_level_features"] == ["mkt_ret"]
    pt = pl.read_parquet(run / "predictions" / "atft" / "test.parquet")
    day = pt["Date"].max()
    joined = predict_for_dates(b, ds, [day]).join(pt.filter(pl.col("Date") == day), on="Code", suffix="_run")
    assert joined.height > 0 and np.allclose(joined["pred_1d"], joined["pred_1d_run"], atol=1e-4)
    # resume: each member continues from its own last.ckpt
    res2 = CompleteATFTTrainingPipeline(load_config([*ov, "train.resume=true", "train.max_epochs=5"])).run()
    m2 = json.loads((Path(res2["run_dir"]) / "metrics.json").read_text())
    assert m2["epochs"] == [[5, 5]]


def test_failed_run_leaves_runs_last_on_the_finished_one(trained, monkeypatch):
    """runs/last moves only when a run finishes: a run that fails while training keeps it where it was."""
    import gogooku3.predictors.atft as atft_predictor

    root, _res = trained
    monkeypatch.chdir(root)
    before = (root / "runs" / "last").resolve()

    def boom(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(atft_predictor, "fit_ensemble", boom)
    with pytest.raises(RuntimeError, match="killed"):
        CompleteATFTTrainingPipeline(load_config(OVERRIDES)).run()
    assert (root / "runs" / "last").resolve() == before and (before / "metrics.json").exists()


def test_config_that_disagrees_with_the_manifest_is_refused(trained, monkeypatch):
    from gogooku3.core.errors import ConfigError

    root, _ = trained
    monkeypatch.chdir(root)
    with pytest.raises(ConfigError, match=r"labels.entry_lag=1.*labels.entry_lag=2"):
        CompleteATFTTrainingPipeline(load_config([*OVERRIDES, "labels.entry_lag=2"])).run()
    with pytest.raises(ConfigError, match=r"labels.horizons=\[1,5\]"):
        CompleteATFTTrainingPipeline(load_config([*OVERRIDES, "labels.horizons=[1,5,10]"])).run()


@pytest.mark.slow  # ~18 s: members train in worker processes and again in turn
def test_members_in_worker_processes_match_members_in_turn(tmp_path, monkeypatch, planted_dataset):
    """trainer.member_workers=2 trains the two members in two processes; with one torch thread everywhere the
    members, their predictions and the ensemble's are the same as when they are trained one after the other."""
    planted_dataset(tmp_path)
    monkeypatch.chdir(tmp_path)
    ov = [*OVERRIDES, "train.ensemble=2", "baseline.enabled=false", "train.max_epochs=2"]
    runs = {}
    for w in (1, 2):
        res = CompleteATFTTrainingPipeline(
            load_config([*ov, f"trainer.member_workers={w}", f"paths.runs_dir=runs_w{w}"])
        ).run()
        runs[w] = Path(res["run_dir"])
    for kind in ("val", "test"):
        a, b = (pl.read_parquet(runs[w] / "predictions" / "atft" / f"{kind}.parquet") for w in (1, 2))
        assert a.height > 0 and a.equals(b), kind
    m1, m2 = (json.loads((runs[w] / "metrics.json").read_text()) for w in (1, 2))
    atft1, atft2 = (m["folds"][0]["predictors"]["atft"] for m in (m1, m2))
    assert atft1["members_best_val_rank_ic"] == atft2["members_best_val_rank_ic"]
    assert m2["epochs"] == [[2, 2]]
    seeds = m2["folds"][0]["members_test_rank_ic"]  # each member's own test RankIC: the seed spread
    assert len(seeds) == 2 and set(seeds[0]) == {"1", "5"} and m1["folds"][0]["members_test_rank_ic"] is None
    for m in (0, 1):
        assert (runs[2] / "logs" / f"member{m}" / "metrics.csv").exists()
    b = load_bundle(runs[2], dataset=Path("output/ml_dataset_latest.parquet"))
    pt = pl.read_parquet(runs[2] / "predictions" / "atft" / "test.parquet")
    day = pt["Date"].max()
    joined = predict_for_dates(b, Path("output/ml_dataset_latest.parquet"), [day]).join(
        pt.filter(pl.col("Date") == day), on="Code", suffix="_run"
    )
    assert joined.height > 0 and np.allclose(joined["pred_1d"], joined["pred_1d_run"], atol=1e-5)


def test_stacked_lightgbm_inputs_reach_the_model(tmp_path, monkeypatch, planted_dataset):
    """train.stack: each fold's out-of-fold LightGBM predictions become model inputs (F + 2 features), with their
    provenance written beside the run; the bundle says why `predict` cannot rebuild them."""
    planted_dataset(tmp_path)
    monkeypatch.chdir(tmp_path)
    ov = [
        *OVERRIDES,
        "train.stack.enabled=true",
        "train.stack.min_fit_days=10",
        "train.stack.blocks=3",
        "train.cv.folds=all",
        "split.holdout_days=0",  # fold 0's 60 training dates leave 34 to fit after a held-out slice: too few to stack
    ]
    res = CompleteATFTTrainingPipeline(load_config(ov)).run()
    run = Path(res["run_dir"])
    prov = json.loads((run / "stack" / "provenance.json").read_text())
    assert set(prov) == {"0", "1"} and all(any("skipped" not in p for p in v) for v in prov.values())
    arr = np.load(run / "stack" / "fold1.npy")
    assert arr.shape[-1] == 2 and np.abs(arr).sum() > 0
    vi = json.loads((run / "variable_importance.json").read_text())
    assert set(vi) == {*FEATS, "stack_1d", "stack_5d"}
    m = json.loads((run / "metrics.json").read_text())
    assert (
        m["comparison"]["pooled"]["atft"]["1"]["rank_ic_mean"] > 0.1
    )  # the planted signal, through the stacked inputs too
    b = load_bundle(run, dataset=Path("output/ml_dataset_latest.parquet"))
    assert b.model.cfg.n_features == len(FEATS) + 2
    with pytest.raises(DataError, match="stacked LightGBM inputs"):
        predict_for_dates(
            b,
            Path("output/ml_dataset_latest.parquet"),
            [pl.read_parquet(run / "predictions" / "atft" / "test.parquet")["Date"].max()],
        )
