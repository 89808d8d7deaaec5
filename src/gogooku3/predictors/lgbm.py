"""LightGBM as a predictor: the `baseline` group's boosters per horizon, fitted once per split into the
content-addressed store (`predictors.lightgbm`, shared with `safe`), served per plan.

`Fitted.predict` returns the stored predictions of the plan's validation (the early-stopping days) and test days;
any other day goes through `predict_spec`, the one LightGBM inference that the bundle uses too.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import lightgbm as lgb
import numpy as np
import polars as pl

from gogooku3.config.compose import to_dict
from gogooku3.core import columns as C
from gogooku3.core.errors import DataError
from gogooku3.data.normalize import CrossSectionalNormalizer
from gogooku3.predictors.base import Fitted, Predictor
from gogooku3.predictors.lightgbm import BaselineRun, baseline_for_folds
from gogooku3.training.fit import Plan

log = logging.getLogger(__name__)


class LightGBMPredictor(Predictor):
    """LightGBM per horizon (`baseline` group); None when `baseline.enabled` is false."""

    def run(self) -> BaselineRun | None:
        ctx = self.ctx
        return ctx.shared(
            "lightgbm_run",
            lambda: baseline_for_folds(
                ctx.cfg, ctx.dataset, ctx.manifest, ctx.folds, [p.index for p in ctx.plans], ctx.manifest.entry_lag
            ),
        )

    def fit(self, plan: Plan, inputs: Mapping[str, Fitted]) -> LightGBMFitted | None:
        run = self.run()
        if run is None:
            log.info("train: %s skipped (baseline.enabled=false)", self.name)
            return None
        return LightGBMFitted(self.name, run, plan, to_dict(self.ctx.cfg.baseline.normalize), self.ctx.dataset)


class LightGBMFitted(Fitted):
    def __init__(self, name: str, run: BaselineRun, plan: Plan, normalize: dict[str, Any], dataset: Path):
        super().__init__(name, run.horizons, plan)
        self.run, self.normalize, self.dataset = run, normalize, dataset
        self.fold = plan.index
        self.per_fold = next(p for p in run.per_fold if int(p["fold"]) == self.fold)

    def _predict(self, days: list[dt.date]) -> pl.DataFrame:
        in_fold = pl.col("fold") == self.fold
        for stored in (self.run.predictions_val.filter(in_fold), self.run.predictions_test.filter(in_fold)):
            have = set(stored.get_column(C.DATE).unique().to_list())
            if set(days) <= have:
                return stored.filter(pl.col(C.DATE).is_in(pl.Series(days, dtype=pl.Date).implode()))
        spec = self.spec()
        return predict_spec(
            spec,
            {h: self.run.booster(self.fold, int(h)) for h in spec["boosters"]},
            pl.scan_parquet(self.dataset),
            days,
        )

    def spec(self) -> dict[str, Any]:
        """What inference needs besides the boosters: features, which of them are normalised, the normaliser and the
        best iteration per horizon (saved into the bundle)."""
        schema = pl.scan_parquet(self.dataset).collect_schema()
        run = self.run
        features = list(self.per_fold.get("features") or run.features)  # the fold's own null screen
        return {
            "fold": self.fold,
            "features": features,
            "normalized_features": [f for f in features if schema[f].is_float()],
            "normalize": {
                **self.normalize,
                "day_level_features": list(run.normalization.get("day_level_features") or []),
            },
            "boosters": {str(h): str(run.booster_path(self.fold, h)) for h in run.horizons},
            "best_iteration": {str(h): int(self.per_fold["best_iteration"][str(h)]) for h in run.horizons},
        }

    def facts(self) -> dict[str, Any]:
        pf = self.per_fold
        return {
            "best_iteration": pf["best_iteration"],
            "n_train_rows": pf["n_train_rows"],
            "fit_range": pf["fit_range"],
            "val_range": pf["val_range"],
            "directory": str(self.run.directory),
            "fingerprint": self.run.fingerprint,
            "reused": bool(self.run.reused),
        }


def predict_spec(
    spec: Mapping[str, Any], boosters: Mapping[str, lgb.Booster], lf: pl.LazyFrame, days: Sequence[dt.date]
) -> pl.DataFrame:
    """Date, Code, pred_{h}d of LightGBM boosters on `days` of a dataset: features normalised per day as in training
    (the normaliser's history before the first day is read too)."""
    feats, normed = list(spec["features"]), list(spec["normalized_features"])
    want = sorted(days)
    norm = CrossSectionalNormalizer.from_dict({**spec["normalize"], "features": normed})
    all_dates = lf.select(pl.col(C.DATE).cast(pl.Date).unique().sort()).collect().get_column(C.DATE).to_list()
    if want[0] not in all_dates:
        raise DataError(f"LightGBM: {want[0]} is not a date of the dataset")
    lo = all_dates[max(0, all_dates.index(want[0]) - norm.history_days)]
    frame = (
        lf.select(pl.col(C.DATE).cast(pl.Date), pl.col(C.CODE).cast(pl.String), *feats)
        .filter(pl.col(C.DATE).is_between(lo, want[-1]))
        .collect()
    )
    x = norm.transform(frame).filter(pl.col(C.DATE).is_in(pl.Series(want, dtype=pl.Date).implode()))
    mat = x.select([pl.col(f).cast(pl.Float32) for f in feats]).to_numpy()
    out = x.select(C.DATE, C.CODE)
    for h, booster in boosters.items():
        out = out.with_columns(
            pl.Series(
                C.pred(int(h)),
                # a dense matrix in -> an ndarray out (the stub's union also covers sparse input and pred_contrib)
                cast(np.ndarray, booster.predict(mat, num_iteration=int(spec["best_iteration"][str(h)]))).astype(
                    "float32"
                ),
            )
        )
    return out
