"""Ridge regression per horizon on the baseline's inputs: the linear sanity floor of every comparison.

Inputs are LightGBM's (`baseline` group): the manifest's features minus the too-null ones, normalised per day the
same way; a missing value is the day's centre (0). The label is transformed per day as LightGBM's
(`baseline.target_transform`). For each horizon, every `alphas` value is fitted on the plan's fit days (closed form,
features and label centred on the fit days, so no intercept is penalised) and the one with the highest mean daily
RankIC on the plan's validation days is kept. A fit row needs a finite label; nothing else is dropped.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from gogooku3.core import columns as C
from gogooku3.core.errors import ConfigError, DataError
from gogooku3.evaluation.compare import mean_rank_ic
from gogooku3.predictors.base import Context, Fitted, Predictor
from gogooku3.training.fit import Plan

log = logging.getLogger(__name__)


def _in(days: Sequence[dt.date]) -> pl.Expr:
    return pl.col(C.DATE).is_in(pl.Series(sorted(days), dtype=pl.Date).implode())


def baseline_inputs(ctx: Context) -> tuple[Any, dict[int, list[str]]]:
    """(fold -> normalised frame, fold -> its features): the baseline's frame, per-day normalisation and per-fold
    null screen, built once per run (shared by ridge and catboost)."""
    from gogooku3.predictors.lightgbm import _normalized, baseline_fold_features, baseline_frame

    def build():
        df, features = baseline_frame(ctx.cfg, ctx.dataset, ctx.manifest, ctx.folds)
        floats = [f for f in features if df.schema[f].is_float()]
        frame_of, _ = _normalized(df, floats, ctx.folds, ctx.cfg.baseline.normalize)
        return frame_of, baseline_fold_features(ctx.cfg, df, ctx.manifest, ctx.folds)

    return ctx.shared("baseline_normalized", build)


class RidgePredictor(Predictor):
    def __init__(self, ctx: Context, name: str, alphas: Sequence[float]):
        super().__init__(ctx, name)
        self.alphas = [float(a) for a in alphas]
        if not self.alphas or any(a < 0 for a in self.alphas):
            raise ConfigError(f"predictors.zoo.{name}.alphas: one or more values >= 0, got {list(alphas)}")

    def _inputs(self) -> tuple[Any, dict[int, list[str]]]:
        return baseline_inputs(self.ctx)

    def fit(self, plan: Plan, inputs: Mapping[str, Fitted]) -> RidgeFitted:
        from gogooku3.predictors.lightgbm import _target_expr, baseline_horizons

        frame_of, fold_features = self._inputs()
        features = fold_features[plan.index]
        frame = frame_of(plan.fold)
        hs = [h for h in baseline_horizons(self.ctx.cfg, self.ctx.manifest) if C.target(h) in frame.columns]
        how = self.ctx.cfg.baseline.target_transform
        fit = frame.filter(_in(plan.fit))
        x_fit = _matrix(fit, features)
        mu = x_fit.mean(axis=0)
        xc = x_fit - mu
        val = frame.filter(_in(plan.val))
        gram, x_val = xc.T @ xc, _matrix(val, features) - mu
        coefs: dict[int, tuple[float, float, np.ndarray]] = {}
        scores: dict[int, list[float]] = {}
        for h in hs:
            y = fit.select(_target_expr(C.target(h), how).alias("y")).get_column("y").to_numpy()
            ok = np.isfinite(y)
            if ok.sum() < len(features) + 1:
                raise DataError(f"ridge {h}d: {int(ok.sum())} labelled fit rows for {len(features)} features")
            g = gram if ok.all() else xc[ok].T @ xc[ok]
            yc = y[ok] - y[ok].mean()
            rhs = xc[ok].T @ yc
            best: tuple[float, float, np.ndarray] | None = None
            for a in self.alphas:
                w = np.linalg.solve(g + a * ok.sum() * np.eye(len(features)), rhs)
                pv = val.select(C.DATE, C.CODE, C.target(h)).with_columns(
                    pl.Series(C.pred(h), (x_val @ w).astype(np.float32))
                )
                s = mean_rank_ic(pv, [h]).get(h, (np.nan, 0))[0]
                scores.setdefault(h, []).append(s)
                if best is None or (np.isfinite(s) and not best[0] >= s):  # a NaN score never wins
                    best = (s, a, w)
            assert best is not None  # alphas is never empty (checked with the config)
            coefs[h] = best
            log.info("ridge %dd: alpha %g (val RankIC %.4f)", h, best[1], best[0])
        return RidgeFitted(
            self.name,
            hs,
            plan,
            features,
            mu,
            {h: c[2] for h, c in coefs.items()},
            {h: c[1] for h, c in coefs.items()},
            scores,
            frame,
        )


def _matrix(df: pl.DataFrame, features: Sequence[str]) -> np.ndarray:
    """Float64 design matrix; a missing value is the day's centre (0 after the per-day normalisation)."""
    return np.nan_to_num(
        df.select([pl.col(f).cast(pl.Float64) for f in features]).to_numpy(), nan=0.0, posinf=0.0, neginf=0.0
    )


class RidgeFitted(Fitted):
    def __init__(
        self,
        name: str,
        horizons: list[int],
        plan: Plan,
        features: list[str],
        mu: np.ndarray,
        coefs: dict[int, np.ndarray],
        alphas: dict[int, float],
        scores: dict[int, list[float]],
        frame: pl.DataFrame,
    ):
        super().__init__(name, horizons, plan)
        self.features, self.mu, self.coefs, self.alphas, self.scores = features, mu, coefs, alphas, scores
        self.frame = frame  # the fold's normalised inputs (shared with the other folds under walk-forward)

    def _predict(self, days: list[dt.date]) -> pl.DataFrame:
        rows = self.frame.filter(_in(days))
        x = _matrix(rows, self.features) - self.mu
        return rows.select(C.DATE, C.CODE).with_columns(
            *[pl.Series(C.pred(h), (x @ w).astype(np.float32)) for h, w in self.coefs.items()]
        )

    def facts(self) -> dict[str, Any]:
        return {
            "alpha": {str(h): a for h, a in self.alphas.items()},
            "val_rank_ic_per_alpha": {str(h): s for h, s in self.scores.items()},
            "n_features": len(self.features),
        }
