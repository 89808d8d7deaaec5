"""SafeTrainingPipeline end to end on a small synthetic market, and its one-line errors on bad input."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import polars as pl
import pytest

from gogooku3.config.compose import load_config
from gogooku3.core.errors import ConfigError, DataError, Gogooku3Error, SchemaError
from gogooku3.core.io import file_fingerprint
from gogooku3.data.split import make_splitter
from gogooku3.data.validation import drop_too_null
from gogooku3.features.manifest import FeatureManifest, manifest_path
from gogooku3.pipelines.safe import SafeTrainingPipeline
from gogooku3.predictors.lightgbm import (
    BaselineRun,
    baseline_for_folds,
    baseline_horizons,
    fit_baseline,
)

FAST = [
    "baseline.num_boost_round=40",
    "baseline.early_stopping_rounds=10",
    "safe.graph.n_nodes=30",
    "split.min_train_days=150",
    "split.n_splits=2",
    "split.val_days=30",
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """Synthetic raw tables + built dataset (80 stocks x 320 sessions) under a temporary working directory."""
    from gogooku3.features.builder import build_dataset
    from gogooku3.sources.synthetic import synthesize

    root = tmp_path_factory.mktemp("safe")
    cfg = load_config(
        [
            f"paths.raw_dir={root}/data/raw",
            f"paths.oracle_dir={root}/data/oracle",
            f"paths.output_dir={root}/output",
            f"paths.dataset={root}/output/ml_dataset_latest.parquet",
            "data.n_stocks=80",
            "data.n_days=320",
        ]
    )
    synthesize(cfg)
    build_dataset(cfg)
    return root


def _cfg(root: Path, *extra: str):
    return load_config(
        [
            f"paths.oracle_dir={root}/data/oracle",
            f"paths.output_dir={root}/output",
            f"paths.dataset={root}/output/ml_dataset_latest.parquet",
            *FAST,
            *extra,
        ]
    )


def _reports(root: Path) -> list[Path]:
    return sorted((root / "output" / "experiments").glob("*.json"))


def test_pipeline_report(workdir):
    before = len(_reports(workdir))
    rep = SafeTrainingPipeline(_cfg(workdir, "safe.baseline_folds=all")).run()
    path = Path(rep["report_path"])
    assert path.exists() and len(_reports(workdir)) == before + 1
    disk = json.loads(path.read_text())
    for key in (
        "step1_data_loading",
        "step2_features",
        "step3_split",
        "step4_normalization",
        "step5_baseline",
        "step6_graph",
        "step7_report",
        "final_report",
    ):
        assert key in disk, key
        if key.startswith("step"):
            assert disk[key]["duration_seconds"] >= 0 and disk[key]["peak_rss_mb"] > 0
    fr = disk["final_report"]
    safety = fr["safety_validation"]
    assert safety["overlaps_detected"] == 0 and safety["embargo_days"] == 21
    assert safety["min_gap_trading_days"] >= 21 and safety["label_like_features"] == []
    folds = disk["step3_split"]["folds"]
    assert len(folds) == 2 and all(f["overlapping_dates"] == 0 for f in folds)
    assert folds[0]["test_end"] < folds[1]["test_start"]
    feats = disk["step2_features"]
    assert feats["groups"]["quality"] == 12 and feats["n_features"] == disk["step1_data_loading"]["n_features_kept"]
    assert sum(feats["groups"].values()) == feats["n_manifest_features"]
    base = disk["step5_baseline"]
    assert set(base["summary_over_folds"]) == {"1", "5", "10", "20"}
    assert not any(f["feature"].startswith("target_") for f in base["feature_importance_top"])
    # validation slices sit inside the training span, before the test block
    for pf, f in zip(base["per_fold"], folds, strict=True):
        assert pf["val_range"][1] <= f["train_end"] < f["test_start"]
    assert base["oracle_pooled_test"]["available"] and base["oracle_pooled_test"]["1"]["rank_ic_mean"] > 0.02
    g = disk["step6_graph"]
    assert g["n_nodes"] == 30 and g["max_degree"] <= 10
    assert abs(disk["step4_normalization"]["mean_abs_deviation"]) < 1.0
    assert disk["step4_normalization"]["fit_span"] == [folds[0]["train_start"], folds[0]["train_end"]]
    assert fr["pipeline_summary"]["data_processed"]["stocks"] == 80
    assert list(disk)[:7] == [
        "experiment_name",
        "start_time",
        "config",
        "step1_data_loading",
        "step2_features",
        "step3_split",
        "step4_normalization",
    ]
    # the run is stored content-addressed, where `gogooku3 train` finds it
    store = Path(disk["baseline"]["directory"])
    assert store == workdir / "output" / "baselines" / disk["baseline"]["fingerprint"]
    stored = BaselineRun.load(store)
    assert stored.fold_indices == [0, 1] and stored.safe_report == str(path)
    # by default safe reports (and fits) only the folds `train` evaluates: the last one (train.cv.folds=null)
    last = json.loads(Path(SafeTrainingPipeline(_cfg(workdir)).run()["report_path"]).read_text())["step5_baseline"]
    assert [pf["fold"] for pf in last["per_fold"]] == [1]


def test_train_reuses_the_safe_baseline(workdir, caplog):
    """baseline_for_folds after a safe run: the stored run, with predictions identical to a fresh fit."""
    cfg = _cfg(workdir)
    rep = SafeTrainingPipeline(cfg).run()  # stored by test_pipeline_report already: reused here
    assert rep["baseline"]["reused"] and rep["step5_baseline"]["reused"]
    ds = Path(cfg.paths.dataset)
    man = FeatureManifest.for_dataset(ds)
    df = pl.read_parquet(ds)
    folds = make_splitter(cfg.split, man.horizons, man.entry_lag).split(df["Date"])
    caplog.set_level(logging.INFO, logger="gogooku3.predictors.lightgbm")
    caplog.clear()
    run = baseline_for_folds(cfg, ds, man, folds, [1], man.entry_lag)
    assert "reusing" in caplog.text and "fitting" not in caplog.text and run.fold_indices == [1] and run.reused
    assert run.safe_report == rep["report_path"]
    v = cfg.safe.validation
    features, _, _ = drop_too_null(df, man.names, folds[0].train_dates, float(v.max_null_share), str(v.null_action))
    fresh = fit_baseline(
        df,
        features,
        folds,
        baseline_horizons(cfg, man),
        man.entry_lag,
        int(cfg.split.val_days),
        cfg.baseline,
        only=[1],
        holdout_days=cfg.split.holdout_days,
    )
    assert run.features == fresh.features
    for name in ("predictions_val", "predictions_test"):
        assert getattr(run, name).equals(getattr(fresh, name)), name
    assert run.per_fold[0]["best_iteration"] == fresh.per_fold[0]["best_iteration"]


def test_labels_other_than_the_datasets_are_refused_as_train_refuses_them(workdir):
    """labels.* is build-only: safe reads horizons and the entry lag from the manifest and refuses a config whose labels
    differ, with the same one-line ConfigError as `train` (data.dataset.open_manifest), before writing anything."""
    from gogooku3.data.dataset import load_dataset

    n0 = len(_reports(workdir))
    for extra, msg in (
        (["labels.entry_lag=2"], r"built with labels\.entry_lag=1 but the config says labels\.entry_lag=2"),
        (["labels.horizons=[1,5]"], r"built with labels\.horizons=\[1,5,10,20\] but the config says"),
    ):
        cfg = _cfg(workdir, *extra)
        with pytest.raises(ConfigError, match=msg) as safe_error:
            SafeTrainingPipeline(cfg).run()
        with pytest.raises(ConfigError) as train_error:
            load_dataset(cfg)
        assert str(safe_error.value) == str(train_error.value) and "\n" not in str(safe_error.value)
    assert len(_reports(workdir)) == n0
    man = FeatureManifest.for_dataset(workdir / "output" / "ml_dataset_latest.parquet")
    assert man.label_gap == 20 + 1 == max(man.horizons) + man.entry_lag


def _variant(root: Path, name: str, fn, manifest_fn=None) -> Path:
    src = root / "output" / "ml_dataset_latest.parquet"
    dst = root / "variants" / f"{name}.parquet"
    dst.parent.mkdir(exist_ok=True)
    fn(pl.read_parquet(src)).write_parquet(dst)
    man = FeatureManifest.for_dataset(src)
    man = manifest_fn(man) if manifest_fn else man
    man.dataset_fingerprint = file_fingerprint(dst)  # the manifest describes the variant (readers check it)
    man.save(manifest_path(dst))
    return dst


def test_bad_inputs_fail_without_report(workdir):
    n0 = len(_reports(workdir))
    no_target = _variant(workdir, "no_target", lambda d: d.drop("target_5d"))
    few = _variant(
        workdir,
        "few",
        lambda d: d,
        lambda m: FeatureManifest(m.features[:40], m.targets, m.meta_columns, m.horizons, m.entry_lag),
    )
    short = _variant(workdir, "short", lambda d: d.filter(pl.col("Date") >= d["Date"].unique().sort()[200]))
    all_null = _variant(
        workdir, "all_null", lambda d: d.with_columns(pl.lit(None, dtype=pl.Float32).alias("returns_5d"))
    )
    cases = [
        (no_target, [], SchemaError, "target_5d"),
        (few, [], DataError, "only 40 features"),
        (short, [], DataError, "too few dates"),
        (all_null, ["safe.validation.null_action=error"], DataError, "returns_5d"),
    ]
    for path, extra, exc, msg in cases:
        with pytest.raises(exc, match=msg) as info:
            SafeTrainingPipeline(_cfg(workdir, f"safe.dataset={path}", *extra)).run()
        assert "\n" not in str(info.value) and isinstance(info.value, Gogooku3Error)
    assert len(_reports(workdir)) == n0
    shutil.rmtree(workdir / "variants")
