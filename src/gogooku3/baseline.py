"""LightGBM baseline: one regressor per horizon, early-stopped on an inner validation slice of the training span.

The validation slice is cut from the end of the training dates with a gap of h_max + entry_lag sessions, so no
fit label reaches into it and the test fold is never used for model selection. Features come from an explicit
allow-list (the manifest's names plus quality features); a label-like name there is a LeakageError.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import lightgbm as lgb
import numpy as np
import polars as pl

from gogooku3 import columns as C
from gogooku3.errors import DataError, LeakageError, SchemaError, TrainingError
from gogooku3.features.manifest import is_label_like
from gogooku3.split import inner_validation

log = logging.getLogger(__name__)

DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "regression", "metric": "l2", "boosting_type": "gbdt", "num_leaves": 31, "learning_rate": 0.05,
    "feature_fraction": 0.8, "bagging_fraction": 0.8, "bagging_freq": 5, "min_data_in_leaf": 20,
    "lambda_l1": 0.1, "lambda_l2": 0.1, "max_bin": 63, "seed": 42, "num_threads": 1, "verbosity": -1,
}
TARGET_TRANSFORMS = ("raw", "demean", "rank")


def _target_expr(col: str, how: str) -> pl.Expr:
    """Per-day transform of the training label (same day's labels only)."""
    y = pl.col(col).cast(pl.Float64)
    if how == "raw":
        return y
    if how == "demean":
        return y - y.mean().over("Date")
    # rank -> uniform in (-0.5, 0.5): robust to fat tails, the objective of a cross-sectional ranker
    return (y.rank("average").over("Date") - 0.5) / y.count().over("Date") - 0.5


class LightGBMBaseline:
    """`fit(train_df, features, horizons, val_df=None)` / `predict(df)`; `feature_importance_` = total gain."""

    def __init__(self, params: dict[str, Any] | None = None, num_boost_round: int = 200,
                 early_stopping_rounds: int = 20, val_days: int = 40, entry_lag: int = 1,
                 target_transform: str = "rank") -> None:
        if target_transform not in TARGET_TRANSFORMS:
            raise DataError(f"baseline.target_transform must be one of {TARGET_TRANSFORMS}, got '{target_transform}'")
        self.params = {**DEFAULT_PARAMS, **dict(params or {})}
        self.num_boost_round = int(num_boost_round)
        self.early_stopping_rounds = int(early_stopping_rounds)
        self.val_days = int(val_days)
        self.entry_lag = int(entry_lag)
        self.target_transform = target_transform

    @classmethod
    def from_config(cls, cfg: Any, entry_lag: int = 1, val_days: int = 40) -> LightGBMBaseline:
        """From the `safe.baseline` config node (params, num_boost_round, early_stopping_rounds, target_transform)."""
        get = cfg.get
        params = dict(get("params", {}) or {})
        return cls(params, int(get("num_boost_round", 200)), int(get("early_stopping_rounds", 20)),
                   int(get("val_days", val_days) or val_days), entry_lag, str(get("target_transform", "rank")))

    # ---- helpers ------------------------------------------------------------------------------------
    @staticmethod
    def _matrix(df: pl.DataFrame, features: Sequence[str]) -> np.ndarray:
        # nulls -> NaN: LightGBM routes missing values itself (no fill-with-0 as in the original)
        return df.select([pl.col(f).cast(pl.Float32) for f in features]).to_numpy().astype(np.float32, copy=False)

    def _check(self, df: pl.DataFrame, features: Sequence[str], horizons: Sequence[int]) -> None:
        bad = [f for f in features if is_label_like(f) or f in {C.target(h) for h in horizons}]
        if bad:
            raise LeakageError(f"baseline: label-like column(s) in the feature list: {', '.join(bad)}")
        need = ["Date", "Code", *features, *(C.target(h) for h in horizons)]
        missing = [c for c in need if c not in df.columns]
        if missing:
            raise SchemaError(f"baseline: missing column(s) {', '.join(missing[:8])}")

    # ---- fit / predict ------------------------------------------------------------------------------
    def fit(self, train_df: pl.DataFrame, features: Sequence[str], horizons: Sequence[int],
            val_df: pl.DataFrame | None = None) -> LightGBMBaseline:
        features, horizons = list(features), [int(h) for h in horizons]
        self._check(train_df, features, horizons)
        if val_df is None:
            gap = max(horizons) + self.entry_lag
            dates = train_df["Date"].unique().sort().to_list()
            fit_dates, val_dates = inner_validation(dates, self.val_days, gap)
            fit_df = train_df.filter(pl.col("Date").is_in(pl.Series(fit_dates, dtype=pl.Date).implode()))
            val_df = train_df.filter(pl.col("Date").is_in(pl.Series(val_dates, dtype=pl.Date).implode()))
        else:
            self._check(val_df, features, horizons)
            fit_df = train_df
            if val_df["Date"].min() <= fit_df["Date"].max():
                raise LeakageError("baseline: validation slice must lie after the fit dates")
        self.features_, self.horizons_ = features, horizons
        self.models_: dict[int, lgb.Booster] = {}
        self.best_iteration_: dict[int, int] = {}
        self.importance_by_horizon_: dict[int, dict[str, float]] = {}
        self.n_train_rows_: dict[int, int] = {}
        self.fit_range_ = (fit_df["Date"].min(), fit_df["Date"].max())
        self.val_range_ = (val_df["Date"].min(), val_df["Date"].max())
        x_fit, x_val = self._matrix(fit_df, features), self._matrix(val_df, features)
        # Bin the feature matrices once per fit; each horizon only swaps label and (0/1) weights.
        ds_fit = lgb.Dataset(x_fit, feature_name=features, free_raw_data=False,
                             params={"max_bin": self.params["max_bin"], "verbosity": -1})
        ds_val = lgb.Dataset(x_val, reference=ds_fit, free_raw_data=False)
        for h in horizons:
            y_fit, w_fit = self._labels(fit_df, h)
            y_val, w_val = self._labels(val_df, h)
            if w_fit.sum() < 100 or w_val.sum() < 10:
                raise TrainingError(f"baseline {h}d: too few labelled rows (fit {int(w_fit.sum())}, "
                                    f"validation {int(w_val.sum())})")
            ds_fit.set_label(y_fit).set_weight(w_fit)
            ds_val.set_label(y_val).set_weight(w_val)
            booster = lgb.train(self.params, ds_fit, num_boost_round=self.num_boost_round, valid_sets=[ds_val],
                                valid_names=["val"],
                                callbacks=[lgb.early_stopping(self.early_stopping_rounds, verbose=False)])
            self.models_[h] = booster
            self.best_iteration_[h] = int(booster.best_iteration or booster.current_iteration())
            gain = booster.feature_importance("gain", iteration=self.best_iteration_[h])
            self.importance_by_horizon_[h] = {f: float(g) for f, g in zip(features, gain)}
            self.n_train_rows_[h] = int(w_fit.sum())
            log.debug("baseline %dd: best iteration %d", h, self.best_iteration_[h])
        total: dict[str, float] = {}
        for imp in self.importance_by_horizon_.values():
            for f, g in imp.items():
                total[f] = total.get(f, 0.0) + g
        self.feature_importance_ = dict(sorted(total.items(), key=lambda kv: -kv[1]))
        return self

    def _labels(self, df: pl.DataFrame, h: int) -> tuple[np.ndarray, np.ndarray]:
        col = C.target(h)
        y = df.select(_target_expr(col, self.target_transform).alias("y"))["y"]
        y = y.fill_nan(None)
        w = y.is_not_null().cast(pl.Float32).to_numpy()
        return y.fill_null(0.0).to_numpy().astype(np.float32), w

    def predict(self, df: pl.DataFrame) -> pl.DataFrame:
        """Date, Code, pred_{h}d for every row of `df`."""
        if not hasattr(self, "models_"):
            raise TrainingError("LightGBMBaseline.predict called before fit")
        missing = [c for c in ["Date", "Code", *self.features_] if c not in df.columns]
        if missing:
            raise SchemaError(f"baseline predict: missing column(s) {', '.join(missing[:8])}")
        x = self._matrix(df, self.features_)
        preds = {C.pred(h): self.models_[h].predict(x, num_iteration=self.best_iteration_[h]).astype(np.float32)
                 for h in self.horizons_}
        return df.select("Date", "Code").with_columns([pl.Series(k, v) for k, v in preds.items()])

    def top_features(self, n: int = 20) -> list[dict[str, Any]]:
        total = sum(self.feature_importance_.values()) or 1.0
        return [{"feature": f, "gain": g, "share": g / total} for f, g in list(self.feature_importance_.items())[:n]]
