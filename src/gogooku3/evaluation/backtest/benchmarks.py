"""The strategy against its benchmarks: TOPIX closes, per-session benchmark returns and the benchmark-relative
figures (alpha, beta, tracking error, information ratio)."""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl

from gogooku3.core import columns as C
from gogooku3.core.scalars import as_float
from gogooku3.evaluation.backtest.market import Market, sessions_frame
from gogooku3.evaluation.backtest.summary import BacktestResult


def topix_closes(raw_dir: str | Path | None) -> pl.DataFrame | None:
    """Date, close of the raw `topix` table (J-Quants indices; the synthetic market writes one too), or None."""
    if raw_dir is None:
        return None
    from gogooku3.sources.schema import scan_table

    lf = scan_table(raw_dir, "topix")
    if lf is None or "C" not in lf.collect_schema():
        return None
    return (
        lf.select(pl.col(C.DATE).cast(pl.Date), close=pl.col("C").cast(pl.Float64))
        .drop_nulls()
        .unique(C.DATE)
        .sort(C.DATE)
        .collect()
    )


def benchmark_returns(res: BacktestResult, market: Market | None, topix: pl.DataFrame | None) -> pl.DataFrame:
    """Per row (session) of a backtest: Date, strategy (net), equal_weight (the eligible universe's equal-weight
    cohort book over the same session) and topix (TOPIX over the row's session: the close after the entry close of
    the row's Date / that entry close − 1; null without the index table or the dataset's calendar)."""
    d = res.daily.select(C.DATE, strategy=pl.col("net"), equal_weight=pl.col("universe"))
    if topix is None or market is None:
        return d.with_columns(topix=pl.lit(None, dtype=pl.Float64))
    ex = sessions_frame(market, d[C.DATE].to_list(), 1)  # each row earns over one session
    px = topix.select(C.DATE, "close")
    ex = (
        ex.join(px.rename({C.DATE: "e", "close": "ce"}), on="e", how="left")
        .join(px.rename({C.DATE: "x", "close": "cx"}), on="x", how="left")
        .select(C.DATE, topix=pl.col("cx") / pl.col("ce") - 1.0)
    )
    return d.join(ex, on=C.DATE, how="left")


def relative_figures(strategy: pl.Series, benchmark: pl.Series, periods_per_year: float) -> dict:
    """Benchmark-relative figures of per-period returns on the periods both have: beta = cov(s, b) / var(b);
    alpha = (mean(s) − beta · mean(b)) · P (annualised OLS intercept); tracking_error = std(s − b) · √P;
    information_ratio = mean(s − b) · P / tracking_error; correlation; active_return = mean(s − b) · P; n."""
    j = pl.DataFrame({"s": strategy.cast(pl.Float64), "b": benchmark.cast(pl.Float64)}).drop_nulls().drop_nans()
    n, P = j.height, float(periods_per_year)
    nan = float("nan")
    if n < 3:
        return {
            "alpha": nan,
            "beta": nan,
            "tracking_error": nan,
            "information_ratio": nan,
            "correlation": nan,
            "active_return": nan,
            "n": n,
        }
    s, b = j["s"], j["b"]
    var_b = as_float(b.var())
    beta = as_float(pl.cov(s, b, eager=True).item()) / var_b if var_b > 0 else nan
    active = s - b
    te = as_float(active.std()) * math.sqrt(P)
    act = as_float(active.mean()) * P
    return {
        "alpha": (as_float(s.mean()) - beta * as_float(b.mean())) * P if math.isfinite(beta) else nan,
        "beta": beta,
        "tracking_error": te,
        "information_ratio": act / te if te > 0 else nan,
        "correlation": float(j.select(pl.corr("s", "b")).item()),
        "active_return": act,
        "n": n,
    }
