"""The CatBoost predictor (predictors.catboost) on the planted tiny dataset, on the shared splitter's plans: it finds
the planted signal out of sample, finds nothing on noise, is the same fit twice, stops on the validation days'
RankIC, and says how to install the library when it is missing."""

import sys

import numpy as np
import polars as pl
import pytest

from conftest import TINY_SPLIT  # tests/ is on sys.path (rootdir conftest)
from gogooku3.config.compose import load_config
from gogooku3.core import columns as C
from gogooku3.core.errors import ConfigError
from gogooku3.core.io import write_parquet
from gogooku3.evaluation import metrics
from gogooku3.features.manifest import FeatureManifest, manifest_path
from gogooku3.predictors.base import Context, build_predictors
from gogooku3.predictors.catboost import CatBoostPredictor, DailyRankIC
from gogooku3.training.fit import make_plans

# small trees, few rounds: seconds per fit on 30 stocks x 150 days
TINY = {"params": {"loss_function": "RMSE", "depth": 3, "learning_rate": 0.1, "border_count": 32}, "iterations": 40}
ENTRY = {"early_stopping_rounds": 10, "stop_metric": "rank_ic", "threads": 1, "top_features": 3}


def _context(ds, overrides=()) -> Context:
    cfg = load_config([*TINY_SPLIT, "split.holdout_days=0", "baseline.horizons=[1]", *overrides])
    manifest = FeatureManifest.load(manifest_path(ds))
    dates = pl.read_parquet(ds, columns=[C.DATE])[C.DATE].unique().sort().to_list()
    folds, plans = make_plans(dates, cfg.split, manifest.horizons, manifest.entry_lag, "all", None, 1)
    return Context(cfg, ds, manifest, "tiny", folds, plans)


def _fit_all(ctx: Context, **entry):
    p = CatBoostPredictor(ctx, "catboost", **{**TINY, **ENTRY, **entry})
    return [(plan, p.fit(plan, {})) for plan in ctx.plans]


def _test_rank_ic(ds, fitted) -> dict:
    labels = pl.read_parquet(ds, columns=[C.DATE, C.CODE, C.target(1)])
    pred = pl.concat([f.predict(plan.test) for plan, f in fitted]).join(labels, on=[C.DATE, C.CODE])
    return metrics.summarize_ic(metrics.daily_ic(pred, C.pred(1), C.target(1)), 1)


@pytest.fixture(scope="module")
def planted(tmp_path_factory, planted_dataset):
    pytest.importorskip("catboost")
    return planted_dataset(tmp_path_factory.mktemp("cb"))


def test_finds_the_planted_signal_on_every_fold_and_is_the_same_fit_twice(planted):
    ctx = _context(planted)
    fitted = _fit_all(ctx)
    s = _test_rank_ic(planted, fitted)
    assert s["rank_ic_mean"] > 0.3 and s["rank_ic_tstat"] > 2  # target_1d = signal + noise of the same scale
    plan, first = fitted[-1]
    facts = first.facts()
    assert set(facts["best_iteration"]) == {"1"} and 1 <= facts["best_iteration"]["1"] <= TINY["iterations"]
    assert facts["n_features"] == 5 and facts["top_features"][0]["feature"] == "f_signal"
    assert facts["n_params"] == facts["best_iteration"]["1"] * (2**3 + 3)  # kept trees x (8 leaves + 3 splits)
    again = CatBoostPredictor(_context(planted), "catboost", **{**TINY, **ENTRY}).fit(plan, {})
    assert again.predict(plan.test).equals(first.predict(plan.test))  # seeded: the same fit


def test_rmse_stopping_finds_the_signal_too(planted):
    s = _test_rank_ic(planted, _fit_all(_context(planted), stop_metric="rmse"))
    assert s["rank_ic_mean"] > 0.3


def test_noise_market_scores_nothing(tmp_path, planted_dataset):
    pytest.importorskip("catboost")
    ds = planted_dataset(tmp_path, seed=3)
    rng = np.random.default_rng(11)
    df = pl.read_parquet(ds)
    noise = pl.Series("noise", rng.normal(size=df.height), dtype=pl.Float32)
    y = pl.when(pl.col(C.target(1)).is_null()).then(None).otherwise(noise)
    write_parquet(df.with_columns(y.alias(C.target(1))), ds)  # labels of pure noise, same missing rows
    s = _test_rank_ic(ds, _fit_all(_context(ds)))
    assert abs(s["rank_ic_tstat"]) < 2


def test_stopping_metric_is_the_mean_daily_spearman():
    m = DailyRankIC(np.repeat([0, 1], 10))
    y = np.tile(np.arange(10.0), 2)
    p = np.concatenate([np.arange(10.0), -np.arange(10.0)])  # day 0 perfect, day 1 reversed
    assert m.score(p, y) == pytest.approx(0.0)
    assert m.score(np.concatenate([np.arange(10.0), np.zeros(10)]), y) == pytest.approx(0.5)  # constant day = 0
    assert m.evaluate([p], y, None) == (pytest.approx(0.0), 1.0)
    assert m.evaluate([np.zeros(3)], np.zeros(3), None) == (0.0, 1.0)  # not the validation pool
    assert len(DailyRankIC(np.repeat([0, 1], [9, 10])).groups) == 1  # a day of fewer than 10 rows is not scored


def test_missing_library_says_how_to_install(planted, monkeypatch):
    ctx = _context(planted)
    monkeypatch.setitem(sys.modules, "catboost", None)  # import catboost -> ImportError
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[zoo\]"'):
        CatBoostPredictor(ctx, "catboost", **{**TINY, **ENTRY})


def test_the_packaged_entry_builds_and_a_bad_entry_is_a_config_error(planted):
    ctx = _context(planted, ["predictors.fit=[catboost]"])
    assert isinstance(build_predictors(ctx)["catboost"], CatBoostPredictor)  # the YAML's keys are the class's
    with pytest.raises(ConfigError, match="stop_metric"):
        CatBoostPredictor(ctx, "catboost", **{**TINY, **ENTRY, "stop_metric": "ndcg"})
    with pytest.raises(ConfigError, match="thread_count"):
        CatBoostPredictor(ctx, "catboost", **{**TINY, **ENTRY, "params": {"thread_count": 2}})
