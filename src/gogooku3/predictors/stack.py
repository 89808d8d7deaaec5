"""Stacking: LightGBM's out-of-fold predictions as inputs of the ATFT model (`train.stack`).

For one fold (a `training.Plan`) the fit span is cut into `blocks` consecutive blocks. Block b >= 1 is predicted by a
LightGBM fitted on the fit dates before it, less the label gap (max horizon + entry lag sessions), early-stopped on
the end of that slice; the dates after the fit span (validation, embargo, test) by one LightGBM fitted on the whole
fit span, early-stopped inside it, from the session its last label is realised (the `gap` - 1 sessions before are
the last block's). So the value at date t comes from a model whose every label was realised by
t: a stacked input is point in time like any feature, and no training row's own label reaches the inputs it learns
from. Block 0, and a block whose slice is too short to fit, has no value (0 after the per-day z-score).

Stacking needs the test block after the fit span (walk-forward). Under purged k-fold a test block lies before (or
inside) the fit span: no model fitted on earlier dates exists for the first block (fold 0 would test on 0 of its days
filled), and one fitted on later dates would not be point in time, so that combination is refused (`check_split`).

    panel [D, N, F] ─┐
    stack_array ─────┴─> PanelDayDataset concatenates [D, N, S] (one z-scored column per horizon) -> x [n, L, F + S]
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from gogooku3.core import columns as C
from gogooku3.core.errors import ConfigError
from gogooku3.data.split import label_gap
from gogooku3.predictors.lightgbm import LightGBMBaseline

if TYPE_CHECKING:
    from gogooku3.config.schema import BaselineSettings, Settings

log = logging.getLogger(__name__)


def stack_name(h: int) -> str:
    return f"stack_{int(h)}d"


def _in(dates: Sequence[dt.date]) -> pl.Expr:
    return pl.col(C.DATE).is_in(pl.Series(list(dates), dtype=pl.Date).implode())


def stack_frame(
    frame: pl.DataFrame,
    features: Sequence[str],
    fit: Sequence[dt.date],
    horizons: Sequence[int],
    entry_lag: int,
    val_days: int,
    baseline_cfg: BaselineSettings,
    blocks: int,
    min_fit_days: int,
) -> tuple[pl.DataFrame, list[dict[str, Any]]]:
    """(Date, Code, stack_{h}d for the rows of `frame` from the fit span's second block on; one provenance record
    per fitted model: the dates it predicts, the dates it was fitted and early-stopped on).

    `frame`: the baseline's normalized inputs (Date, Code, features, targets) covering the fit span and the dates
    after it. A model is fitted only on a slice of at least `min_fit_days` dates (before its inner validation).
    """
    fit = sorted(fit)
    hs = [int(h) for h in horizons]
    gap = label_gap(hs, entry_lag)
    edges = np.linspace(0, len(fit), int(blocks) + 1).round().astype(int)
    after = frame.filter(pl.col(C.DATE) > fit[-1]).get_column(C.DATE).unique().sort().to_list()
    # (fit-on dates, dates to predict). The model on the whole fit span has its last labels realised `gap` sessions
    # after the span, so the sessions before that are predicted by the last block's model.
    jobs: list[tuple[list[dt.date], list[dt.date]]] = []
    for b in range(1, int(blocks)):
        start, end = int(edges[b]), int(edges[b + 1])
        jobs.append((fit[: max(0, start - gap)], fit[start:end] + (after[: gap - 1] if b == int(blocks) - 1 else [])))
    jobs.append((fit, after[gap - 1 :]))
    parts, provenance = [], []
    for train_dates, predict_dates in jobs:
        if not predict_dates:
            continue
        record: dict[str, Any] = {
            "predicts": [str(predict_dates[0]), str(predict_dates[-1])],
            "n_train_dates": len(train_dates),
        }
        if len(train_dates) < min_fit_days + val_days + gap:
            record["skipped"] = f"{len(train_dates)} fit dates, fewer than {min_fit_days + val_days + gap} needed"
            provenance.append(record)
            continue
        # no held-out slice: a stacking block feeds the model, no blend weights are chosen on it
        model = LightGBMBaseline.from_config(baseline_cfg, entry_lag=entry_lag, val_days=val_days, holdout_days=0)
        model.fit(frame.filter(_in(train_dates)), features, hs)
        pred = model.predict(frame.filter(_in(predict_dates)))
        parts.append(pred.select(C.DATE, C.CODE, *[pl.col(C.pred(h)).alias(stack_name(h)) for h in hs]))
        provenance.append(
            {
                **record,
                "fit_range": [str(x) for x in model.fit_range_],
                "val_range": [str(x) for x in model.val_range_],
                "best_iteration": {str(h): it for h, it in model.best_iteration_.items()},
            }
        )
        log.info(
            "stack: LightGBM fitted on %s..%s predicts %s..%s",
            model.fit_range_[0],
            model.val_range_[1],
            predict_dates[0],
            predict_dates[-1],
        )
    schema = {C.DATE: pl.Date, C.CODE: pl.String, **{stack_name(h): pl.Float32 for h in hs}}
    out = pl.concat(parts) if parts else pl.DataFrame(schema=schema)
    return out.sort(C.DATE, C.CODE), provenance


def stack_array(
    frame: pl.DataFrame, dates: Sequence[dt.date], codes: Sequence[str], horizons: Sequence[int]
) -> np.ndarray:
    """[D, N, S] float32 on the panel's dates × codes: each horizon's stacked prediction z-scored per day (0 where
    there is none), the scale every panel feature has."""
    names = [stack_name(h) for h in horizons]
    out = np.zeros((len(dates), len(codes), len(names)), dtype=np.float32)
    if frame.height == 0:
        return out
    z = frame.with_columns(
        [
            ((pl.col(n) - pl.col(n).mean().over(C.DATE)) / pl.col(n).std().over(C.DATE))
            .fill_nan(None)
            .fill_null(0.0)
            .alias(n)
            for n in names
        ]
    )
    day = {d: k for k, d in enumerate(dates)}
    code = {c: k for k, c in enumerate(codes)}
    z = z.with_columns(
        pl.col(C.DATE).replace_strict(day, default=None, return_dtype=pl.Int64).alias("__d"),
        pl.col(C.CODE).replace_strict(code, default=None, return_dtype=pl.Int64).alias("__i"),
    ).drop_nulls(["__d", "__i"])
    d, i = z.get_column("__d").to_numpy(), z.get_column("__i").to_numpy()
    out[d, i] = z.select(names).to_numpy().astype(np.float32)
    return out


def check_split(split_method: str) -> None:
    """ConfigError unless the split puts every test block after its fit span (see the module docstring)."""
    if split_method != "walk_forward":
        raise ConfigError(
            f"train.stack.enabled=true needs split=walk_forward (split={split_method}: test blocks before the fit "
            "span get no point-in-time stacked inputs); set train.stack.enabled=false or split=walk_forward"
        )


def stack_for_plan(
    cfg: Settings,
    dataset: Any,
    manifest: Any,
    folds: Sequence[Any],
    plan: Any,
    dates: Sequence[dt.date],
    codes: Sequence[str],
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The stacked inputs of one plan on the panel's dates × codes, from the dataset with the baseline's features
    and input normalisation (`baseline` group), and their provenance."""
    from gogooku3.predictors.lightgbm import _normalized, baseline_fold_features, baseline_frame, baseline_horizons

    check_split(cfg.split.method)
    b, sc = cfg.baseline, cfg.train.stack
    horizons = baseline_horizons(cfg, manifest)
    df, union = baseline_frame(cfg, dataset, manifest, folds)
    floats = [f for f in union if df.schema[f].is_float()]
    frame_of, _ = _normalized(df, floats, folds, b.normalize)
    frame = frame_of(plan.fold)
    features = baseline_fold_features(cfg, df, manifest, folds)[plan.index]
    pred, provenance = stack_frame(
        frame, features, plan.fit, horizons, int(manifest.entry_lag), cfg.split.val_days, b, sc.blocks, sc.min_fit_days
    )
    return stack_array(pred, dates, codes, horizons), provenance
