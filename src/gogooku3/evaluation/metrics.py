"""The one evaluation module: cross-sectional prediction metrics shared by training, baseline, backtest and report.

Definitions (each metric has exactly one):

- **Pairs.** For a day, the (prediction, target) pairs of that day's stocks; a pair with a null or NaN on either side is
  dropped (pairwise). A day is *scored* when it has at least ``min_stocks`` (default 5) pairs and both the prediction
  and the target vary across them (max > min); other days are excluded from every daily series.
- **IC** (daily): Pearson correlation of prediction and target over the day's pairs.
- **RankIC** (daily): Spearman correlation = Pearson correlation of the within-day average ranks (ties share the
  average rank).
- **Summary** of a daily series x over n scored days: ``mean``, ``std`` (sample, ddof=1), ``ICIR = mean / std``,
  ``t-stat = mean / std * sqrt(n)``, ``pos_share`` = share of days with x > 0. Undefined values are NaN.
- **Hit rate**: per day, the share of pairs whose prediction and target fall on the same side of that day's
  cross-sectional median (pairs sitting exactly on either median are left out); the hit rate is the mean over scored
  days. Cross-sectional on purpose: a ranking model's level carries no information, so 0.5 is chance.
- **Quantile buckets**: per day, bucket = floor((average rank − 0.5) / n · q) + 1 ∈ 1..q by prediction (q = 5:
  quintiles; ties share a bucket). **Quantile return** = mean over days of the bucket's mean target.
- **Top/bottom spread**: mean over days of (mean target of the top bucket − mean target of the bottom bucket).
- **Paired comparison** of two daily series a, b on the days both have: d = a − b, ``mean_diff``, ``t_stat =
  mean(d) / std(d) * sqrt(n)``, two-sided p-value from Student's t with n − 1 degrees of freedom.

Everything is Polars, vectorised over days with ``group_by("Date")``; there is no Python loop over days.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import polars as pl

from gogooku3.errors import DataError, SchemaError

MIN_STOCKS = 5
_DAILY_SCHEMA = {"Date": pl.Date, "n": pl.UInt32, "ic": pl.Float64, "rank_ic": pl.Float64}


def _frame(df: pl.DataFrame | pl.LazyFrame) -> pl.LazyFrame:
    return df.lazy() if isinstance(df, pl.DataFrame) else df


def _require(lf: pl.LazyFrame, cols: Iterable[str], what: str = "predictions") -> None:
    schema = lf.collect_schema()
    missing = [c for c in cols if c not in schema]
    if missing:
        raise SchemaError(f"{what}: missing column(s) {', '.join(missing)} (has {', '.join(schema.names()[:12])})")


def _pairs(df: pl.DataFrame | pl.LazyFrame, pred: str, target: str) -> pl.LazyFrame:
    """Date, p, y with null/NaN pairs dropped (both cast to Float64)."""
    lf = _frame(df)
    _require(lf, ["Date", pred, target])
    return (lf.select("Date",
                      pl.col(pred).cast(pl.Float64).fill_nan(None).alias("p"),
                      pl.col(target).cast(pl.Float64).fill_nan(None).alias("y"))
            .drop_nulls(["p", "y"]))


def _scored(min_stocks: int) -> pl.Expr:
    return ((pl.len() >= min_stocks)
            & (pl.col("p").max() > pl.col("p").min())
            & (pl.col("y").max() > pl.col("y").min()))


def daily_ic(df: pl.DataFrame | pl.LazyFrame, pred: str, target: str, min_stocks: int = MIN_STOCKS) -> pl.DataFrame:
    """Per scored day: Date, n (pairs), ic (Pearson), rank_ic (Spearman, average ranks), sorted by Date."""
    out = (_pairs(df, pred, target)
           .group_by("Date")
           .agg(n=pl.len().cast(pl.UInt32),
                ic=pl.corr("p", "y"),
                rank_ic=pl.corr(pl.col("p").rank("average"), pl.col("y").rank("average")),
                ok=_scored(min_stocks))
           .filter(pl.col("ok"))
           .drop("ok")
           .sort("Date")
           .collect())
    return out.cast({k: v for k, v in _DAILY_SCHEMA.items() if k != "Date"})


def _stats(x: pl.Expr, prefix: str) -> list[pl.Expr]:
    n = x.count()
    mean, std = x.mean(), x.std(ddof=1)
    ratio = pl.when(std > 0).then(mean / std).otherwise(None)
    return [mean.alias(f"{prefix}_mean"), std.alias(f"{prefix}_std"), ratio.alias(f"{prefix}ir"),
            (ratio * n.cast(pl.Float64).sqrt()).alias(f"{prefix}_tstat"),
            (x > 0).mean().alias(f"{prefix}_pos_share")]


def _to_float(v) -> float:
    return float("nan") if v is None else float(v)


def summarize_ic(daily: pl.DataFrame) -> dict:
    """ic_mean, ic_std, icir, ic_tstat, ic_pos_share, the same for rank_ic, and n_days (see module docstring)."""
    _require(daily.lazy(), ["ic", "rank_ic"], "daily IC table")
    row = daily.select(*_stats(pl.col("ic"), "ic"), *_stats(pl.col("rank_ic"), "rank_ic")).row(0, named=True)
    out = {k: _to_float(v) for k, v in row.items()}
    out["n_days"] = daily.height
    return out


def daily_hit_rate(df: pl.DataFrame | pl.LazyFrame, pred: str, target: str,
                   min_stocks: int = MIN_STOCKS) -> pl.DataFrame:
    """Per scored day: Date, hit_rate (share of pairs on the same side of the day's medians)."""
    sp = (pl.col("p") - pl.col("p").median()).sign()
    sy = (pl.col("y") - pl.col("y").median()).sign()
    valid = (sp != 0) & (sy != 0)
    return (_pairs(df, pred, target)
            .group_by("Date")
            .agg(hit_rate=((sp == sy) & valid).sum() / valid.sum(), ok=_scored(min_stocks) & (valid.sum() > 0))
            .filter(pl.col("ok")).drop("ok").sort("Date").collect())


def hit_rate(df: pl.DataFrame | pl.LazyFrame, pred: str, target: str, min_stocks: int = MIN_STOCKS) -> float:
    """Mean over scored days of the daily cross-sectional sign-agreement share."""
    return _to_float(daily_hit_rate(df, pred, target, min_stocks)["hit_rate"].mean())


def bucket_expr(col: str, q: int) -> pl.Expr:
    """Per-day quantile bucket 1..q of `col` (must be used inside a per-day context, e.g. `.over("Date")`)."""
    r = pl.col(col).rank("average")
    return ((((r - 0.5) / pl.len()) * q).floor().cast(pl.Int32) + 1).clip(1, q)


def daily_quantile_returns(df: pl.DataFrame | pl.LazyFrame, pred: str, target: str, q: int = 5,
                           min_stocks: int | None = None) -> pl.DataFrame:
    """Per scored day and bucket: Date, quantile (1 = lowest prediction), ret (mean target), n."""
    min_stocks = max(q, MIN_STOCKS) if min_stocks is None else min_stocks
    lf = _pairs(df, pred, target)
    ok_days = lf.group_by("Date").agg(ok=_scored(min_stocks)).filter(pl.col("ok")).select("Date")
    return (lf.join(ok_days, on="Date", how="semi")
            .with_columns(quantile=bucket_expr("p", q).over("Date"))
            .group_by("Date", "quantile")
            .agg(ret=pl.col("y").mean(), n=pl.len().cast(pl.UInt32))
            .sort("Date", "quantile").collect())


def quantile_returns(df: pl.DataFrame | pl.LazyFrame, pred: str, target: str, q: int = 5) -> pl.DataFrame:
    """quantile, mean_return (mean over days of the bucket's mean target), std, n_days; bucket 1 = lowest."""
    return (daily_quantile_returns(df, pred, target, q)
            .group_by("quantile")
            .agg(mean_return=pl.col("ret").mean(), std=pl.col("ret").std(), n_days=pl.len().cast(pl.UInt32))
            .sort("quantile"))


def daily_spread(df: pl.DataFrame | pl.LazyFrame, pred: str, target: str, q: int = 5) -> pl.DataFrame:
    """Per scored day: Date, spread = mean target of the top bucket − that of the bottom bucket."""
    dq = daily_quantile_returns(df, pred, target, q)
    top = dq.filter(pl.col("quantile") == q).select("Date", top="ret")
    bot = dq.filter(pl.col("quantile") == 1).select("Date", bottom="ret")
    return top.join(bot, on="Date").select("Date", spread=pl.col("top") - pl.col("bottom")).sort("Date")


def top_bottom_spread(df: pl.DataFrame | pl.LazyFrame, pred: str, target: str, q: int = 5) -> float:
    """Mean over days of the top-minus-bottom bucket return."""
    return _to_float(daily_spread(df, pred, target, q)["spread"].mean())


def evaluate(df: pl.DataFrame | pl.LazyFrame, horizons: Iterable[int], pred_fmt: str = "pred_{h}d",
             target_fmt: str = "target_{h}d", min_stocks: int = MIN_STOCKS, q: int = 5) -> dict[str, dict]:
    """Per horizon (key str(h)): summarize_ic(daily_ic) + hit_rate + top_bottom_spread."""
    lf = _frame(df)
    horizons = [int(h) for h in horizons]
    _require(lf, [c for h in horizons for c in (pred_fmt.format(h=h), target_fmt.format(h=h))])
    data = lf.collect() if isinstance(df, pl.LazyFrame) else df
    out: dict[str, dict] = {}
    for h in horizons:
        p, y = pred_fmt.format(h=h), target_fmt.format(h=h)
        res = summarize_ic(daily_ic(data, p, y, min_stocks))
        res["hit_rate"] = hit_rate(data, p, y, min_stocks)
        res["top_bottom_spread"] = top_bottom_spread(data, p, y, q)
        out[str(h)] = res
    return out


def per_period(daily: pl.DataFrame, period: str = "year") -> pl.DataFrame:
    """Summary of a daily IC table per calendar year ("2021") or month ("2021-03"): period, n_days and the stats."""
    fmt = {"year": "%Y", "month": "%Y-%m"}.get(period)
    if fmt is None:
        raise DataError(f"per_period: period must be 'year' or 'month', got {period!r}")
    _require(daily.lazy(), ["Date", "ic", "rank_ic"], "daily IC table")
    return (daily.lazy()
            .group_by(period=pl.col("Date").dt.strftime(fmt))
            .agg(n_days=pl.len().cast(pl.UInt32), *_stats(pl.col("ic"), "ic"), *_stats(pl.col("rank_ic"), "rank_ic"))
            .sort("period").collect())


def paired_comparison(daily_a: pl.DataFrame, daily_b: pl.DataFrame, col: str = "rank_ic") -> dict:
    """Does a beat b? Mean daily difference of `col` on the common days with its t-stat and two-sided p-value."""
    for name, d in (("a", daily_a), ("b", daily_b)):
        _require(d.lazy(), ["Date", col], f"paired_comparison daily_{name}")
    j = (daily_a.select("Date", a=pl.col(col)).join(daily_b.select("Date", b=pl.col(col)), on="Date")
         .drop_nulls().with_columns(d=pl.col("a") - pl.col("b")))
    n = j.height
    row = j.select(mean_a=pl.col("a").mean(), mean_b=pl.col("b").mean(), mean_diff=pl.col("d").mean(),
                   std_diff=pl.col("d").std(), win_share=(pl.col("d") > 0).mean()).row(0, named=True)
    out = {k: _to_float(v) for k, v in row.items()}
    sd = out["std_diff"]
    t = out["mean_diff"] / sd * math.sqrt(n) if n > 1 and sd > 0 else float("nan")
    out["t_stat"] = t
    out["p_value"] = _p_value(t, n - 1)
    out["n_days"] = n
    return out


def _p_value(t: float, dof: int) -> float:
    if not math.isfinite(t) or dof < 1:
        return float("nan")
    from scipy import stats

    return float(2.0 * stats.t.sf(abs(t), dof))
