"""Cost-aware long/short backtest of a predictions file (Date, Code, pred_{h}d, target_{h}d).

Timing. ``target_{h}d`` at Date t is AdjC(t+lag+h)/AdjC(t+lag) − 1 with lag = ``labels.entry_lag``: the signal is
known after the close of t and the position is entered at the close of t+lag. The label already encodes the entry
lag, so a rebalance on signal date t earns Σ w·target_{h}d(t) with no further shift.

Portfolio. On each rebalance date, among the names with a prediction, a realised target and (optionally) passing the
price/liquidity filter, long the top ``long_fraction`` and short the bottom ``short_fraction`` by prediction (higher
prediction → long; there is no sign-inversion switch). Leg sizes are floor(fraction · N); ties are broken by Code.
Weights are equal within a leg or proportional to |pred − day's median pred| (``weighting: score``); each leg sums
to 1 in gross (long +1, short −1: dollar-neutral, gross exposure 2). ``method: mean_variance`` instead solves a
dollar-neutral mean-variance problem with the cross-sectionally z-scored predictions as expected returns and a
diagonal risk model from a trailing-volatility column (see `_mean_variance_weights`).

Horizon h > 1: the book is rebalanced every h-th prediction date (non-overlapping periods) and each period earns
target_{h}d; the predictions file is assumed to hold consecutive trading days.

Per period: gross = Σ w·target, long = Σ_{long} w·target, short = Σ_{short} |w|·target (gross = long − short),
turnover = Σ|w_t − w_{t−1}| over the union of names with w_{t−1} the previous rebalance's weights (the first
rebalance counts the full build, 2.0), cost = cost_bps · 1e-4 · turnover, net = gross − cost.

Summary over the n periods of net returns r, with P = periods_per_year / h periods a year:
ann_return = mean(r)·P; ann_vol = std(r)·√P; **sharpe = mean(r)/std(r)·√P** (the project's only Sharpe; √252 on
daily net returns for h = 1); sortino = mean(r)/√mean(min(r,0)²)·√P; cagr = Π(1+r)^(P/n) − 1; max_drawdown = min over
t of equity_t / max_{s≤t} equity_s − 1 on the compounded net equity starting at 1 (a negative fraction); calmar =
cagr / |max_drawdown|; win_rate = share of periods with net > 0 (the backtest's hit rate); avg_turnover = mean
turnover; sharpe_tstat = mean(r)/std(r)·√n (is the mean net return distinguishable from 0). Benchmarks: long-only equal-weight top quantile vs equal-weight universe of the eligible names.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import polars as pl

from gogooku3 import columns as C
from gogooku3.errors import ConfigError, DataError, SchemaError, rows_hint
from gogooku3.evaluation import metrics
from gogooku3.io import timestamp, write_json, write_parquet

log = logging.getLogger(__name__)

UNIVERSE_COLUMNS = ("Close", "dollar_volume", "volume_ma_20")


@dataclass
class BacktestConfig:
    """Portfolio settings; mirrors `conf/portfolio/default.yaml` (documented there)."""

    method: str = "long_short"
    horizon: int = 1
    long_fraction: float = 0.2
    short_fraction: float = 0.2
    weighting: str = "equal"
    cost_bps: float = 5.0
    min_names: int = 10
    min_price: float = 0.0
    min_adv: float = 0.0
    quantiles: int = 5
    periods_per_year: int = 252
    vol_column: str = "volatility_20d"
    max_weight: float = 0.1

    @classmethod
    def from_any(cls, cfg: Any = None, **overrides: Any) -> BacktestConfig:
        """From None, a BacktestConfig, a mapping / DictConfig of portfolio keys, or a full config (uses .portfolio)."""
        if isinstance(cfg, BacktestConfig):
            base = asdict(cfg)
        elif cfg is None:
            base = {}
        else:
            d = dict(cfg.get("portfolio", cfg)) if hasattr(cfg, "get") else dict(cfg)
            names = {f.name for f in fields(cls)}
            base = {k: v for k, v in d.items() if k in names}
        base.update(overrides)
        out = cls(**base)
        out.validate()
        return out

    def validate(self) -> None:
        if self.method not in ("long_short", "mean_variance"):
            raise ConfigError(f"portfolio.method must be long_short or mean_variance, got {self.method!r}")
        if self.weighting not in ("equal", "score"):
            raise ConfigError(f"portfolio.weighting must be equal or score, got {self.weighting!r}")
        if not (0 < self.long_fraction <= 0.5 and 0 < self.short_fraction <= 0.5):
            raise ConfigError("portfolio.long_fraction and short_fraction must be in (0, 0.5]")
        if self.cost_bps < 0 or self.min_price < 0 or self.min_adv < 0:
            raise ConfigError("portfolio.cost_bps, min_price and min_adv must be >= 0")
        if int(self.horizon) < 1 or int(self.quantiles) < 2 or int(self.min_names) < 2:
            raise ConfigError("portfolio.horizon >= 1, quantiles >= 2 and min_names >= 2 are required")
        if not 0 < self.max_weight <= 1:
            raise ConfigError("portfolio.max_weight must be in (0, 1]")


@dataclass
class BacktestResult:
    """`daily`: one row per rebalance (Date, n, n_long, n_short, long, short, gross, turnover, cost, net, equity,
    drawdown, top_quantile, universe); `summary`: the figures of the module docstring; `quantiles`: quantile, mean_return."""

    daily: pl.DataFrame
    summary: dict
    quantiles: pl.DataFrame
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"summary": self.summary, "config": self.config,
                "quantile_returns": self.quantiles.to_dicts()}


def _check_input(preds: pl.DataFrame, pred: str, target: str) -> None:
    missing = [c for c in ("Date", "Code", pred, target) if c not in preds.columns]
    if missing:
        raise SchemaError(f"predictions: missing column(s) {', '.join(missing)}; need Date, Code, {pred}, {target}")
    if preds.height == 0:
        raise DataError("predictions: no rows")
    dup = preds.group_by("Date", "Code").len().filter(pl.col("len") > 1)
    if dup.height:
        raise DataError(f"predictions: {dup.height} duplicate (Date, Code) rows, e.g. "
                        + rows_hint(f"{r['Date']} {r['Code']}" for r in dup.head(5).iter_rows(named=True)))
    empty = (preds.group_by("Date").agg(k=pl.col(pred).cast(pl.Float64).fill_nan(None).count())
             .filter(pl.col("k") == 0).sort("Date"))
    if empty.height:
        raise DataError(f"predictions: {empty.height} day(s) without any {pred} value: "
                        + rows_hint(empty["Date"].to_list()))


def universe_filter(columns: list[str], c: BacktestConfig) -> pl.Expr:
    """The price / liquidity filter as a boolean expression (ConfigError when a needed column is absent)."""
    cond = pl.lit(True)
    if c.min_price > 0:
        if "Close" not in columns:
            raise ConfigError("portfolio.min_price > 0 needs a Close column (in the predictions or the dataset)")
        cond &= pl.col("Close") >= c.min_price
    if c.min_adv > 0:
        if "volume_ma_20" in columns and "Close" in columns:
            adv = pl.col("volume_ma_20") * pl.col("Close")
        elif "dollar_volume" in columns:
            adv = pl.col("dollar_volume")
        else:
            raise ConfigError("portfolio.min_adv > 0 needs volume_ma_20 and Close, or dollar_volume "
                              "(in the predictions or the dataset)")
        cond &= adv >= c.min_adv
    return cond


def _eligible(preds: pl.DataFrame, pred: str, target: str, c: BacktestConfig) -> tuple[pl.DataFrame, dict]:
    """Rows with a prediction and a realised target that pass the price/liquidity filter; plus drop counts."""
    lf = preds.lazy().with_columns(p=pl.col(pred).cast(pl.Float64).fill_nan(None),
                                   y=pl.col(target).cast(pl.Float64).fill_nan(None))
    cond = pl.col("p").is_not_null() & pl.col("y").is_not_null() & universe_filter(preds.columns, c)
    notes: dict[str, Any] = {"rows": preds.height}
    cols = ["Date", "Code", "p", "y"] + ([c.vol_column] if c.method == "mean_variance" else [])
    if c.method == "mean_variance" and c.vol_column not in preds.columns:
        raise ConfigError(f"portfolio.method=mean_variance needs the {c.vol_column} column "
                          "(in the predictions or the dataset)")
    out = lf.filter(cond.fill_null(False)).select(cols).sort("Date", "Code").collect()
    notes["rows_eligible"] = out.height
    notes["rows_without_target"] = int(preds[target].cast(pl.Float64).fill_nan(None).null_count())
    return out, notes


def _rebalance_dates(dates: pl.Series, every: int) -> pl.Series:
    u = dates.unique().sort()
    return u.gather_every(every) if every > 1 else u


def side_expr(pred: str, long_fraction: float, short_fraction: float) -> pl.Expr:
    """Per day: 1 for the top floor(long_fraction·N) by `pred`, −1 for the bottom floor(short_fraction·N), else 0.

    N counts the day's rows, so pass only eligible rows with a prediction, sorted by (Date, Code): ordinal
    ranks then break ties by Code.
    """
    n = pl.len().over("Date").cast(pl.Float64)
    r_desc = pl.col(pred).rank("ordinal", descending=True).over("Date")
    r_asc = pl.col(pred).rank("ordinal").over("Date")
    return (pl.when(r_desc <= (n * long_fraction).floor()).then(1)
            .when(r_asc <= (n * short_fraction).floor()).then(-1).otherwise(0).cast(pl.Int8))


def _weights_long_short(el: pl.DataFrame, c: BacktestConfig) -> pl.LazyFrame:
    lf = el.lazy().with_columns(side=side_expr("p", c.long_fraction, c.short_fraction))
    lf = lf.filter(pl.col("side") != 0)
    if c.weighting == "equal":
        raw = pl.lit(1.0)
    else:
        raw = (pl.col("p") - pl.col("p").median().over("Date")).abs()
    lf = lf.with_columns(raw=raw).with_columns(
        leg_sum=pl.col("raw").sum().over("Date", "side"), leg_n=pl.len().over("Date", "side"))
    share = pl.when(pl.col("leg_sum") > 0).then(pl.col("raw") / pl.col("leg_sum")).otherwise(1.0 / pl.col("leg_n"))
    return lf.with_columns(w=share * pl.col("side")).select("Date", "Code", "side", "w", "y")


def _mean_variance_weights(el: pl.DataFrame, c: BacktestConfig) -> pl.DataFrame:
    """Per date: the dollar-neutral mean-variance portfolio with a diagonal risk model, scaled to gross 2.

    Maximising μ'w − (γ/2)·Σ σ_i² w_i² subject to Σw = 0 gives w ∝ (μ − λ)/σ² with λ = Σ(μ/σ²)/Σ(1/σ²); μ is the
    day's z-scored prediction and σ the trailing-volatility column (known at t). Scaling to gross 2 makes γ drop
    out. The per-name cap |w_i| ≤ max_weight is then applied approximately: clip and renormalise each leg, five
    passes (exact when the cap is loose; a leg with fewer than 1/max_weight names cannot honour it).
    """
    g = el.lazy().drop_nulls(c.vol_column).filter(pl.col(c.vol_column) > 0).with_columns(
        mu=(pl.col("p") - pl.col("p").mean().over("Date")) / pl.col("p").std().over("Date"),
        inv_var=1.0 / pl.col(c.vol_column).cast(pl.Float64).pow(2))
    # dollar-neutral unconstrained solution: w ∝ inv_var·(μ − λ), λ = Σ inv_var·μ / Σ inv_var
    lam = (pl.col("inv_var") * pl.col("mu")).sum().over("Date") / pl.col("inv_var").sum().over("Date")
    g = g.with_columns(raw=pl.col("inv_var") * (pl.col("mu") - lam))
    g = g.with_columns(side=pl.col("raw").sign().cast(pl.Int8)).filter(pl.col("side") != 0)
    leg = pl.col("raw").abs() / pl.col("raw").abs().sum().over("Date", "side")
    g = g.with_columns(a=leg)
    for _ in range(5):
        g = g.with_columns(a=pl.col("a").clip(upper_bound=c.max_weight)).with_columns(
            a=pl.col("a") / pl.col("a").sum().over("Date", "side"))
    return g.with_columns(w=pl.col("a") * pl.col("side")).select("Date", "Code", "side", "w", "y").collect()


def _turnover(w: pl.DataFrame) -> pl.DataFrame:
    """Date, turnover = Σ|w_k − w_{k−1}| over the union of names, consecutive rebalances k."""
    days = w.select(pl.col("Date").unique().sort()).with_row_index("k")
    wk = w.join(days, on="Date").select("k", "Code", "w")
    prev = wk.with_columns(k=pl.col("k") + 1).rename({"w": "w_prev"})
    j = wk.join(prev, on=["k", "Code"], how="full", coalesce=True).filter(pl.col("k") < days.height)
    t = j.group_by("k").agg(turnover=(pl.col("w").fill_null(0.0) - pl.col("w_prev").fill_null(0.0)).abs().sum())
    return days.join(t, on="k", how="left").select("Date", pl.col("turnover").fill_null(0.0))


def _summary(daily: pl.DataFrame, c: BacktestConfig, col: str = "net") -> dict:
    ppy = c.periods_per_year / c.horizon
    r = daily[col].cast(pl.Float64)
    n = r.len()
    mean = r.mean() if n else float("nan")
    std = r.std() if n > 1 else float("nan")
    down = math.sqrt((r.clip(upper_bound=0.0) ** 2).mean()) if n else float("nan")
    eq = (1.0 + r).cum_prod()
    dd = eq / pl.concat([pl.Series([1.0]), eq]).cum_max().slice(1) - 1.0
    max_dd = float(dd.min()) if n else float("nan")
    cagr = float(eq[-1] ** (ppy / n) - 1.0) if n and eq[-1] > 0 else float("nan")

    def ratio(a, b):
        return float(a / b) if b and math.isfinite(b) and b > 0 else float("nan")

    return {"ann_return": float(mean * ppy) if n else float("nan"),
            "ann_vol": float(std * math.sqrt(ppy)) if n > 1 else float("nan"),
            "sharpe": ratio(mean, std) * math.sqrt(ppy), "sharpe_tstat": ratio(mean, std) * math.sqrt(n),
            "sortino": ratio(mean, down) * math.sqrt(ppy),
            "cagr": cagr, "max_drawdown": max_dd, "calmar": ratio(cagr, abs(max_dd)),
            "win_rate": float((r > 0).mean()) if n else float("nan"),
            "total_return": float(eq[-1] - 1.0) if n else float("nan")}


def backtest(preds: pl.DataFrame, horizon: int | None = None, cfg: Any = None, **overrides: Any) -> BacktestResult:
    """Backtest `pred_{h}d` against `target_{h}d` (see the module docstring for every definition)."""
    if horizon is not None:
        overrides["horizon"] = int(horizon)
    c = BacktestConfig.from_any(cfg, **overrides)
    h = int(c.horizon)
    pred, target = C.pred(h), C.target(h)
    _check_input(preds, pred, target)
    el, notes = _eligible(preds, pred, target, c)
    if el.height == 0:
        raise DataError(f"predictions: no row has both {pred} and a realised {target} after the filters")
    reb = _rebalance_dates(el["Date"], h)
    el = el.filter(pl.col("Date").is_in(reb.implode()))
    counts = el.group_by("Date").len()
    small = counts.filter(pl.col("len") < c.min_names)
    if small.height:
        log.warning("backtest: %d rebalance date(s) with fewer than %d eligible names skipped: %s",
                    small.height, c.min_names, rows_hint(small.sort("Date")["Date"].to_list()))
        el = el.join(small.select("Date"), on="Date", how="anti")
    if el.height == 0:
        raise DataError(f"predictions: no rebalance date has {c.min_names} or more eligible names")

    w = (_weights_long_short(el, c).collect() if c.method == "long_short" else _mean_variance_weights(el, c))
    w = w.sort("Date", "Code")
    legs = w.group_by("Date").agg(
        n_long=(pl.col("side") == 1).sum().cast(pl.UInt32), n_short=(pl.col("side") == -1).sum().cast(pl.UInt32),
        long=(pl.col("w") * pl.col("y")).filter(pl.col("side") == 1).sum(),
        short=(-pl.col("w") * pl.col("y")).filter(pl.col("side") == -1).sum())
    q = int(c.quantiles)
    bench = (el.lazy().with_columns(bucket=metrics.bucket_expr("p", q).over("Date"))
             .group_by("Date").agg(n=pl.len().cast(pl.UInt32),
                                   top_quantile=pl.col("y").filter(pl.col("bucket") == q).mean(),
                                   universe=pl.col("y").mean()).collect())
    cost_rate = c.cost_bps * 1e-4
    daily = (bench.join(legs, on="Date", how="inner").join(_turnover(w), on="Date", how="left").sort("Date")
             .with_columns(gross=pl.col("long") - pl.col("short"))
             .with_columns(cost=pl.col("turnover") * cost_rate)
             .with_columns(net=pl.col("gross") - pl.col("cost"))
             .with_columns(equity=(1.0 + pl.col("net")).cum_prod())
             .with_columns(drawdown=pl.col("equity") / pl.max_horizontal(pl.col("equity").cum_max(), 1.0) - 1.0)
             .select("Date", "n", "n_long", "n_short", "long", "short", "gross", "turnover", "cost", "net",
                     "equity", "drawdown", "top_quantile", "universe"))
    if daily.height == 0:
        raise DataError("predictions: no rebalance date produced both a long and a short leg")

    summary = _summary(daily, c)
    gross = _summary(daily, c, "gross")
    summary.update({f"{k}_gross": v for k, v in gross.items() if k in ("ann_return", "sharpe", "max_drawdown")})
    top, uni = _summary(daily, c, "top_quantile"), _summary(daily, c, "universe")
    summary.update({
        "avg_turnover": float(daily["turnover"].mean()), "total_cost": float(daily["cost"].sum()),
        "avg_long_return": float(daily["long"].mean()), "avg_short_return": float(daily["short"].mean()),
        "avg_names_long": float(daily["n_long"].mean()), "avg_names_short": float(daily["n_short"].mean()),
        "top_quantile_ann_return": top["ann_return"], "top_quantile_sharpe": top["sharpe"],
        "universe_ann_return": uni["ann_return"], "universe_sharpe": uni["sharpe"],
        "top_minus_universe_ann": top["ann_return"] - uni["ann_return"],
        "n_periods": daily.height, "n_skipped_dates": small.height, "horizon": h, "rebalance_every": h,
        "periods_per_year": c.periods_per_year / h,
        "start": daily["Date"].min(), "end": daily["Date"].max(), **notes,
    })
    quant = metrics.quantile_returns(el.select("Date", "p", "y"), "p", "y", q)
    return BacktestResult(daily=daily, summary=summary, quantiles=quant, config=asdict(c))


def attach_dataset_columns(preds: pl.DataFrame, dataset_path: str | Path, columns: tuple[str, ...] = UNIVERSE_COLUMNS,
                           check_keys: bool = True) -> pl.DataFrame:
    """Join the dataset's `columns` (those it has and `preds` lacks) onto `preds` by (Date, Code).

    With `check_keys`, every (Date, Code) of `preds` must exist in the dataset (DataError naming a few otherwise).
    """
    path = Path(dataset_path)
    lf = pl.scan_parquet(path)
    schema = lf.collect_schema()
    for col in ("Date", "Code"):
        if col not in schema:
            raise SchemaError(f"{path}: missing column {col}")
    want = [c for c in columns if c in schema and c not in preds.columns]
    keys = preds.select("Date", "Code").with_columns(pl.col("Code").cast(pl.String), pl.col("Date").cast(pl.Date))
    lo, hi = keys["Date"].min(), keys["Date"].max()
    ds = (lf.filter(pl.col("Date").is_between(lo, hi)).select("Date", "Code", *want)
          .join(keys.lazy(), on=["Date", "Code"], how="semi").collect())
    if check_keys:
        unknown = keys.join(ds.select("Date", "Code"), on=["Date", "Code"], how="anti")
        if unknown.height:
            known_dates = set(ds["Date"].unique().to_list())
            bad_dates = sorted(set(unknown["Date"].to_list()) - known_dates)
            detail = (f"dates not in the dataset: {rows_hint(bad_dates)}" if bad_dates else
                      "e.g. " + rows_hint(f"{r['Date']} {r['Code']}" for r in unknown.head(5).iter_rows(named=True)))
            raise DataError(f"predictions: {unknown.height} (Date, Code) row(s) unknown to {path}; {detail}")
    if not want:
        return preds
    out = preds.with_columns(pl.col("Code").cast(pl.String), pl.col("Date").cast(pl.Date))
    return out.join(ds, on=["Date", "Code"], how="left")


def _read_predictions(path: Path) -> pl.DataFrame:
    if not path.exists():
        raise DataError(f"{path}: predictions file not found")
    try:
        return pl.read_parquet(path)
    except Exception as e:  # noqa: BLE001 - polars raises several types for corrupt files
        raise DataError(f"{path}: cannot read predictions parquet ({type(e).__name__})") from e


def run_backtest(cfg: Any, predictions_path: str | Path) -> dict:
    """`gogooku3 backtest --predictions PATH`: backtest, write output/portfolio/report_<ts>.json + daily parquet.

    Checks the predictions' (Date, Code) against `paths.dataset` when it exists and takes the filter columns from
    it. Nothing is written unless every check passes.
    """
    path = Path(predictions_path)
    preds = _read_predictions(path)
    c = BacktestConfig.from_any(cfg)
    _check_input(preds, C.pred(c.horizon), C.target(c.horizon))
    dataset = Path(cfg.paths.dataset) if "paths" in cfg else None
    vol_cols = (c.vol_column,) if c.method == "mean_variance" else ()
    if dataset is not None and dataset.exists():
        preds = attach_dataset_columns(preds, dataset, UNIVERSE_COLUMNS + vol_cols)
    elif dataset is not None:
        log.warning("backtest: dataset %s not found; (Date, Code) not checked against it", dataset)
    res = backtest(preds, cfg=c)
    ts = timestamp()
    out_dir = Path(cfg.paths.output_dir) / "portfolio"
    daily_path = out_dir / f"daily_returns_{ts}.parquet"
    report_path = out_dir / f"report_{ts}.json"
    report = {"input": str(path), "rows": preds.height, "days": preds["Date"].n_unique(),
              "dataset": str(dataset) if dataset is not None else None, **res.to_dict(),
              "daily_path": str(daily_path), "report_path": str(report_path)}
    write_parquet(res.daily, daily_path)
    write_json(report_path, report)
    s = res.summary
    log.info("backtest h=%dd: Sharpe %.3f (net, sqrt(%g)), ann return %.2f%%, max DD %.2f%%, avg turnover %.2f -> %s",
             c.horizon, s["sharpe"], s["periods_per_year"], 100 * s["ann_return"], 100 * s["max_drawdown"],
             s["avg_turnover"], report_path)
    return report


def summary_for_report(res: BacktestResult) -> Mapping[str, Any]:
    """The subset of a backtest summary shown in run reports."""
    keys = ("sharpe", "ann_return", "ann_vol", "sortino", "max_drawdown", "calmar", "win_rate", "avg_turnover",
            "sharpe_gross", "top_quantile_ann_return", "universe_ann_return", "n_periods")
    return {k: res.summary.get(k) for k in keys}
