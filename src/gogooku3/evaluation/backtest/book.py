"""The cohort formed on signal date t, as known on t: the eligible universe, the long/short legs by prediction and
their target weights per unit of the cohort's capital (equal, score or mean-variance), before any trading-realism
rule at the entry close. The engine holds each cohort h sessions with 1/h of the capital (package docstring)."""

from __future__ import annotations

from typing import Any

import polars as pl

from gogooku3.core import columns as C
from gogooku3.core.errors import ConfigError
from gogooku3.evaluation.backtest.config import BacktestConfig
from gogooku3.evaluation.backtest.market import Market


def universe_filter(columns: list[str], c: BacktestConfig) -> pl.Expr:
    """The price / liquidity filter as a boolean expression (ConfigError when a needed column is absent)."""
    cond = pl.lit(True)
    if c.min_price > 0:
        if C.CLOSE not in columns:
            raise ConfigError("portfolio.min_price > 0 needs a Close column (in the predictions or the dataset)")
        cond &= pl.col(C.CLOSE) >= c.min_price
    if c.min_adv > 0:
        if C.VOLUME_MA_20 in columns and C.CLOSE in columns:
            adv = pl.col(C.VOLUME_MA_20) * pl.col(C.CLOSE)
        elif C.DOLLAR_VOLUME in columns:
            adv = pl.col(C.DOLLAR_VOLUME)
        else:
            raise ConfigError(
                "portfolio.min_adv > 0 needs volume_ma_20 and Close, or dollar_volume "
                "(in the predictions or the dataset)"
            )
        cond &= adv >= c.min_adv
    return cond


def eligible(preds: pl.DataFrame, horizon: int, cfg: Any = None, market: Market | None = None) -> pl.DataFrame:
    """The universe: Date, Code, p, y (the label, possibly null) and the market's values on Date of the rows that
    have a prediction and pass the price/liquidity filter. Reads nothing dated after each row's Date."""
    c = BacktestConfig.from_any(cfg, horizon=int(horizon))
    pred, target = C.pred(c.horizon), C.target(c.horizon)
    if c.method == "mean_variance" and c.vol_column not in preds.columns:
        raise ConfigError(
            f"portfolio.method=mean_variance needs the {c.vol_column} column (in the predictions or the dataset)"
        )
    cond = pl.col("p").is_not_null() & universe_filter(preds.columns, c)
    extra = [c.vol_column] if c.method == "mean_variance" else []
    el = (
        preds.lazy()
        .with_columns(
            pl.col(C.DATE).cast(pl.Date),
            pl.col(C.CODE).cast(pl.String),
            p=pl.col(pred).cast(pl.Float64).fill_nan(None),
            y=pl.col(target).cast(pl.Float64).fill_nan(None),
        )
        .filter(cond.fill_null(False))
        .select(C.DATE, C.CODE, "p", "y", *extra)
        .collect()
    )
    if market is not None:
        at_t = [k for k in ("borrowable", "adv", "vol") if market.has(k)]
        if at_t:
            el = el.join(market.rows.select(C.DATE, C.CODE, *at_t), on=[C.DATE, C.CODE], how="left")
    return el.sort(C.DATE, C.CODE)


def side_expr(pred: str, long_fraction: float, short_fraction: float) -> pl.Expr:
    """Per day: 1 for the top floor(long_fraction·N) by `pred`, −1 for the bottom floor(short_fraction·N), else 0.

    N counts the day's rows, so pass only eligible rows with a prediction, sorted by (Date, Code): ordinal
    ranks then break ties by Code.
    """
    n = pl.len().over(C.DATE).cast(pl.Float64)
    r_desc = pl.col(pred).rank("ordinal", descending=True).over(C.DATE)
    r_asc = pl.col(pred).rank("ordinal").over(C.DATE)
    return (
        pl.when(r_desc <= (n * long_fraction).floor())
        .then(1)
        .when(r_asc <= (n * short_fraction).floor())
        .then(-1)
        .otherwise(0)
        .cast(pl.Int8)
    )


def _ranked_legs(el: pl.DataFrame, c: BacktestConfig, borrow: bool) -> tuple[pl.DataFrame, int]:
    """Date, Code, p, side: the top floor(long_fraction·N) long, the bottom floor(short_fraction·N) short (N = the
    day's eligible names; ties by Code); with `borrow`, shorts only among borrowable names, the leg filled from the
    next names in rank order. Also how many non-borrowable names the short leg passed over."""
    n = pl.len().over(C.DATE).cast(pl.Float64)
    n_long, n_short = (n * c.long_fraction).floor(), (n * c.short_fraction).floor()
    lf = (
        el.lazy()
        .sort(C.DATE, C.CODE)
        .with_columns(
            r_desc=pl.col("p").rank("ordinal", descending=True).over(C.DATE),
            r_asc=pl.col("p").rank("ordinal").over(C.DATE),
            n_long=n_long,
            n_short=n_short,
        )
    )
    lf = lf.with_columns(is_long=pl.col("r_desc") <= pl.col("n_long"))
    passed = 0
    if borrow:
        ok = (~pl.col("is_long")) & pl.col("borrowable").fill_null(False)
        lf = lf.with_columns(r_short=pl.when(ok).then(pl.col("p")).otherwise(None).rank("ordinal").over(C.DATE))
        passed = int(
            lf.filter(
                (pl.col("r_asc") <= pl.col("n_short")) & ~pl.col("is_long") & ~pl.col("borrowable").fill_null(False)
            )
            .select(pl.len())
            .collect()
            .item()
        )
    else:
        lf = lf.with_columns(r_short=pl.when(~pl.col("is_long")).then(pl.col("r_asc")).otherwise(None))
    side = (
        pl.when(pl.col("is_long"))
        .then(1)
        .when(pl.col("r_short") <= pl.col("n_short"))
        .then(-1)
        .otherwise(0)
        .cast(pl.Int8)
    )
    out = lf.with_columns(side=side).filter(pl.col("side") != 0).select(C.DATE, C.CODE, "p", "side").collect()
    return out, passed


def _leg_weights(legs: pl.DataFrame, c: BacktestConfig) -> pl.DataFrame:
    """Date, Code, side, w: equal or |p − day's median p| weights, each leg summing to 1 in gross."""
    raw = pl.lit(1.0) if c.weighting == "equal" else (pl.col("p") - pl.col("med")).abs()
    med = pl.col("p").median().over(C.DATE)
    lf = (
        legs.lazy()
        .with_columns(med=med)
        .with_columns(raw=raw)
        .with_columns(leg_sum=pl.col("raw").sum().over(C.DATE, "side"), leg_n=pl.len().over(C.DATE, "side"))
    )
    share = pl.when(pl.col("leg_sum") > 0).then(pl.col("raw") / pl.col("leg_sum")).otherwise(1.0 / pl.col("leg_n"))
    return lf.with_columns(w=share * pl.col("side")).select(C.DATE, C.CODE, "side", "w").collect()


def _mean_variance_weights(el: pl.DataFrame, c: BacktestConfig) -> pl.DataFrame:
    """Per date: the dollar-neutral mean-variance portfolio with a diagonal risk model, scaled to gross 2.

    Maximising μ'w − (γ/2)·Σ σ_i² w_i² subject to Σw = 0 gives w ∝ (μ − λ)/σ² with λ = Σ(μ/σ²)/Σ(1/σ²); μ is the
    day's z-scored prediction and σ the trailing-volatility column (known at t). Scaling to gross 2 makes γ drop
    out. The per-name cap |w_i| ≤ max_weight is then applied approximately: clip and renormalise each leg, five
    passes (exact when the cap is loose; a leg with fewer than 1/max_weight names cannot honour it).
    """
    g = (
        el.lazy()
        .drop_nulls(c.vol_column)
        .filter(pl.col(c.vol_column) > 0)
        .with_columns(
            mu=(pl.col("p") - pl.col("p").mean().over(C.DATE)) / pl.col("p").std().over(C.DATE),
            inv_var=1.0 / pl.col(c.vol_column).cast(pl.Float64).pow(2),
        )
    )
    # dollar-neutral unconstrained solution: w ∝ inv_var·(μ − λ), λ = Σ inv_var·μ / Σ inv_var
    lam = (pl.col("inv_var") * pl.col("mu")).sum().over(C.DATE) / pl.col("inv_var").sum().over(C.DATE)
    g = g.with_columns(raw=pl.col("inv_var") * (pl.col("mu") - lam))
    g = g.with_columns(side=pl.col("raw").sign().cast(pl.Int8)).filter(pl.col("side") != 0)
    leg = pl.col("raw").abs() / pl.col("raw").abs().sum().over(C.DATE, "side")
    g = g.with_columns(a=leg)
    for _ in range(5):
        g = g.with_columns(a=pl.col("a").clip(upper_bound=c.max_weight)).with_columns(
            a=pl.col("a") / pl.col("a").sum().over(C.DATE, "side")
        )
    return g.with_columns(w=pl.col("a") * pl.col("side")).select(C.DATE, C.CODE, "side", "w").collect()


def target_book(el: pl.DataFrame, c: BacktestConfig, borrow: bool) -> tuple[pl.DataFrame, int]:
    """Date, Code, side, w: the book known on t (`method`; with `borrow`, shorts only among borrowable names), and
    how many non-borrowable names the short leg passed over (long_short) or dropped (mean_variance)."""
    if c.method == "long_short":
        legs, passed = _ranked_legs(el, c, borrow)
        book = _leg_weights(legs, c)
    else:
        book, passed = _mean_variance_weights(el, c), 0
        if borrow:
            ok = el.select(C.DATE, C.CODE, "borrowable")
            book = book.join(ok, on=[C.DATE, C.CODE], how="left")
            passed = book.filter((pl.col("side") == -1) & ~pl.col("borrowable").fill_null(False)).height
            book = book.filter((pl.col("side") == 1) | pl.col("borrowable").fill_null(False)).drop("borrowable")
    return book, passed
