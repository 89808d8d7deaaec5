"""The one evaluation module: cross-sectional prediction metrics shared by training, baseline, backtest and report.

Definitions (each metric has exactly one):

- **Pairs.** For a day, the (prediction, target) pairs of that day's stocks; a pair with a null or NaN on either side is
  dropped (pairwise). A day is *scored* when it has at least ``min_stocks`` (default 5) pairs and the target varies
  across them (max > min); other days are excluded from every daily series. A scored day whose prediction does not
  vary (a constant, collapsed predictor) has IC = RankIC = 0 and is counted (``constant`` in the daily table,
  ``n_constant_days`` in the summary): a predictor that says nothing scores nothing, it is not left out.
- **IC** (daily): Pearson correlation of prediction and target over the day's pairs.
- **RankIC** (daily): Spearman correlation = Pearson correlation of the within-day average ranks (ties share the
  average rank).
- **Summary** of a daily series x over n scored days: ``mean``, ``std`` (sample, ddof=1), ``ICIR = mean / std``,
  ``pos_share`` = share of days with x > 0, and ``t-stat = mean / se`` (HAC, below); ``tstat_naive = mean / std · √n``
  (the i.i.d. figure, kept for comparison only). Undefined values are NaN.
- **t-stats.** ``target_{h}d`` windows of consecutive days overlap by h − 1 sessions, so daily ICs are
  autocorrelated and the i.i.d. standard error is too small. Every t-stat here (mean IC, paired difference, the
  backtest's mean net return, per fold and per period, the IC-decay bands) uses one of two HAC standard errors:

  - **h = 1** (and series of non-overlapping periods): **Newey–West**, Bartlett weights,
    se² = (γ₀ + 2 Σ_{j=1..L} (1 − j/(L+1)) γ_j) / n, γ_j = (1/n) Σ_t (x_t − x̄)(x_{t−j} − x̄) (no small-sample
    correction), L = floor(4 · (n/100)^(2/9)) capped at n − 1; reference Student t with n − 1 degrees of freedom.
  - **h > 1**: **EWC** (equal-weighted cosine, Lazarus–Lu–Stock–Watson 2018), se² = (1/B) Σ_{j=1..B} Λ_j² / n,
    Λ_j = √(2/n) Σ_t x_t cos(π j (t − ½) / n), with **B = floor(0.4 · n / h)** and reference Student t with B
    degrees of freedom (fixed-b; B small against n / h keeps the cosines below the overlap's frequency). Newey–West
    with L = h − 1 captures only about two thirds of the variance of a mean of overlapping h-day labels: in a null
    simulation (157 days, 50 stocks, persistent predictions, no signal) it rejected 11–12 % (h = 5) and 15–19 %
    (h = 20) of nominal-5 % tests; EWC rejected 4–6.5 % at n ∈ {60, 157, 250}, h ∈ {2, 5, 10, 20}, with more power
    than the t of non-overlapping days averaged over the h offsets (tests/unit/test_tstat_size.py). B = 0: no t.

  Every dict with a t-stat says ``tstat_method`` ("newey_west" or "ewc"), ``hac_lag`` (the Newey–West lag; None
  for EWC) and ``tstat_dof`` (the reference t's degrees of freedom: n − 1, or B).
- **Hit rate**: per day, the share of pairs whose prediction and target fall on the same side of that day's
  cross-sectional median (pairs sitting exactly on either median are left out); the hit rate is the mean over scored
  days. Cross-sectional on purpose: a ranking model's level carries no information, so 0.5 is chance.
- **Quantile buckets**: per day, bucket = floor((average rank − 0.5) / n · q) + 1 ∈ 1..q by prediction (q = 5:
  quintiles; ties share a bucket). **Quantile return** = mean over days of the bucket's mean target.
- **Top/bottom spread**: mean over days of (mean target of the top bucket − mean target of the bottom bucket).
- **Paired comparison** of two daily series a, b on the days both have: d = a − b, ``mean_diff``, ``t_stat =
  mean(d) / se(d)`` (the t-stat above, for the horizon), two-sided p-value from Student's t with ``tstat_dof``
  degrees of freedom. Compare predictors only on identical (Date, Code) rows: `align_rows` first, then `daily_ic`
  of each.

Everything is Polars, vectorised over days with ``group_by("Date")``; there is no Python loop over days.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import polars as pl

from gogooku3.core import columns as C
from gogooku3.core.errors import DataError, SchemaError
from gogooku3.core.scalars import as_float

MIN_STOCKS = 5
TSTAT_METHOD = "newey_west"  # h = 1
TSTAT_METHOD_OVERLAP = "ewc"  # h > 1: overlapping labels
_DAILY_SCHEMA = {C.DATE: pl.Date, "n": pl.UInt32, "ic": pl.Float64, "rank_ic": pl.Float64, "constant": pl.Boolean}


def _frame(df: pl.DataFrame | pl.LazyFrame) -> pl.LazyFrame:
    return df.lazy() if isinstance(df, pl.DataFrame) else df


def _require(lf: pl.LazyFrame, cols: Iterable[str], what: str = "predictions") -> None:
    schema = lf.collect_schema()
    missing = [c for c in cols if c not in schema]
    if missing:
        raise SchemaError(f"{what}: missing column(s) {', '.join(missing)} (has {', '.join(schema.names()[:12])})")


def _to_float(v) -> float:
    return float("nan") if v is None else float(v)


# ---- Newey–West --------------------------------------------------------------------------------------------------
def hac_lag(n: int, horizon: int = 1) -> int:
    """The bandwidth L = max(h − 1, floor(4 · (n/100)^(2/9))), at most n − 1 (see the module docstring)."""
    if n < 2:
        return 0
    auto = math.floor(4.0 * (n / 100.0) ** (2.0 / 9.0))
    return int(min(max(int(horizon) - 1, auto), n - 1))


def newey_west_se(x: np.ndarray, lag: int) -> float:
    """HAC standard error of the mean of `x` with Bartlett weights over `lag` autocovariances (no df correction)."""
    x = np.asarray(x, dtype=np.float64)
    n = x.size
    if n < 2:
        return float("nan")
    u = x - x.mean()
    s = float(u @ u) / n
    for j in range(1, min(int(lag), n - 1) + 1):
        s += 2.0 * (1.0 - j / (lag + 1.0)) * float(u[j:] @ u[:-j]) / n
    return math.sqrt(s / n) if s > 0 else float("nan")


def tstat_method(horizon: int) -> str:
    """The t-stat of a series of `horizon`-day labels: "newey_west" at h = 1, "ewc" beyond (module docstring)."""
    return TSTAT_METHOD_OVERLAP if int(horizon) > 1 else TSTAT_METHOD


def ewc_dof(n: int, horizon: int) -> int:
    """EWC's B = floor(0.4 · n / h): the cosines kept, and the reference t's degrees of freedom (0: too few days)."""
    return (2 * max(int(n), 0)) // (5 * max(int(horizon), 1))


def ewc_se(x: np.ndarray, b: int) -> float:
    """Equal-weighted-cosine standard error of the mean of `x` over the `b` lowest cosines (module docstring)."""
    x = np.asarray(x, dtype=np.float64)
    n = x.size
    if b < 1 or n < 2:
        return float("nan")
    t = np.arange(n) + 0.5
    basis = np.cos(np.pi * np.outer(np.arange(1, b + 1), t) / n)  # orthogonal to the constant: no demeaning
    lam = math.sqrt(2.0 / n) * (basis @ x)
    lrv = float(lam @ lam) / b
    return math.sqrt(lrv / n) if lrv > 0 else float("nan")


def mean_tstat(x: np.ndarray | pl.Series, horizon: int = 1) -> dict:
    """mean, tstat (Newey–West at h = 1, EWC at h > 1), tstat_naive (mean/std·√n), hac_lag, tstat_method,
    tstat_dof, n (see the module docstring)."""
    a = np.asarray(x.drop_nulls().to_numpy() if isinstance(x, pl.Series) else x, dtype=np.float64)
    a = a[np.isfinite(a)]
    n = a.size
    mean = float(a.mean()) if n else float("nan")
    sd = float(a.std(ddof=1)) if n > 1 else float("nan")
    lag: int | None
    if tstat_method(horizon) == TSTAT_METHOD_OVERLAP:
        method, lag, dof = TSTAT_METHOD_OVERLAP, None, ewc_dof(n, horizon)
        se = ewc_se(a, dof)
    else:
        method, lag, dof = TSTAT_METHOD, hac_lag(n, horizon), max(n - 1, 0)
        se = newey_west_se(a, lag)
    t = mean / se if n > 1 and math.isfinite(se) and se > 0 else float("nan")
    naive = mean / sd * math.sqrt(n) if n > 1 and sd > 0 else float("nan")
    return {
        "mean": mean,
        "tstat": t,
        "tstat_naive": naive,
        "hac_lag": lag,
        "tstat_method": method,
        "tstat_dof": dof,
        "n": n,
    }


def t_quantile(p: float, dof: int) -> float:
    """The `p` quantile of Student's t with `dof` degrees of freedom (NaN below 1)."""
    if dof < 1:
        return float("nan")
    from scipy import stats

    return float(stats.t.ppf(p, dof))


# ---- daily IC ----------------------------------------------------------------------------------------------------
def _pairs(df: pl.DataFrame | pl.LazyFrame, pred: str, target: str) -> pl.LazyFrame:
    """Date, p, y with null/NaN pairs dropped (both cast to Float64)."""
    lf = _frame(df)
    _require(lf, [C.DATE, pred, target])
    return lf.select(
        C.DATE,
        pl.col(pred).cast(pl.Float64).fill_nan(None).alias("p"),
        pl.col(target).cast(pl.Float64).fill_nan(None).alias("y"),
    ).drop_nulls(["p", "y"])


def _scored(min_stocks: int) -> pl.Expr:
    """A day counts: enough pairs and a target that varies (the prediction may be constant: IC 0)."""
    return (pl.len() >= min_stocks) & (pl.col("y").max() > pl.col("y").min())


def _varies(col: str = "p") -> pl.Expr:
    return pl.col(col).max() > pl.col(col).min()


def daily_ic(df: pl.DataFrame | pl.LazyFrame, pred: str, target: str, min_stocks: int = MIN_STOCKS) -> pl.DataFrame:
    """Per scored day: Date, n (pairs), ic (Pearson), rank_ic (Spearman, average ranks), constant (the prediction
    did not vary: ic = rank_ic = 0), sorted by Date."""
    out = (
        _pairs(df, pred, target)
        .group_by(C.DATE)
        .agg(
            n=pl.len().cast(pl.UInt32),
            ic=pl.corr("p", "y"),
            rank_ic=pl.corr(pl.col("p").rank("average"), pl.col("y").rank("average")),
            constant=~_varies("p"),
            ok=_scored(min_stocks),
        )
        .filter(pl.col("ok"))
        .with_columns(pl.when(pl.col("constant")).then(0.0).otherwise(pl.col(c)).alias(c) for c in ("ic", "rank_ic"))
        .select(list(_DAILY_SCHEMA))
        .sort(C.DATE)
        .collect()
    )
    return out.cast({k: v for k, v in _DAILY_SCHEMA.items() if k != C.DATE})


def _stats(x: pl.Expr, prefix: str) -> list[pl.Expr]:
    """mean, std, IR and pos_share as expressions (the t-stats come from `mean_tstat`)."""
    mean, std = x.mean(), x.std(ddof=1)
    ratio = pl.when(std > 0).then(mean / std).otherwise(None)
    return [
        mean.alias(f"{prefix}_mean"),
        std.alias(f"{prefix}_std"),
        ratio.alias(f"{prefix}ir"),
        (x > 0).mean().alias(f"{prefix}_pos_share"),
    ]


def _tstats(daily: pl.DataFrame, horizon: int) -> dict:
    out: dict = {}
    t: dict = {}
    for col in ("ic", "rank_ic"):
        t = mean_tstat(daily[col], horizon)
        out[f"{col}_tstat"], out[f"{col}_tstat_naive"] = t["tstat"], t["tstat_naive"]
        out[f"{col}_p_value"] = _p_value(t["tstat"], t["tstat_dof"])
    return {**out, **{k: t[k] for k in ("tstat_method", "hac_lag", "tstat_dof")}}


def summarize_ic(daily: pl.DataFrame, horizon: int = 1) -> dict:
    """ic_mean, ic_std, icir, ic_tstat, ic_tstat_naive, ic_p_value (two-sided, Student t(tstat_dof)), ic_pos_share,
    the same for rank_ic, n_days, n_constant_days, tstat_method, hac_lag and tstat_dof (see the module docstring);
    `horizon` picks the t-stat."""
    _require(daily.lazy(), ["ic", "rank_ic"], "daily IC table")
    row = daily.select(*_stats(pl.col("ic"), "ic"), *_stats(pl.col("rank_ic"), "rank_ic")).row(0, named=True)
    out = {k: _to_float(v) for k, v in row.items()}
    out.update(_tstats(daily, horizon))
    out["n_days"] = daily.height
    out["n_constant_days"] = int(daily["constant"].sum()) if "constant" in daily.columns else 0
    return out


def daily_hit_rate(
    df: pl.DataFrame | pl.LazyFrame, pred: str, target: str, min_stocks: int = MIN_STOCKS
) -> pl.DataFrame:
    """Per scored day with a varying prediction: Date, hit_rate (share of pairs on the same side of the medians)."""
    sp = (pl.col("p") - pl.col("p").median()).sign()
    sy = (pl.col("y") - pl.col("y").median()).sign()
    valid = (sp != 0) & (sy != 0)
    return (
        _pairs(df, pred, target)
        .group_by(C.DATE)
        .agg(
            hit_rate=((sp == sy) & valid).sum() / valid.sum(), ok=_scored(min_stocks) & _varies("p") & (valid.sum() > 0)
        )
        .filter(pl.col("ok"))
        .drop("ok")
        .sort(C.DATE)
        .collect()
    )


def hit_rate(df: pl.DataFrame | pl.LazyFrame, pred: str, target: str, min_stocks: int = MIN_STOCKS) -> float:
    """Mean over scored days of the daily cross-sectional sign-agreement share."""
    return _to_float(daily_hit_rate(df, pred, target, min_stocks)["hit_rate"].mean())


def bucket_expr(col: str, q: int) -> pl.Expr:
    """Per-day quantile bucket 1..q of `col` (must be used inside a per-day context, e.g. `.over("Date")`)."""
    r = pl.col(col).rank("average")
    return ((((r - 0.5) / pl.len()) * q).floor().cast(pl.Int32) + 1).clip(1, q)


def daily_quantile_returns(
    df: pl.DataFrame | pl.LazyFrame, pred: str, target: str, q: int = 5, min_stocks: int | None = None
) -> pl.DataFrame:
    """Per scored day with a varying prediction and bucket: Date, quantile (1 = lowest prediction), ret (mean
    target), n."""
    min_stocks = max(q, MIN_STOCKS) if min_stocks is None else min_stocks
    lf = _pairs(df, pred, target)
    ok_days = lf.group_by(C.DATE).agg(ok=_scored(min_stocks) & _varies("p")).filter(pl.col("ok")).select(C.DATE)
    return (
        lf.join(ok_days, on=C.DATE, how="semi")
        .with_columns(quantile=bucket_expr("p", q).over(C.DATE))
        .group_by(C.DATE, "quantile")
        .agg(ret=pl.col("y").mean(), n=pl.len().cast(pl.UInt32))
        .sort(C.DATE, "quantile")
        .collect()
    )


def quantile_returns(df: pl.DataFrame | pl.LazyFrame, pred: str, target: str, q: int = 5) -> pl.DataFrame:
    """quantile, mean_return (mean over days of the bucket's mean target), std, n_days; bucket 1 = lowest."""
    return (
        daily_quantile_returns(df, pred, target, q)
        .group_by("quantile")
        .agg(mean_return=pl.col("ret").mean(), std=pl.col("ret").std(), n_days=pl.len().cast(pl.UInt32))
        .sort("quantile")
    )


def daily_spread(df: pl.DataFrame | pl.LazyFrame, pred: str, target: str, q: int = 5) -> pl.DataFrame:
    """Per scored day: Date, spread = mean target of the top bucket − that of the bottom bucket."""
    dq = daily_quantile_returns(df, pred, target, q)
    top = dq.filter(pl.col("quantile") == q).select(C.DATE, top="ret")
    bot = dq.filter(pl.col("quantile") == 1).select(C.DATE, bottom="ret")
    return top.join(bot, on=C.DATE).select(C.DATE, spread=pl.col("top") - pl.col("bottom")).sort(C.DATE)


def top_bottom_spread(df: pl.DataFrame | pl.LazyFrame, pred: str, target: str, q: int = 5) -> float:
    """Mean over days of the top-minus-bottom bucket return."""
    return _to_float(daily_spread(df, pred, target, q)["spread"].mean())


def evaluate(
    df: pl.DataFrame | pl.LazyFrame,
    horizons: Iterable[int],
    pred_fmt: str = "pred_{h}d",
    target_fmt: str = "target_{h}d",
    min_stocks: int = MIN_STOCKS,
    q: int = 5,
) -> dict[str, dict]:
    """Per horizon (key str(h)): summarize_ic(daily_ic, h) + hit_rate + top_bottom_spread."""
    lf = _frame(df)
    horizons = [int(h) for h in horizons]
    _require(lf, [c for h in horizons for c in (pred_fmt.format(h=h), target_fmt.format(h=h))])
    data = lf.collect() if isinstance(df, pl.LazyFrame) else df
    out: dict[str, dict] = {}
    for h in horizons:
        p, y = pred_fmt.format(h=h), target_fmt.format(h=h)
        res = summarize_ic(daily_ic(data, p, y, min_stocks), h)
        res["hit_rate"] = hit_rate(data, p, y, min_stocks)
        res["top_bottom_spread"] = top_bottom_spread(data, p, y, q)
        out[str(h)] = res
    return out


def per_period(daily: pl.DataFrame, period: str = "year", horizon: int = 1) -> pl.DataFrame:
    """Summary of a daily IC table per calendar year ("2021") or month ("2021-03"): period, n_days, the stats with
    t-stats of `horizon` (each period's own n), tstat_method, hac_lag, tstat_dof."""
    fmt = {"year": "%Y", "month": "%Y-%m"}.get(period)
    if fmt is None:
        raise DataError(f"per_period: period must be 'year' or 'month', got {period!r}")
    _require(daily.lazy(), [C.DATE, "ic", "rank_ic"], "daily IC table")
    tagged = daily.sort(C.DATE).with_columns(period=pl.col(C.DATE).dt.strftime(fmt))
    base = tagged.group_by("period").agg(
        *_stats(pl.col("ic"), "ic"), *_stats(pl.col("rank_ic"), "rank_ic"), n_days=pl.len().cast(pl.UInt32)
    )
    rows = [
        {"period": part["period"][0], **_tstats(part, horizon)}
        for part in tagged.partition_by("period", maintain_order=True)
    ]
    schema = {
        "period": pl.String,
        "ic_tstat": pl.Float64,
        "ic_tstat_naive": pl.Float64,
        "ic_p_value": pl.Float64,
        "rank_ic_tstat": pl.Float64,
        "rank_ic_tstat_naive": pl.Float64,
        "rank_ic_p_value": pl.Float64,
        "tstat_method": pl.String,
        "hac_lag": pl.Int64,
        "tstat_dof": pl.Int64,
    }
    return base.join(pl.DataFrame(rows, schema=schema), on="period", how="left").sort("period")


def paired_comparison(daily_a: pl.DataFrame, daily_b: pl.DataFrame, col: str = "rank_ic", horizon: int = 1) -> dict:
    """Does a beat b? Mean daily difference of `col` on the common days with its t-stat (`mean_tstat` of
    `horizon`) and two-sided p-value; pass daily tables computed on identical rows (`align_rows`)."""
    for name, d in (("a", daily_a), ("b", daily_b)):
        _require(d.lazy(), [C.DATE, col], f"paired_comparison daily_{name}")
    j = (
        daily_a.select(C.DATE, a=pl.col(col))
        .join(daily_b.select(C.DATE, b=pl.col(col)), on=C.DATE)
        .drop_nulls()
        .with_columns(d=pl.col("a") - pl.col("b"))
    )
    row = j.select(
        mean_a=pl.col("a").mean(),
        mean_b=pl.col("b").mean(),
        mean_diff=pl.col("d").mean(),
        std_diff=pl.col("d").std(),
        win_share=(pl.col("d") > 0).mean(),
    ).row(0, named=True)
    out: dict[str, Any] = {k: _to_float(v) for k, v in row.items()}
    t = mean_tstat(j["d"], horizon)
    out.update(
        t_stat=t["tstat"],
        t_stat_naive=t["tstat_naive"],
        p_value=_p_value(t["tstat"], t["tstat_dof"]),
        tstat_method=t["tstat_method"],
        hac_lag=t["hac_lag"],
        tstat_dof=t["tstat_dof"],
        n_days=j.height,
    )
    return out


def _p_value(t: float, dof: int) -> float:
    if not math.isfinite(t) or dof < 1:
        return float("nan")
    from scipy import stats

    return float(2.0 * stats.t.sf(abs(t), dof))


# ---- identical rows ------------------------------------------------------------------------------------------------
def align_rows(
    frames: Mapping[str, pl.DataFrame | None], horizons: Iterable[int]
) -> tuple[dict[str, pl.DataFrame], dict]:
    """Restrict every predictor's frame to the same (Date, Code) rows: those present in every frame with a non-null,
    non-NaN prediction of every horizon in `horizons` that the frame carries. None frames are ignored.

    Returns the restricted frames and the row accounting: ``n_common`` and per frame ``rows``, ``kept``,
    ``excluded_null_prediction`` (its own prediction missing) and ``excluded_absent_in`` (other frame -> rows of this
    frame whose key that frame lacks or leaves unpredicted).
    """
    hs = [int(h) for h in horizons]
    given: dict[str, pl.DataFrame] = {k: v for k, v in frames.items() if v is not None}
    keys: dict[str, pl.DataFrame] = {}
    null_pred: dict[str, int] = {}
    for name, df in given.items():
        _require(df.lazy(), [C.DATE, C.CODE], name)
        preds = [C.pred(h) for h in hs if C.pred(h) in df.columns]
        if not preds:
            raise SchemaError(f"{name}: none of {', '.join(C.pred(h) for h in hs)} to compare")
        ok = pl.all_horizontal(pl.col(p).cast(pl.Float64).fill_nan(None).is_not_null() for p in preds)
        k = df.filter(ok).select(pl.col(C.DATE).cast(pl.Date), pl.col(C.CODE).cast(pl.String)).unique()
        keys[name] = k
        null_pred[name] = df.height - df.filter(ok).height
    common: pl.DataFrame | None = None
    for k in keys.values():
        common = k if common is None else common.join(k, on=[C.DATE, C.CODE], how="semi")
    report: dict = {"n_common": 0 if common is None else common.height, "horizons": hs, "frames": {}}
    out: dict[str, pl.DataFrame] = {}
    for name, df in given.items():
        assert common is not None  # one key table per given frame
        d = df.with_columns(pl.col(C.DATE).cast(pl.Date), pl.col(C.CODE).cast(pl.String))
        out[name] = d.join(common, on=[C.DATE, C.CODE], how="semi")
        absent = {
            other: keys[name].join(keys[other], on=[C.DATE, C.CODE], how="anti").height
            for other in given
            if other != name
        }
        report["frames"][name] = {
            "rows": df.height,
            "kept": out[name].height,
            "excluded_null_prediction": null_pred[name],
            "excluded_absent_in": absent,
        }
    return out, report


# ---- tear-sheet figures ------------------------------------------------------------------------------------------
def ic_decay(evals: Mapping[str, dict], z: float = 1.96) -> pl.DataFrame:
    """IC decay over horizons from an `evaluate` result: horizon, rank_ic_mean, se (|mean / t|), lo, hi (mean ± q·se:
    q = z for a Newey–West t, the Student t(tstat_dof) quantile of the same coverage for EWC), tstat_method,
    hac_lag, tstat_dof, n_days."""
    from scipy import stats

    coverage = float(stats.norm.cdf(z))  # upper quantile level of the two-sided band
    rows = []
    for h, s in sorted(evals.items(), key=lambda kv: int(kv[0])):
        mean, t = _to_float(s.get("rank_ic_mean")), _to_float(s.get("rank_ic_tstat"))
        se = abs(mean / t) if math.isfinite(t) and t != 0 else float("nan")
        method = s.get("tstat_method") or TSTAT_METHOD
        dof = s.get("tstat_dof")
        q = z if method == TSTAT_METHOD else t_quantile(coverage, int(dof or 0))
        rows.append(
            {
                "horizon": int(h),
                "rank_ic_mean": mean,
                "se": se,
                "lo": mean - q * se,
                "hi": mean + q * se,
                "tstat_method": method,
                "hac_lag": s.get("hac_lag"),
                "tstat_dof": dof,
                "n_days": int(s.get("n_days") or 0),
            }
        )
    schema = {
        "horizon": pl.Int64,
        "rank_ic_mean": pl.Float64,
        "se": pl.Float64,
        "lo": pl.Float64,
        "hi": pl.Float64,
        "tstat_method": pl.String,
        "hac_lag": pl.Int64,
        "tstat_dof": pl.Int64,
        "n_days": pl.Int64,
    }
    return pl.DataFrame(rows, schema=schema)


def ic_by_group(
    df: pl.DataFrame | pl.LazyFrame, pred: str, target: str, group: str, horizon: int = 1, min_stocks: int = MIN_STOCKS
) -> pl.DataFrame:
    """RankIC within each group (e.g. the S33 sector): per group, the daily RankIC over the group's stocks (`daily_ic`
    rules: days with fewer than `min_stocks` pairs are not scored), summarised as group, rank_ic_mean, rank_ic_tstat
    (`mean_tstat` of `horizon`), tstat_method, hac_lag, tstat_dof, n_days, avg_names; sorted by rank_ic_mean."""
    lf = _frame(df)
    _require(lf, [C.DATE, pred, target, group])
    data = lf.select(C.DATE, pred, target, pl.col(group).cast(pl.String)).collect()
    rows = []
    for (g,), part in data.partition_by(group, as_dict=True, maintain_order=True).items():
        if g is None:
            continue
        d = daily_ic(part, pred, target, min_stocks)
        if d.height == 0:
            continue
        t = mean_tstat(d["rank_ic"], horizon)
        rows.append(
            {
                "group": str(g),
                "rank_ic_mean": t["mean"],
                "rank_ic_tstat": t["tstat"],
                "tstat_method": t["tstat_method"],
                "hac_lag": t["hac_lag"],
                "tstat_dof": t["tstat_dof"],
                "n_days": d.height,
                "avg_names": as_float(d["n"].mean()),
            }
        )
    schema = {
        "group": pl.String,
        "rank_ic_mean": pl.Float64,
        "rank_ic_tstat": pl.Float64,
        "tstat_method": pl.String,
        "hac_lag": pl.Int64,
        "tstat_dof": pl.Int64,
        "n_days": pl.Int64,
        "avg_names": pl.Float64,
    }
    return pl.DataFrame(rows, schema=schema).sort("rank_ic_mean", descending=True)


def _lagged_ranks(df: pl.DataFrame | pl.LazyFrame, pred: str, lag: int) -> pl.LazyFrame:
    """Date, Code, r (the day's rank as a fraction in (0, 1]), r_prev (the same stock's `lag` prediction days
    earlier; stocks on both days only)."""
    lf = _frame(df)
    _require(lf, [C.DATE, C.CODE, pred])
    base = (
        lf.select(C.DATE, pl.col(C.CODE).cast(pl.String), pl.col(pred).cast(pl.Float64).fill_nan(None).alias("p"))
        .drop_nulls("p")
        .with_columns(r=pl.col("p").rank("average").over(C.DATE) / pl.len().over(C.DATE))
    )
    days = base.select(C.DATE).unique().sort(C.DATE).with_row_index("k")
    ranked = base.join(days, on=C.DATE)
    prev = ranked.select(C.CODE, (pl.col("k") + lag).alias("k"), pl.col("r").alias("r_prev"))
    return ranked.join(prev, on=[C.CODE, "k"], how="inner")


def rank_autocorrelation(
    df: pl.DataFrame | pl.LazyFrame, pred: str, lag: int = 1, min_stocks: int = MIN_STOCKS
) -> pl.DataFrame:
    """Signal stability: per day, the Spearman correlation of the day's prediction ranks with the same stocks' ranks
    `lag` prediction days earlier (alphalens' factor rank autocorrelation). Date, autocorr, n."""
    return (
        _lagged_ranks(df, pred, lag)
        .group_by(C.DATE)
        .agg(
            autocorr=pl.corr(pl.col("r").rank("average"), pl.col("r_prev").rank("average")), n=pl.len().cast(pl.UInt32)
        )
        .filter(pl.col("n") >= min_stocks)
        .sort(C.DATE)
        .collect()
    )


def quantile_turnover(df: pl.DataFrame | pl.LazyFrame, pred: str, q: int = 5, lag: int = 1) -> pl.DataFrame:
    """Signal turnover: per day, the share of the top (and of the bottom) prediction bucket's names that were not in
    that bucket `lag` prediction days earlier (alphalens' quantile turnover; `bucket_expr` buckets). Date, top,
    bottom."""
    lf = _frame(df)
    _require(lf, [C.DATE, C.CODE, pred])
    b = (
        lf.select(C.DATE, pl.col(C.CODE).cast(pl.String), pl.col(pred).cast(pl.Float64).fill_nan(None).alias("p"))
        .drop_nulls("p")
        .with_columns(bucket=bucket_expr("p", q).over(C.DATE))
    )
    days = b.select(C.DATE).unique().sort(C.DATE).with_row_index("k")
    b = b.join(days, on=C.DATE)
    prev = b.select(C.CODE, (pl.col("k") + lag).alias("k"), pl.col("bucket").alias("bucket_prev"))
    j = b.join(prev, on=[C.CODE, "k"], how="left").filter(pl.col("k") >= lag)

    def new_share(bucket: int) -> pl.Expr:
        inside = pl.col("bucket") == bucket
        return (inside & (pl.col("bucket_prev") != bucket).fill_null(True)).sum() / inside.sum()

    return j.group_by(C.DATE).agg(top=new_share(q), bottom=new_share(1)).sort(C.DATE).collect()


def cumulative_quantile_returns(df: pl.DataFrame | pl.LazyFrame, pred: str, target: str, q: int = 5) -> pl.DataFrame:
    """Per prediction bucket, the compounded growth of 1 invested each day in the bucket's equal-weight mean target:
    Date, quantile, cum_return (= Π(1 + ret) − 1). Meaningful for a 1-day target (longer ones overlap)."""
    return (
        daily_quantile_returns(df, pred, target, q)
        .sort("quantile", C.DATE)
        .with_columns(cum_return=(1.0 + pl.col("ret")).cum_prod().over("quantile") - 1.0)
        .select(C.DATE, "quantile", "cum_return")
    )


def normal_qq(x: pl.Series | np.ndarray) -> pl.DataFrame:
    """theoretical, sample: the sorted finite values of `x` against the normal quantiles of the same mean and std at
    plotting positions (i − 0.5) / n (a normal Q-Q plot's points)."""
    from scipy import stats

    v = np.sort(np.asarray(pl.Series(x).drop_nulls().cast(pl.Float64).to_numpy(), dtype=float))
    v = v[np.isfinite(v)]
    n = v.size
    if n < 2:
        return pl.DataFrame({"theoretical": [], "sample": []}, schema={"theoretical": pl.Float64, "sample": pl.Float64})
    z = stats.norm.ppf((np.arange(1, n + 1) - 0.5) / n)
    return pl.DataFrame({"theoretical": v.mean() + v.std(ddof=1) * z, "sample": v})


def distribution(x: pl.Series) -> dict[str, Any]:
    """n, mean, std, skew, excess kurtosis of the non-null values of `x` (a daily IC series' shape)."""
    v = x.drop_nulls().cast(pl.Float64)
    n = v.len()
    return {
        "n": n,
        "mean": as_float(v.mean()) if n else float("nan"),
        "std": as_float(v.std()) if n > 1 else float("nan"),
        "skew": as_float(v.skew()) if n > 2 else float("nan"),
        "excess_kurtosis": as_float(v.kurtosis()) if n > 3 else float("nan"),
    }


def empty_columns(lf: pl.LazyFrame, cols: Iterable[str]) -> list[str]:
    """The columns of `cols` (those `lf` has) with no non-null value: features a model receives but cannot use."""
    have = [c for c in cols if c in lf.collect_schema()]
    if not have:
        return []
    counts = lf.select(pl.col(have).count()).collect().row(0)
    return [c for c, k in zip(have, counts, strict=True) if k == 0]
