"""Blending the ATFT model with the LightGBM baseline: per horizon, a weighted mean of the two predictions after a
per-day standardisation, with the weight chosen on a fold's held-out days only (`Plan.holdout`, `split.holdout_days`:
after the early-stopping days and a label gap, so neither member's predictions there were selected on them).

    combined_h = w_h · s(model_h) + (1 − w_h) · s(lightgbm_h),   s = per-day z-score (`zscore`) or centred rank (`rank`)

`choose_weights` scans w on a grid in [0, 1] and keeps the one with the highest mean daily RankIC on the held-out
rows both predictors scored (ties: the larger model weight). A horizon the baseline lacks keeps w = 1. Without a
held-out slice (`split.holdout_days=0`) the weights are chosen on the early-stopping days, optimistic for both members
(LightGBM by ~+0.007 RankIC there), which tilts the weights.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import polars as pl

from gogooku3.core import columns as C
from gogooku3.core.errors import ConfigError, DataError
from gogooku3.core.scalars import as_float
from gogooku3.evaluation import metrics
from gogooku3.predictors.base import Context, Fitted, Predictor, targets_frame
from gogooku3.training.fit import Plan

if TYPE_CHECKING:
    from gogooku3.predictors.atft import ATFTFitted

log = logging.getLogger(__name__)

METHODS = ("zscore", "rank")


def standardized(col: str, method: str) -> pl.Expr:
    """The column standardised within each Date: z-score (0 where the day's std is 0) or rank in (−0.5, 0.5)."""
    x = pl.col(col).cast(pl.Float64)
    if method == "rank":
        return (x.rank("average").over(C.DATE) - 0.5) / x.count().over(C.DATE) - 0.5
    if method == "zscore":
        sd = x.std().over(C.DATE)
        return pl.when(sd > 0).then((x - x.mean().over(C.DATE)) / sd).otherwise(0.0)
    raise ConfigError(f"blend method must be one of {METHODS}, got '{method}'")


def _aligned(model: pl.DataFrame, base: pl.DataFrame, weights: Mapping[int, float], method: str) -> pl.DataFrame:
    """The model's rows that have a finite baseline prediction of every blended horizon (w < 1), with each horizon's
    standardised model (`__m{h}`) and baseline (`__b{h}`) predictions and the model frame's target columns."""
    hs = [int(h) for h in weights]
    mixed = [h for h in hs if float(weights[h]) < 1.0]
    missing = [C.pred(h) for h in mixed if C.pred(h) not in base.columns]
    if missing:
        raise DataError(f"blend: baseline predictions lack {', '.join(missing)}")
    b = base.select(
        pl.col(C.DATE).cast(pl.Date),
        pl.col(C.CODE).cast(pl.String),
        *[pl.col(C.pred(h)).cast(pl.Float64).alias(f"__b{h}") for h in mixed],
    )
    m = model.with_columns(pl.col(C.DATE).cast(pl.Date), pl.col(C.CODE).cast(pl.String))
    j = m.join(b, on=[C.DATE, C.CODE], how="inner").filter(
        pl.all_horizontal([pl.col(f"__b{h}").is_finite() for h in mixed] or [pl.lit(True)])
    )
    return j.with_columns(
        *[standardized(C.pred(h), method).alias(f"__m{h}") for h in hs],
        *[standardized(f"__b{h}", method).alias(f"__b{h}") for h in mixed],
    )


def _mixed(h: int, w: float) -> pl.Expr:
    m = pl.col(f"__m{h}")
    return (m if w >= 1.0 else w * m + (1.0 - w) * pl.col(f"__b{h}")).cast(pl.Float32).alias(C.pred(h))


def combine(model: pl.DataFrame, base: pl.DataFrame, weights: Mapping[int, float], method: str) -> pl.DataFrame:
    """Date, Code, pred_{h}d = the blend, and the model frame's target_{h}d columns, on the model's rows that have a
    baseline prediction of every blended horizon (w < 1). Horizons with w = 1 (or no baseline column) are the model's
    standardised prediction."""
    j = _aligned(model, base, weights, method)
    targets = [C.target(int(h)) for h in weights if C.target(int(h)) in j.columns]
    return j.select(C.DATE, C.CODE, *[_mixed(int(h), float(w)) for h, w in weights.items()], *targets).sort(
        C.DATE, C.CODE
    )


@dataclass
class BlendChoice:
    """A fold's blend: method, weight per horizon and the RankIC of every grid point on the days it was chosen on
    (`chosen_on`: "holdout", or "val" = the early-stopping days when there is no held-out slice)."""

    method: str
    weights: dict[int, float]
    grid: list[float]
    val_rank_ic: dict[int, list[float]] = field(default_factory=dict)  # per horizon, one per grid point
    val_days: int = 0
    chosen_on: str = "val"
    chosen_range: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["weights"] = {str(h): w for h, w in self.weights.items()}
        d["val_rank_ic"] = {str(h): v for h, v in self.val_rank_ic.items()}
        return d


def weight_grid(step: float) -> list[float]:
    """0, step, ..., 1 (step in (0, 1])."""
    if not 0 < float(step) <= 1:
        raise ConfigError(f"blend grid_step={step}: must lie in (0, 1]")
    n = round(1.0 / float(step))
    return [round(k / n, 6) for k in range(n + 1)]


def choose_weights(
    model_val: pl.DataFrame, base_val: pl.DataFrame | None, horizons: Sequence[int], method: str, grid: Sequence[float]
) -> BlendChoice:
    """Per horizon, the grid weight with the highest mean daily RankIC of the blend on the rows both predicted
    (targets from `model_val`; the held-out days, see the module docstring). Without baseline predictions of a
    horizon its weight is 1 (the model alone)."""
    weights: dict[int, float] = {}
    scores: dict[int, list[float]] = {}
    n_days = 0
    for h in (int(x) for x in horizons):
        if base_val is None or C.pred(h) not in base_val.columns:
            weights[h] = 1.0
            continue
        vals = []
        j = _aligned(model_val.select(C.DATE, C.CODE, C.pred(h), C.target(h)), base_val, {h: 0.0}, method)
        for w in grid:  # the rows and the standardisation are the grid's; only the weight changes
            daily = metrics.daily_ic(j.select(C.DATE, _mixed(h, float(w)), C.target(h)), C.pred(h), C.target(h))
            n_days = max(n_days, daily.height)
            vals.append(as_float(daily["rank_ic"].mean()) if daily.height else float("nan"))
        arr = np.array(vals, dtype=np.float64)
        if not np.isfinite(arr).any():
            raise DataError(f"blend {h}d: no held-out (or validation) day to choose a weight on")
        best = float(np.nanmax(arr))
        k = max(i for i, v in enumerate(arr) if np.isfinite(v) and v >= best - 1e-12)  # ties: more model
        weights[h], scores[h] = float(grid[k]), vals
        log.info(
            "blend %dd: weight %.2f on the model (RankIC where chosen %.4f; model alone %.4f, LightGBM alone %.4f)",
            h,
            grid[k],
            best,
            vals[-1],
            vals[0],
        )
    return BlendChoice(method, weights, [float(g) for g in grid], scores, n_days)


# ---- the predictor ---------------------------------------------------------------------------------------------
class BlendPredictor(Predictor):
    """`a` and `b` blended per horizon (`combine`), the weights chosen on the plan's validation days."""

    needs = ("a", "b")

    def __init__(self, ctx: Context, name: str, a: str, b: str, method: str, grid_step: float):
        super().__init__(ctx, name)
        if method not in METHODS:
            raise ConfigError(f"predictors.zoo.{name}.method must be one of {METHODS}, got '{method}'")
        self.a, self.b, self.method, self.grid = a, b, method, weight_grid(grid_step)

    def fit(self, plan: Plan, inputs: Mapping[str, Fitted]) -> BlendFitted | None:
        a, b = inputs.get(self.a), inputs.get(self.b)
        if a is None or b is None:
            log.info(
                "train: %s needs %s and %s; %s is not fitted here",
                self.name,
                self.a,
                self.b,
                self.a if a is None else self.b,
            )
            return None
        kind, days = ("holdout", list(plan.holdout)) if plan.holdout else ("val", list(plan.val))
        if not plan.holdout:
            log.warning(
                "train: fold %d: %s weights chosen on the early-stopping days (split.holdout_days=0): optimistic "
                "for both members",
                plan.index,
                self.name,
            )
        val = targets_frame(self.ctx, days)
        av = a.predict(days).join(val, on=[C.DATE, C.CODE], how="inner")
        bv = b.predict(days)
        if bv.select(C.DATE).n_unique() != av.select(C.DATE).n_unique():
            log.warning(
                "train: fold %d: %s " + kind + " days (%d) differ from %s's (%d)",
                plan.index,
                self.b,
                bv.select(C.DATE).n_unique(),
                self.a,
                av.select(C.DATE).n_unique(),
            )
        choice = choose_weights(av, bv, a.horizons, self.method, self.grid)
        choice.chosen_on, choice.chosen_range = kind, [str(days[0]), str(days[-1])]
        return BlendFitted(self.name, a, b, plan, choice)


class BlendFitted(Fitted):
    def __init__(self, name: str, a: Fitted, b: Fitted, plan: Plan, choice: BlendChoice):
        super().__init__(name, a.horizons, plan)
        self.a, self.b, self.choice = a, b, choice

    def _predict(self, days: list[dt.date]) -> pl.DataFrame:
        return combine(self.a.predict(days), self.b.predict(days), self.choice.weights, self.choice.method)

    def facts(self) -> dict[str, Any]:
        return {"a": self.a.name, "b": self.b.name, **self.choice.to_dict()}

    def save(self, directory: Path) -> None:
        """The bundle of `a` (ATFT-GAT-FAN) with `b`'s (LightGBM's) boosters of the blended horizons and the
        weights: `predict` needs nothing outside it."""
        from gogooku3.predictors.lgbm import LightGBMFitted

        if not (self.a.holds_network and isinstance(self.b, LightGBMFitted)):
            raise ConfigError(
                f"predictor {self.name}: only a blend of the deep model (a) and LightGBM (b) can be saved for `predict`"
            )
        spec = self.b.spec()
        hs = [str(h) for h, w in self.choice.weights.items() if w < 1.0]
        blend = {
            "method": self.choice.method,
            "weights": {str(h): w for h, w in self.choice.weights.items()},
            "a": self.a.name,
            "b": self.b.name,
            **spec,
            "boosters": {h: spec["boosters"][h] for h in hs},
            "best_iteration": {h: spec["best_iteration"][h] for h in hs},
        }
        # holds_network: the deep model's fitted predictor, whose save() carries a blend's spec
        cast("ATFTFitted", self.a).save(directory, blend=blend, product=self.name)
