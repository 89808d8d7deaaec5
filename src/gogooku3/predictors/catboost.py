"""CatBoost per horizon on the baseline's inputs: the zoo's second GBDT, with another inductive bias than LightGBM's.

CatBoost grows oblivious (symmetric) trees, one split per depth level shared by every node, and boosts with ordered
target statistics; LightGBM grows leaf-wise trees. Inputs, label and days are ridge's and LightGBM's: the `baseline`
group's features (its per-day normalisation and per-fold null screen, built once per run and shared with ridge), the
label transformed per day (`baseline.target_transform`), fit rows with a finite label on the plan's fit days. Each
horizon early-stops on the plan's validation days: on their mean daily RankIC (`stop_metric: rank_ic`, the choice
every predictor of the run is scored by) or on RMSE (`rmse`); the best iteration is kept. Missing values stay
missing (CatBoost routes them). Seeded by the run's `seed`, so a fit is the same on the same thread count.

The library is the optional `zoo` extra (`pip install -e ".[zoo]"`), imported only when `predictors.fit` names this
predictor (at its construction, so a missing library stops `train` before anything is fitted).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from gogooku3.core import columns as C
from gogooku3.core.errors import ConfigError, DataError
from gogooku3.predictors.base import Context, Fitted, Predictor
from gogooku3.training.fit import Plan

log = logging.getLogger(__name__)

STOP_METRICS = ("rank_ic", "rmse")
MIN_DAY_ROWS = 10  # a validation day with fewer labelled rows adds nothing to the stopping metric


def _in(days: Sequence[dt.date]) -> pl.Expr:
    return pl.col(C.DATE).is_in(pl.Series(sorted(days), dtype=pl.Date).implode())


def _library() -> Any:
    try:
        import catboost
    except ImportError as e:
        raise ConfigError(
            f'predictor catboost: the catboost library is not installed ({e}); pip install -e ".[zoo]"'
        ) from e
    return catboost


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), as the scorer's Spearman."""
    from scipy.stats import rankdata

    return np.asarray(rankdata(x, method="average"), dtype=np.float64)


class DailyRankIC:
    """CatBoost eval metric: the mean daily Spearman correlation of the predictions with the labels of the
    validation pool, whose rows' days are fixed here (`days`, one per row, in the pool's order). A day with a
    constant prediction scores 0, as in the scorer (`evaluation.metrics.daily_ic`)."""

    def __init__(self, days: np.ndarray):
        self.days = np.asarray(days)
        self.groups = [idx for d in np.unique(self.days) if len(idx := np.flatnonzero(self.days == d)) >= MIN_DAY_ROWS]

    def score(self, pred: np.ndarray, label: np.ndarray) -> float:
        out = []
        for idx in self.groups:
            p, y = _ranks(pred[idx]), _ranks(label[idx])
            sp, sy = p.std(), y.std()
            out.append(0.0 if sp == 0 or sy == 0 else float(((p - p.mean()) * (y - y.mean())).mean() / (sp * sy)))
        return float(np.mean(out)) if out else 0.0

    # CatBoost's user-defined metric protocol
    def is_max_optimal(self) -> bool:
        return True

    def evaluate(self, approxes: Any, target: Any, weight: Any) -> tuple[float, float]:
        pred = np.asarray(approxes[0], dtype=np.float64)
        if len(pred) != len(self.days):  # the learn set (when CatBoost asks): not what stopping reads
            return 0.0, 1.0
        return self.score(pred, np.asarray(target, dtype=np.float64)), 1.0

    def get_final_error(self, error: float, weight: float) -> float:
        return error


class CatBoostPredictor(Predictor):
    def __init__(
        self,
        ctx: Context,
        name: str,
        params: Mapping[str, Any],
        iterations: int,
        early_stopping_rounds: int,
        stop_metric: str,
        threads: int,
        top_features: int,
    ):
        super().__init__(ctx, name)
        where = f"predictors.zoo.{name}"
        if stop_metric not in STOP_METRICS:
            raise ConfigError(f"{where}.stop_metric: one of {', '.join(STOP_METRICS)}, got '{stop_metric}'")
        if int(iterations) < 1 or int(early_stopping_rounds) < 1 or int(threads) < 1 or int(top_features) < 0:
            raise ConfigError(f"{where}: iterations, early_stopping_rounds and threads >= 1, top_features >= 0")
        reserved = {"iterations", "thread_count", "random_seed", "eval_metric", "use_best_model", "od_wait", "od_type"}
        clash = sorted(reserved & set(params))
        if clash:
            raise ConfigError(f"{where}.params: {', '.join(clash)} are set by the predictor (its own keys, `seed`)")
        self.params = dict(params)
        self.cb = _library()  # at construction: a missing library stops `train` before any predictor fits
        self.iterations, self.early_stopping_rounds = int(iterations), int(early_stopping_rounds)
        self.stop_metric, self.threads, self.top_features = stop_metric, int(threads), int(top_features)

    def _inputs(self) -> tuple[Any, dict[int, list[str]]]:
        from gogooku3.predictors.ridge import baseline_inputs

        return baseline_inputs(self.ctx)

    def fit(self, plan: Plan, inputs: Mapping[str, Fitted]) -> CatBoostFitted:
        from gogooku3.predictors.lightgbm import _target_expr, baseline_horizons

        cb = self.cb
        frame_of, fold_features = self._inputs()
        features = fold_features[plan.index]
        frame = frame_of(plan.fold)
        hs = [h for h in baseline_horizons(self.ctx.cfg, self.ctx.manifest) if C.target(h) in frame.columns]
        how = self.ctx.cfg.baseline.target_transform
        fit, val = frame.filter(_in(plan.fit)), frame.filter(_in(plan.val))
        x_fit, x_val = _matrix(fit, features), _matrix(val, features)
        val_days = val.get_column(C.DATE).to_physical().to_numpy()
        models: dict[int, Any] = {}
        best_it: dict[str, int] = {}
        seconds: dict[str, float] = {}
        val_score: dict[str, dict[str, float]] = {}
        importance: dict[str, float] = {}
        n_params = 0
        for h in hs:
            t0 = time.perf_counter()
            y_fit = _label(fit, C.target(h), how, _target_expr)
            y_val = _label(val, C.target(h), how, _target_expr)
            ok, ok_val = np.isfinite(y_fit), np.isfinite(y_val)
            if ok.sum() < 100 or ok_val.sum() < MIN_DAY_ROWS:
                raise DataError(
                    f"{self.name} {h}d: too few labelled rows (fit {int(ok.sum())}, validation {int(ok_val.sum())})"
                )
            metric = DailyRankIC(val_days[ok_val]) if self.stop_metric == "rank_ic" else "RMSE"
            model = cb.CatBoostRegressor(
                **self.params,
                iterations=self.iterations,
                eval_metric=metric,
                od_type="Iter",
                od_wait=self.early_stopping_rounds,
                use_best_model=True,
                thread_count=self.threads,
                random_seed=self.ctx.cfg.seed,
                verbose=False,
                allow_writing_files=False,
            )
            with warnings.catch_warnings():  # numba would only compile the RankIC metric (a per-day loop anyway)
                warnings.filterwarnings("ignore", message="Failed to import numba")
                model.fit(
                    cb.Pool(x_fit[ok], y_fit[ok], feature_names=features),
                    eval_set=cb.Pool(x_val[ok_val], y_val[ok_val], feature_names=features),
                )
            models[h] = model
            best = int(model.get_best_iteration()) + 1
            score = model.get_best_score().get("validation", {})
            best_it[str(h)], seconds[str(h)] = best, round(time.perf_counter() - t0, 3)
            depth = int(model.get_all_params()["depth"])
            n_params += int(model.tree_count_) * (2**depth + depth)  # leaf values + one (feature, border) per level
            val_score[str(h)] = {k: float(v) for k, v in score.items()}
            for f, v in zip(features, model.get_feature_importance(), strict=True):
                importance[f] = importance.get(f, 0.0) + float(v)
            log.info("%s %dd: best iteration %d of %d (%s)", self.name, h, best, self.iterations, score)
        total = sum(importance.values()) or 1.0
        top = sorted(importance.items(), key=lambda kv: -kv[1])[: self.top_features]
        facts = {
            "best_iteration": best_it,
            "val_score": val_score,  # the stopping metric at the best iteration
            "fit_seconds": seconds,
            "n_features": len(features),
            "n_params": n_params,
            "n_fit_rows": len(fit),
            # PredictionValuesChange, summed over the horizons, as shares
            "top_features": [{"feature": f, "share": v / total} for f, v in top],
        }
        return CatBoostFitted(self.name, hs, plan, features, models, self.threads, facts, frame)


def _matrix(df: pl.DataFrame, features: Sequence[str]) -> np.ndarray:
    """Float32 design matrix; nulls are NaN (CatBoost routes missing values itself)."""
    return df.select([pl.col(f).cast(pl.Float32) for f in features]).to_numpy().astype(np.float32, copy=False)


def _label(df: pl.DataFrame, col: str, how: str, transform: Any) -> np.ndarray:
    y = df.select(transform(col, how).alias("y")).get_column("y").fill_nan(None)
    return y.cast(pl.Float64).to_numpy()


class CatBoostFitted(Fitted):
    def __init__(
        self,
        name: str,
        horizons: list[int],
        plan: Plan,
        features: list[str],
        models: dict[int, Any],
        threads: int,
        facts: dict[str, Any],
        frame: pl.DataFrame,
    ):
        super().__init__(name, horizons, plan)
        self.features, self.models, self.threads, self._facts = features, models, threads, facts
        self.frame = frame  # the fold's normalised inputs (shared with the other folds under walk-forward)

    def _predict(self, days: list[dt.date]) -> pl.DataFrame:
        rows = self.frame.filter(_in(days))
        x = _matrix(rows, self.features)
        return rows.select(C.DATE, C.CODE).with_columns(
            *[
                pl.Series(C.pred(h), np.asarray(m.predict(x, thread_count=self.threads)).astype(np.float32))
                for h, m in self.models.items()
            ]
        )

    def facts(self) -> dict[str, Any]:
        return dict(self._facts)
