"""Summary statistics of the book's daily return series (Sharpe, Sortino, CAGR, drawdown, t-stat), the rolling
Sharpe, the annualisation (sessions a year of the data's calendar) and `BacktestResult`, what a backtest returns."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import polars as pl

from gogooku3.core import columns as C
from gogooku3.core.scalars import as_float
from gogooku3.evaluation import metrics
from gogooku3.evaluation.backtest.config import BacktestConfig

# Sessions a year on the Tokyo Stock Exchange when the data's calendar spans too little to count them: the JPX
# holiday calendar (exchange_calendars XTKS) has 241-248 sessions a year over 2010-2025, mean 244.6, 245 in 2024.
TSE_SESSIONS_PER_YEAR = 245.0


@dataclass
class BacktestResult:
    """`daily`: one row per session of the book (Date, n, n_long, n_short, long, short, gross, exposure, turnover,
    cost_flat, cost_spread_impact, cost, net, equity, drawdown, top_quantile, universe); `summary`: the figures of
    the package docstring; `quantiles`: quantile, mean_return; `positions`: one row per cohort and name (Date = the
    cohort's signal date, Code, side, w per unit of the cohort's capital, r over its h sessions, status)."""

    daily: pl.DataFrame
    summary: dict
    quantiles: pl.DataFrame
    config: dict = field(default_factory=dict)
    positions: pl.DataFrame | None = None

    def to_dict(self) -> dict:
        return {"summary": self.summary, "config": self.config, "quantile_returns": self.quantiles.to_dicts()}


def sessions_per_year(sessions: list[dt.date]) -> tuple[float, str]:
    """Sessions a year of a calendar and how they were counted: the mean count over the calendar years it covers
    whole (its first and last year are partial unless it starts in the first and ends in the last week of the
    year); without one, the rate over a span of a year or more; else the TSE's `TSE_SESSIONS_PER_YEAR`."""
    if not sessions:
        return TSE_SESSIONS_PER_YEAR, "TSE default (no calendar)"
    first, last = min(sessions), max(sessions)
    y0 = first.year if first <= dt.date(first.year, 1, 7) else first.year + 1
    y1 = last.year if last >= dt.date(last.year, 12, 24) else last.year - 1
    if y1 >= y0:
        n = sum(1 for d in sessions if y0 <= d.year <= y1)
        return n / (y1 - y0 + 1), f"mean sessions a year of the data's calendar over {y0}-{y1}"
    days = (last - first).days + 1
    if days >= 365:
        return len(sessions) * 365.25 / days, f"sessions a year of the data's calendar, {first} to {last}"
    return TSE_SESSIONS_PER_YEAR, "TSE default (the data's calendar spans less than a year)"


def annualisation(c: BacktestConfig, sessions: list[dt.date]) -> tuple[float, str]:
    """Periods a year of the daily series: `periods_per_year` when set, else (auto) the calendar's sessions a year."""
    if c.periods_per_year != "auto":
        return float(c.periods_per_year), "portfolio.periods_per_year"
    return sessions_per_year(sessions)


def summarise(daily: pl.DataFrame, ppy: float, col: str = "net") -> dict:
    """The summary figures of the package docstring over the daily returns `daily[col]`, `ppy` sessions a year."""
    r = daily[col].cast(pl.Float64)
    n = r.len()
    mean = cast(float, r.mean()) if n else float("nan")  # Float64 column: float (None where every value is null)
    std = cast(float, r.std()) if n > 1 else float("nan")
    down = math.sqrt(cast(float, (r.clip(upper_bound=0.0) ** 2).mean())) if n else float("nan")
    eq = (1.0 + r).cum_prod()
    dd = eq / pl.concat([pl.Series([1.0]), eq]).cum_max().slice(1) - 1.0
    max_dd = as_float(dd.min()) if n else float("nan")
    cagr = float(eq[-1] ** (ppy / n) - 1.0) if n and eq[-1] > 0 else float("nan")
    t = metrics.mean_tstat(r, 1)  # one daily series: consecutive rows do not overlap

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


def rolling_sharpe(daily: pl.DataFrame, window: int, ppy: float, col: str = "net") -> pl.DataFrame:
    """Date, sharpe: the Sharpe of the package docstring over the trailing `window` sessions of `daily[col]`, `ppy`
    sessions a year (a backtest's summary["periods_per_year"]; null until `window` sessions exist)."""
    r = pl.col(col).cast(pl.Float64)
    sd = r.rolling_std(window, min_samples=window)
    return daily.sort(C.DATE).select(
        C.DATE, sharpe=pl.when(sd > 0).then(r.rolling_mean(window, min_samples=window) / sd * math.sqrt(ppy))
    )


def worst_drawdowns(daily: pl.DataFrame, n: int = 5, col: str = "net") -> pl.DataFrame:
    """The `n` deepest drawdowns of the compounded `daily[col]`, deepest first: start (the peak's session; the
    first session when the book loses from its first day), trough, recovery (first session back at the
    peak, null while under water), depth (trough / peak − 1) and length (sessions from the peak to the recovery, or
    to the last session)."""
    d = daily.sort(C.DATE).select(C.DATE, pl.col(col).cast(pl.Float64).fill_null(0.0))
    dates, eq = d[C.DATE].to_list(), (1.0 + d[col]).cum_prod().to_list()
    out: list[dict] = []
    peak, peak_i, trough_i = 1.0, -1, None  # peak index -1: the capital before the first session
    for i, e in enumerate([*eq, math.inf]):  # the sentinel closes an episode still under water
        if e >= peak:
            if trough_i is not None:
                end = i if i < len(eq) else None
                out.append(
                    {
                        "start": dates[max(peak_i, 0)],
                        "trough": dates[trough_i],
                        "recovery": None if end is None else dates[end],
                        "depth": eq[trough_i] / peak - 1.0,
                        "length": (end if end is not None else len(eq) - 1) - peak_i,
                    }
                )
            peak, peak_i, trough_i = e, i, None
        elif trough_i is None or e < eq[trough_i]:
            trough_i = i
    schema = {"start": pl.Date, "trough": pl.Date, "recovery": pl.Date, "depth": pl.Float64, "length": pl.Int64}
    return pl.DataFrame(out, schema=schema).sort("depth").head(n)


def monthly_returns(daily: pl.DataFrame, col: str = "net") -> pl.DataFrame:
    """year, month, ret: `daily[col]` compounded within each calendar month, and n (sessions)."""
    return (
        daily.group_by(year=pl.col(C.DATE).dt.year(), month=pl.col(C.DATE).dt.month())
        .agg(ret=(1.0 + pl.col(col).cast(pl.Float64).fill_null(0.0)).product() - 1.0, n=pl.len())
        .sort("year", "month")
    )


def rolling_vol(daily: pl.DataFrame, window: int, ppy: float, col: str = "net") -> pl.DataFrame:
    """Date, vol: the annualised std of the trailing `window` sessions of `daily[col]` (null until `window` exist)."""
    r = pl.col(col).cast(pl.Float64)
    return daily.sort(C.DATE).select(C.DATE, vol=r.rolling_std(window, min_samples=window) * math.sqrt(ppy))


def rolling_beta(strategy: pl.Series, benchmark: pl.Series, dates: pl.Series, window: int) -> pl.DataFrame:
    """Date, beta: cov(s, b) / var(b) over the trailing `window` sessions where both are present (null before)."""
    d = pl.DataFrame({C.DATE: dates, "s": strategy.cast(pl.Float64), "b": benchmark.cast(pl.Float64)})
    d = d.drop_nulls().drop_nans().sort(C.DATE)

    def m(e: pl.Expr) -> pl.Expr:
        return e.rolling_mean(window, min_samples=window)

    s, b = pl.col("s"), pl.col("b")
    var = m(b * b) - m(b) ** 2
    return d.select(C.DATE, beta=pl.when(var > 0).then((m(s * b) - m(s) * m(b)) / var))
