"""Stacking (`model.stack`): LightGBM's out-of-fold predictions as model inputs are point in time — every stacked
value at date t comes from a model whose labels were all realised by t — and they reach the training path."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl

from gogooku3.config.compose import load_config
from gogooku3.predictors.stack import stack_array, stack_frame, stack_name

HORIZONS, LAG = [1, 5], 1
GAP = max(HORIZONS) + LAG


def _frame(n_days: int = 300, n_stocks: int = 40, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    dates = [dt.date(2023, 1, 2) + dt.timedelta(days=i) for i in range(n_days)]
    x = rng.normal(size=(n_days, n_stocks, 3))
    y1 = 0.6 * x[:, :, 0] + rng.normal(size=(n_days, n_stocks))
    y5 = 0.4 * x[:, :, 1] + rng.normal(size=(n_days, n_stocks))
    return pl.DataFrame(
        {
            "Date": [d for d in dates for _ in range(n_stocks)],
            "Code": [f"{i:05d}" for i in range(n_stocks)] * n_days,
            **{f"f{k}": x[:, :, k].ravel() for k in range(3)},
            "target_1d": y1.ravel(),
            "target_5d": y5.ravel(),
        }
    )


def _stack(frame: pl.DataFrame, fit: list[dt.date]):
    b = load_config(["baseline.num_boost_round=30", "baseline.early_stopping_rounds=5"]).baseline
    return stack_frame(frame, ["f0", "f1", "f2"], fit, HORIZONS, LAG, 20, b, blocks=4, min_fit_days=20)


def test_every_stacked_value_comes_from_labels_realised_by_its_date():
    frame = _frame()
    dates = frame["Date"].unique().sort().to_list()
    fit = dates[:240]
    pred, provenance = _stack(frame, fit)
    pos = {d: k for k, d in enumerate(dates)}
    fitted = [p for p in provenance if "skipped" not in p]
    assert len(fitted) == 4  # blocks 1..3 and the model after the fit span
    for p in fitted:  # its last label (incl. early stopping) is realised
        last_label_day = pos[dt.date.fromisoformat(p["val_range"][1])]  # GAP sessions after its date, by the
        assert last_label_day + GAP <= pos[dt.date.fromisoformat(p["predicts"][0])]  # first date it predicts
    first_block = set(fit[:60])
    assert not pred.filter(pl.col("Date").is_in(list(first_block))).height  # block 0: no model has seen enough
    assert pred["Date"].max() == dates[-1] and pred.height == (300 - 60) * 40

    # poison every label realised after t (a date in block 2): no stacked value at or before t may move
    t = fit[150]
    late = [d for d in dates if pos[d] + GAP > pos[t]]
    rng = np.random.default_rng(9)
    poisoned = frame.with_columns(
        [
            pl.when(pl.col("Date").is_in(late))
            .then(pl.Series(rng.normal(size=frame.height) * 5))
            .otherwise(pl.col(c))
            .alias(c)
            for c in ("target_1d", "target_5d")
        ]
    )
    pred2, _ = _stack(poisoned, fit)
    before = pl.col("Date") <= t
    assert pred.filter(before).equals(pred2.filter(before))
    assert not pred.filter(~before).equals(pred2.filter(~before))  # the poison does reach later values


def test_stack_array_is_z_scored_per_day_on_the_panel_grid():
    frame = _frame(n_days=120)
    dates = frame["Date"].unique().sort().to_list()
    pred, _ = _stack(frame, dates[:100])
    codes = [*sorted(frame["Code"].unique().to_list()), "99999"]  # a code with no row stays 0
    arr = stack_array(pred, dates, codes, HORIZONS)
    assert arr.shape == (120, 41, 2) and arr.dtype == np.float32
    day = dates[110]
    k = dates.index(day)
    assert np.allclose(arr[k, :40].mean(0), 0, atol=1e-5) and np.allclose(arr[k, :40].std(0, ddof=1), 1, atol=1e-4)
    assert (arr[:, 40] == 0).all() and (arr[: dates.index(pred["Date"].min())] == 0).all()
    row = pred.filter(pl.col("Date") == day).sort("Code")[stack_name(1)].to_numpy()
    assert np.corrcoef(row, arr[k, :40, 0])[0, 1] > 0.999
