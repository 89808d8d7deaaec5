"""Summary statistics of a per-period return series (Sharpe, Sortino, CAGR, drawdown, t-stat), the rolling Sharpe,
and `BacktestResult`, what a backtest returns."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import polars as pl

from gogooku3.core import columns as C
from gogooku3.core.scalars import as_float
from gogooku3.evaluation import metrics
from gogooku3.evaluation.backtest.config import BacktestConfig


@dataclass
class BacktestResult:
    """`daily`: one row per rebalance (Date, n, n_long, n_short, long, short, gross, turnover, cost_flat,
    cost_spread_impact, cost, net, equity, drawdown, top_quantile, universe); `summary`: the figures of the package
    docstring; `quantiles`: quantile, mean_return; `positions`: Date, Code, side, w, r, status."""

    daily: pl.DataFrame
    summary: dict
    quantiles: pl.DataFrame
    config: dict = field(default_factory=dict)
    positions: pl.DataFrame | None = None

    def to_dict(self) -> dict:
        return {"summary": self.summary, "config": self.config, "quantile_returns": self.quantiles.to_dicts()}


def summarise(daily: pl.DataFrame, c: BacktestConfig, col: str = "net") -> dict:
    """The summary figures of the package docstring over the per-period returns `daily[col]`."""
    ppy = c.periods_per_year / c.horizon
    r = daily[col].cast(pl.Float64)
    n = r.len()
    mean = cast(float, r.mean()) if n else float("nan")  # Float64 column: float (None where every value is null)
    std = cast(float, r.std()) if n > 1 else float("nan")
    down = math.sqrt(cast(float, (r.clip(upper_bound=0.0) ** 2).mean())) if n else float("nan")
    eq = (1.0 + r).cum_prod()
    dd = eq / pl.concat([pl.Series([1.0]), eq]).cum_max().slice(1) - 1.0
    max_dd = as_float(dd.min()) if n else float("nan")
    cagr = float(eq[-1] ** (ppy / n) - 1.0) if n and eq[-1] > 0 else float("nan")
    t = metrics.mean_tstat(r, 1)  # non-overlapping periods

    def ratio(a, b):
        return float(a / b) if b and math.isfinite(b) and b > 0 else float("nan")

    return {
        "ann_return": float(mean * ppy) if n else float("nan"),
        "ann_vol": float(std * math.sqrt(ppy)) if n > 1 else float("nan"),
        "sharpe": ratio(mean, std) * math.sqrt(ppy),
        "sharpe_tstat": t["tstat"],
        "sharpe_tstat_naive": t["tstat_naive"],
        "tstat_method": t["tstat_method"],
        "hac_lag": t["hac_lag"],
        "sortino": ratio(mean, down) * math.sqrt(ppy),
        "cagr": cagr,
        "max_drawdown": max_dd,
        "calmar": ratio(cagr, abs(max_dd)),
        "win_rate": as_float((r > 0).mean()) if n else float("nan"),
        "total_return": float(eq[-1] - 1.0) if n else float("nan"),
    }


def summary_for_report(res: BacktestResult) -> Mapping[str, Any]:
    """The subset of a backtest summary shown in run reports."""
    keys = (
        "sharpe",
        "sharpe_tstat",
        "tstat_method",
        "hac_lag",
        "ann_return",
        "ann_vol",
        "sortino",
        "max_drawdown",
        "calmar",
        "win_rate",
        "avg_turnover",
        "sharpe_gross",
        "top_quantile_ann_return",
        "universe_ann_return",
        "n_periods",
        "positions",
        "by_cost_model",
    )
    return {k: res.summary.get(k) for k in keys}


def rolling_sharpe(daily: pl.DataFrame, window: int, c: BacktestConfig, col: str = "net") -> pl.DataFrame:
    """Date, sharpe: the Sharpe of the package docstring over the trailing `window` periods of `daily[col]` (null
    until `window` periods exist)."""
    ppy = c.periods_per_year / c.horizon
    r = pl.col(col).cast(pl.Float64)
    sd = r.rolling_std(window, min_samples=window)
    return daily.sort(C.DATE).select(
        C.DATE, sharpe=pl.when(sd > 0).then(r.rolling_mean(window, min_samples=window) / sd * math.sqrt(ppy))
    )
