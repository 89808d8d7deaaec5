"""Issue 21 item 4, the audit's smaller honesty fixes: the run's backtests on aligned rows and named by predictor,
the k-fold purge of the model's input window, stacking refused under k-fold, the blend's held-out slice, per-fold
null screening and a point-in-time split repair."""

from __future__ import annotations

import datetime as dt
import json
import logging
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest

from gogooku3.config.compose import load_config
from gogooku3.core.errors import ConfigError, DataError, LeakageError
from gogooku3.data.split import Fold, PurgedKFoldSplitter, check_folds, inner_holdout
from gogooku3.data.validation import screen_dates, screen_folds, union_features
from gogooku3.features.manifest import FeatureManifest, manifest_path
from gogooku3.pipelines.full import backtest_run
from gogooku3.predictors import blend as blend_mod
from gogooku3.predictors.stack import stack_for_plan
from gogooku3.sources.corporate_actions import detect_splits
from gogooku3.training.fit import Plan, make_plans

SESSIONS = [dt.date(2024, 1, 1) + dt.timedelta(days=k) for k in range(100)]


# ---- 1. `gogooku3 run`'s backtests ------------------------------------------------------------------------------
CODES = [f"1{j:03d}0" for j in range(10)]
DAYS = [dt.date(2024, 1, 4), dt.date(2024, 1, 5), dt.date(2024, 1, 9)]


def _preds(seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            "Date": [d for d in DAYS for _ in CODES],
            "Code": CODES * 3,
            "pred_1d": rng.normal(size=30),
            "target_1d": np.random.default_rng(0).normal(0, 0.02, 30),
        },
        schema={"Date": pl.Date, "Code": pl.String, "pred_1d": pl.Float32, "target_1d": pl.Float32},
    )


def test_run_backtests_every_predictor_on_the_aligned_rows_each_in_its_own_file(tmp_path, caplog):
    ds = tmp_path / "ds.parquet"
    _preds(0).select("Date", "Code", Close=pl.lit(1000.0), returns_1d=pl.lit(0.0)).write_parquet(ds)
    FeatureManifest.from_frame(pl.read_parquet(ds), {}, [1], 1).save(manifest_path(ds))
    run = tmp_path / "run"
    frames = {
        "atft": _preds(1),
        "lightgbm": _preds(2).with_columns(  # no prediction for one row: every predictor is scored without it
            pl.when((pl.col("Code") == CODES[9]) & (pl.col("Date") == DAYS[0]))
            .then(None)
            .otherwise("pred_1d")
            .alias("pred_1d")
        ),
        "blend v2": _preds(3).filter(pl.col("Code") != CODES[0]),  # and without CODES[0] on every day
    }
    for name, f in frames.items():
        (run / "predictions" / name).mkdir(parents=True)
        f.write_parquet(run / "predictions" / name / "test.parquet")
    comp = {"horizons": [1], "product": "blend v2", "pooled": {n: {} for n in frames}}
    (run / "comparison.json").write_text(json.dumps(comp))
    cfg = load_config([f"paths.output_dir={tmp_path / 'out'}", f"paths.dataset={ds}", "portfolio.min_names=5"])
    caplog.set_level(logging.INFO)
    reps = backtest_run(cfg, run)
    assert list(reps) == ["blend v2", "atft", "lightgbm"]  # the product first
    assert {r["rows"] for r in reps.values()} == {30 - 3 - 1}  # identical rows: 3 days x CODES[0], 1 null
    files = sorted(p.name for p in (tmp_path / "out" / "portfolio").glob("report_*.json"))
    assert len(files) == 3  # three reports survive, one per predictor (the name sanitised)
    assert [f.split("_2")[0] for f in files] == ["report_atft", "report_blend_v2", "report_lightgbm"]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("backtest ")]
    assert {n for n in frames if any(line.startswith(f"backtest {n} h=1d") for line in lines)} == set(frames)


def test_a_predictor_that_makes_no_book_is_skipped_the_others_backtested(tmp_path, caplog):
    """The noise market's oracle predicts 0 for every stock: no long and no short leg on any day. `run` and `bench`
    backtest the other predictors and say why that one has no book (as the report does); none at all is an error."""
    ds = tmp_path / "ds.parquet"
    _preds(0).select("Date", "Code", Close=pl.lit(1000.0), returns_1d=pl.lit(0.0)).write_parquet(ds)
    FeatureManifest.from_frame(pl.read_parquet(ds), {}, [1], 1).save(manifest_path(ds))
    run = tmp_path / "run"
    frames = {"atft": _preds(1), "oracle": _preds(2).with_columns(pl.lit(0.0, pl.Float32).alias("pred_1d"))}
    for name, f in frames.items():
        (run / "predictions" / name).mkdir(parents=True)
        f.write_parquet(run / "predictions" / name / "test.parquet")
    (run / "comparison.json").write_text(
        json.dumps({"horizons": [1], "product": "atft", "pooled": {n: {} for n in frames}})
    )
    cfg = load_config([f"paths.output_dir={tmp_path / 'out'}", f"paths.dataset={ds}", "portfolio.min_names=5"])
    caplog.set_level(logging.WARNING)
    reps = backtest_run(cfg, run)
    assert list(reps) == ["atft"]
    assert any("backtest: oracle skipped: predictions: no cohort date" in r.getMessage() for r in caplog.records)
    (run / "predictions" / "atft").rename(run / "predictions" / "gone")
    (run / "comparison.json").write_text(json.dumps({"horizons": [1], "product": "oracle", "pooled": {"oracle": {}}}))
    with pytest.raises(DataError, match=r"no predictor of .* makes a book"):
        backtest_run(cfg, run)


# ---- 2. purged k-fold purges the model's input window ------------------------------------------------------
def _kfold(window: int) -> list[Fold]:
    return PurgedKFoldSplitter(
        n_splits=2,
        horizons=[1],
        entry_lag=1,
        embargo_days=None,  # max(20, 1 + 1) = 20
        min_train_days=1,
        feature_lookback=30,
        input_window=window,
    ).split(SESSIONS)


def test_kfold_purge_covers_lookback_plus_input_window_by_hand():
    # fold 0 tests sessions 0..49. A sample of date t reads sessions [t - W + 1 - 30, t]: clean when t >= 49 + 30 + W
    assert _kfold(1)[0].train_dates == SESSIONS[80:]  # look-back alone: t >= 80
    f0, f1 = _kfold(10)
    assert f0.train_dates == SESSIONS[89:]  # + the 10-session window: t >= 89
    assert f0.lookback_purged == 89 - 70  # beyond the 20-session embargo (sessions 50..69)
    assert f0.to_dict()["input_window"] == 10 and f0.reach == 39
    assert f1.train_dates == SESSIONS[:30]  # before the block: the embargo only (t <= 49 - 20)
    leaky = Fold(
        0, [SESSIONS[88], *f0.train_dates], f0.test_dates, embargo_days=20, feature_lookback=30, input_window=10
    )
    with pytest.raises(LeakageError, match="input window"):
        check_folds([leaky], SESSIONS)


def test_plans_take_the_window_from_the_typed_settings():
    keys = ["split.n_splits=2", "split.min_train_days=1", "split.val_days=3", "split.holdout_days=2", "model.window=10"]
    cfg = load_config(["split=purged_kfold", *keys])
    folds, plans = make_plans(SESSIONS, cfg.split, [1], 1, "all", 30, cfg.model.window)
    assert folds[0].train_dates == SESSIONS[89:]
    assert plans[0].holdout == tuple(SESSIONS[98:])  # the held-out slice: the last 2 training sessions


# ---- 3. stacking under purged k-fold -----------------------------------------------------------------------
def test_stacking_under_purged_kfold_is_refused_in_one_line():
    cfg = load_config(["split=purged_kfold", "train.stack.enabled=true"])
    with pytest.raises(ConfigError, match=r"^train.stack.enabled=true needs split=walk_forward") as e:
        stack_for_plan(cfg, None, None, [], None, [], [])
    assert "\n" not in str(e.value)


# ---- 4. the blend's held-out slice -------------------------------------------------------------------------
def test_inner_holdout_by_hand():
    fit, val, hold = inner_holdout(SESSIONS, val_days=10, gap_days=3, holdout_days=5)
    assert hold == SESSIONS[95:]  # the last 5; 92..94 dropped (the label gap)
    assert val == SESSIONS[82:92] and fit == SESSIONS[:79]  # 79..81 dropped
    assert inner_holdout(SESSIONS, 10, 3, 0) == (SESSIONS[:87], SESSIONS[90:], [])  # none: as before


class _Stub:
    """A fitted predictor that predicts the day number, and records the days it was asked for."""

    def __init__(self, name: str):
        self.name, self.horizons, self.asked = name, [1], []

    def predict(self, days):
        self.asked.append(list(days))
        return pl.DataFrame(
            {"Date": [d for d in days for _ in range(5)], "Code": [str(k) for _ in days for k in range(5)]},
            schema={"Date": pl.Date, "Code": pl.String},
        ).with_columns(pred_1d=pl.col("Code").cast(pl.Float32))


def test_blend_chooses_its_weights_on_the_held_out_days_only_for_both_members(monkeypatch):
    monkeypatch.setattr(
        blend_mod,
        "targets_frame",
        lambda ctx, days: _Stub("t").predict(days).rename({"pred_1d": "target_1d"}),
    )
    plan = Plan(None, tuple(SESSIONS[:60]), tuple(SESSIONS[66:86]), tuple(SESSIONS[99:]), tuple(SESSIONS[92:97]))
    bp = blend_mod.BlendPredictor(SimpleNamespace(), "blend", "atft", "lightgbm", "zscore", 0.5)
    a, b = _Stub("atft"), _Stub("lightgbm")
    fitted = bp.fit(plan, {"atft": a, "lightgbm": b})
    assert a.asked == b.asked == [SESSIONS[92:97]]  # identical rows, none of the early-stopping days
    facts = fitted.facts()
    assert facts["chosen_on"] == "holdout" and facts["chosen_range"] == [str(SESSIONS[92]), str(SESSIONS[96])]
    assert facts["val_days"] == 5


# ---- 5. per-fold null screening ----------------------------------------------------------------------------
def test_kfold_screens_each_fold_on_its_own_training_dates():
    # f_late is null on the first 50 sessions only (fold 0's test block): fold 0 trains on 70..99 and keeps it;
    # fold 1 trains on 0..29 and drops it. Fold 0's training dates screened for fold 1 would keep it.
    folds = PurgedKFoldSplitter(
        n_splits=2, horizons=[1], entry_lag=1, embargo_days=None, min_train_days=1, feature_lookback=0
    ).split(SESSIONS)
    df = pl.DataFrame({"Date": SESSIONS, "f_ok": np.ones(100), "f_late": [None] * 50 + [1.0] * 50})
    assert screen_dates(folds) == {0: folds[0].train_dates, 1: folds[1].train_dates}
    screens = screen_folds(df, ["f_ok", "f_late"], folds, 0.5, "drop")
    assert screens[0] == (["f_ok", "f_late"], {}) and screens[1] == (["f_ok"], {"f_late": 1.0})
    assert union_features(["f_ok", "f_late"], screens) == ["f_ok", "f_late"]
    # walk-forward (fold 0 trains before every test block): fold 0's screen serves every fold, as before
    wf = [Fold(0, SESSIONS[:40], SESSIONS[60:70]), Fold(1, SESSIONS[:60], SESSIONS[80:90])]
    assert screen_dates(wf) == {0: SESSIONS[:40], 1: SESSIONS[:40]}


# ---- 6. the split repair is point in time ------------------------------------------------------------------
def _raw_with_split(n: int = 8, days: int = 200, row: int = 100) -> pl.DataFrame:
    """Raw OHLCV random walks with one unadjusted 1:2 split of S3 on `row` (volume doubles from then on)."""
    rng = np.random.default_rng(0)
    close = 50 * np.exp(np.cumsum(rng.normal(0, 0.02, (days, n)), axis=0))
    close[:row, 3] *= 2.0
    opn = np.vstack([close[:1], close[:-1] * np.exp(rng.normal(0, 0.005, (days - 1, n)))])
    opn[row, 3] = close[row - 1, 3] * 0.5
    vo = rng.lognormal(12, 0.2, (days, n))
    vo[row:, 3] *= 2.0
    dates = [dt.date(2023, 1, 2) + dt.timedelta(days=k) for k in range(days)]
    df = pl.DataFrame(
        {
            "Date": [d for d in dates for _ in range(n)],
            "Code": [f"S{j}" for j in range(n)] * days,
            "O": opn.ravel(),
            "C": close.ravel(),
            "Vo": vo.ravel(),
        }
    )
    return df.with_columns(pl.col("C").alias("AdjC"), pl.col("O").alias("AdjO"), pl.col("Vo").alias("AdjVo"))


def test_split_decision_for_a_day_does_not_change_when_later_rows_are_removed():
    raw = _raw_with_split()
    full = detect_splits(raw)
    split_day = dt.date(2023, 1, 2) + dt.timedelta(days=100)
    assert full.select("Code", "Date", "ratio", "evidence").rows() == [("S3", split_day, "1:2", "volume")]
    for t in (split_day, split_day + dt.timedelta(days=1), split_day + dt.timedelta(days=30)):
        assert detect_splits(raw.filter(pl.col("Date") <= t)).equals(full.filter(pl.col("Date") <= t))
