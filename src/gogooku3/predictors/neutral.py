"""A predictor's predictions made risk-neutral: per day, residualised against the stocks' sector, size and beta
(`evaluation.neutral`, the exposures of the `neutral` config group, read from the dataset for the days asked).

    neutral_h(d) = pred_h(d) − OLS fit of pred_h(d) on day d's [sector dummies, log market cap, beta]

Nothing is fitted: the exposures of day d are known at its close, so the result is as point in time as the input
predictor. A stock the input predictor scores keeps its row; the module's rules say when its value is null.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

import polars as pl

from gogooku3.core import columns as C
from gogooku3.evaluation.neutral import Exposures, exposure_frame, neutralize
from gogooku3.predictors.base import Context, Fitted, Predictor
from gogooku3.training.fit import Plan

log = logging.getLogger(__name__)


def _exposures(ctx: Context, ex: Exposures, days: list[dt.date]) -> pl.DataFrame:
    """The exposures on `days`, read once per run for every day of the run's plans (others read when asked)."""
    every = sorted({d for p in ctx.plans for d in (*p.val, *p.holdout, *p.test)})
    known = ctx.shared("neutral_exposures", lambda: exposure_frame(ctx.dataset, every, ex))
    if set(days) <= set(every):
        return known.filter(pl.col(C.DATE).is_in(pl.Series(sorted(set(days)), dtype=pl.Date).implode()))
    return exposure_frame(ctx.dataset, days, ex)


class NeutralPredictor(Predictor):
    """`of`'s predictions residualised per day against the `neutral` group's exposures."""

    needs = ("of",)

    def __init__(self, ctx: Context, name: str, of: str):
        super().__init__(ctx, name)
        self.of = of
        self.exposures = Exposures.from_settings(ctx.cfg.neutral)

    def fit(self, plan: Plan, inputs: Mapping[str, Fitted]) -> NeutralFitted | None:
        inner = inputs.get(self.of)
        if inner is None:
            log.info("train: %s needs %s, which is not fitted here", self.name, self.of)
            return None
        return NeutralFitted(self.name, inner, plan, self.ctx, self.exposures)


class NeutralFitted(Fitted):
    def __init__(self, name: str, inner: Fitted, plan: Plan, ctx: Context, exposures: Exposures):
        super().__init__(name, inner.horizons, plan)
        self.inner, self.ctx, self.exposures = inner, ctx, exposures

    def _predict(self, days: list[dt.date]) -> pl.DataFrame:
        p = self.inner.predict(days)
        cols = [C.pred(h) for h in self.horizons if C.pred(h) in p.columns]
        return neutralize(
            p.select(C.DATE, C.CODE, *cols), cols, _exposures(self.ctx, self.exposures, days), self.exposures
        )

    def facts(self) -> dict[str, Any]:
        return {"of": self.inner.name, "exposures": self.exposures.to_dict()}
