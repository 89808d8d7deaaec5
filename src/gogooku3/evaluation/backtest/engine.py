"""The backtest itself: the rebalance schedule, then per rebalance the book, its execution and realisation into
per-period returns net of costs, and the summary (`backtest`); the ideal and realistic runs side by side
(`backtest_both`). Every definition is in the package docstring (`gogooku3.evaluation.backtest`)."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict
from typing import Any

import polars as pl

from gogooku3.core import columns as C
from gogooku3.core.errors import DataError, rows_hint
from gogooku3.core.scalars import as_float
from gogooku3.evaluation import metrics
from gogooku3.evaluation.backtest.book import eligible, target_book
from gogooku3.evaluation.backtest.config import COST_MODELS, BacktestConfig
from gogooku3.evaluation.backtest.costs import (
    cost_flat,
    cost_spread_impact,
    weight_changes,
)
from gogooku3.evaluation.backtest.execution import execute, realism_inputs
from gogooku3.evaluation.backtest.market import Market
from gogooku3.evaluation.backtest.predictions import check_input
from gogooku3.evaluation.backtest.realise import STATUSES, realise
from gogooku3.evaluation.backtest.summary import BacktestResult, summarise

log = logging.getLogger(__name__)


def rebalance_schedule(pred_dates: list[dt.date], sessions: list[dt.date], every: int) -> list[dt.date]:
    """Every `every`-th session of `sessions` from the first prediction date through the last (counted in sessions,
    so a date missing from the predictions does not shift the schedule)."""
    first, last = min(pred_dates), max(pred_dates)
    if first not in set(sessions):
        raise DataError(f"predictions: date {first} is not a session of the dataset's calendar")
    i0 = sessions.index(first)
    return [d for d in sessions[i0::every] if d <= last]


def backtest(
    preds: pl.DataFrame,
    horizon: int | None = None,
    cfg: Any = None,
    *,
    market: Market | None = None,
    realistic: bool = False,
    **overrides: Any,
) -> BacktestResult:
    """Backtest `pred_{h}d` (see the package docstring for every definition): the ideal book, or with `realistic` the
    one that trades as the market allows. `market` (the dataset's sessions and prices) gives the calendar, the
    realised returns of names that stop trading and the realism inputs; without it the predictions' dates are taken
    as consecutive sessions, a missing label realises 0 and every realism rule is unavailable."""
    if horizon is not None:
        overrides["horizon"] = int(horizon)
    c = BacktestConfig.from_any(cfg, **overrides)
    h = int(c.horizon)
    pred, target = C.pred(h), C.target(h)
    check_input(preds, pred, target)
    el = eligible(preds, h, c, market)
    if el.height == 0:
        raise DataError(f"predictions: no row has a {pred} value that passes the filters")

    # ---- schedule in sessions of the dataset's calendar ------------------------------------------------------------
    pred_dates = preds[C.DATE].cast(pl.Date).unique().sort().to_list()
    sessions = market.sessions if market is not None else pred_dates
    sched = rebalance_schedule(pred_dates, sessions, h)
    have = set(el[C.DATE].unique().to_list())
    missing = [d for d in sched if d not in have]
    if missing:
        log.warning(
            "backtest: %d scheduled rebalance date(s) without eligible predictions skipped: %s",
            len(missing),
            rows_hint(missing),
        )
    sched = [d for d in sched if d in have]
    # realised: some label of the date exists, or (with the calendar) its exit session lies within the data
    labelled = set(el.filter(pl.col("y").is_not_null())[C.DATE].unique().to_list())
    if market is not None:
        pos = {d: i for i, d in enumerate(market.sessions)}
        last = len(market.sessions) - 1
        labelled |= {d for d in sched if pos[d] + market.entry_lag + h <= last}
    realised = [d for d in sched if d in labelled]
    unrealised = [d for d in sched if d not in set(realised)]
    el = el.filter(pl.col(C.DATE).is_in(pl.Series(realised, dtype=pl.Date).implode()))
    counts = el.group_by(C.DATE).len()
    small = counts.filter(pl.col("len") < c.min_names)
    if small.height:
        log.warning(
            "backtest: %d rebalance date(s) with fewer than %d eligible names skipped: %s",
            small.height,
            c.min_names,
            rows_hint(small.sort(C.DATE)[C.DATE].to_list()),
        )
        el = el.join(small.select(C.DATE), on=C.DATE, how="anti")
    if el.height == 0:
        raise DataError(
            f"predictions: no rebalance date has {c.min_names} or more eligible names and a realised {h}-day period"
        )
    reb = el[C.DATE].unique().sort().to_list()

    # ---- the book: what is known on t, then what the entry close allows ----------------------------------------
    realism = realism_inputs(market, c, realistic)
    book, passed = target_book(el, c, realism["borrow"]["applied"])
    realism["borrow"]["short_names_passed_over"] = passed
    book = execute(book, el, market, c, realism, reb, h)

    # ---- realised returns (carrying names that stop trading) ------------------------------------------------------
    real = realise(el.select(C.DATE, C.CODE, "p", "y"), market, h)
    pos_ = book.join(real.select(C.DATE, C.CODE, "r", "status"), on=[C.DATE, C.CODE], how="left")
    pos_ = pos_.with_columns(w=pl.when(pl.col("status") == "unfilled").then(0.0).otherwise(pl.col("w")))
    legs_ = pos_.group_by(C.DATE).agg(
        n_long=(pl.col("side") == 1).sum().cast(pl.UInt32),
        n_short=(pl.col("side") == -1).sum().cast(pl.UInt32),
        long=(pl.col("w") * pl.col("r")).filter(pl.col("side") == 1).sum(),
        short=(-pl.col("w") * pl.col("r")).filter(pl.col("side") == -1).sum(),
    )
    q = int(c.quantiles)
    bench = (
        real.lazy()
        .with_columns(bucket=metrics.bucket_expr("p", q).over(C.DATE))
        .group_by(C.DATE)
        .agg(
            n=pl.len().cast(pl.UInt32),
            top_quantile=pl.col("r").filter(pl.col("bucket") == q).mean(),
            universe=pl.col("r").mean(),
        )
        .collect()
    )

    # ---- turnover and both cost models ----------------------------------------------------------------------------
    dw = weight_changes(pos_.select(C.DATE, C.CODE, "w"), reb)
    turn = dw.group_by(C.DATE).agg(turnover=pl.col("dw").abs().sum())
    impact, impact_how = cost_spread_impact(dw, el, c)
    daily = (
        bench.join(legs_, on=C.DATE, how="inner")
        .join(turn, on=C.DATE, how="left")
        .join(impact, on=C.DATE, how="left")
        .sort(C.DATE)
        .with_columns(pl.col("turnover").fill_null(0.0), pl.col("cost_spread_impact").fill_null(0.0))
        .with_columns(gross=pl.col("long") - pl.col("short"), cost_flat=cost_flat(c))
        .with_columns(cost=pl.col(f"cost_{c.cost_model}"))
        .with_columns(net=pl.col("gross") - pl.col("cost"))
        .with_columns(equity=(1.0 + pl.col("net")).cum_prod())
        .with_columns(drawdown=pl.col("equity") / pl.max_horizontal(pl.col("equity").cum_max(), 1.0) - 1.0)
        .select(
            C.DATE,
            "n",
            "n_long",
            "n_short",
            "long",
            "short",
            "gross",
            "turnover",
            "cost_flat",
            "cost_spread_impact",
            "cost",
            "net",
            "equity",
            "drawdown",
            "top_quantile",
            "universe",
        )
    )
    if daily.height == 0:
        raise DataError("predictions: no rebalance date produced both a long and a short leg")

    summary = summarise(daily, c)
    gross = summarise(daily, c, "gross")
    summary.update({f"{k}_gross": v for k, v in gross.items() if k in ("ann_return", "sharpe", "max_drawdown")})
    by_cost = {}
    for m in COST_MODELS:
        s = summarise(daily.with_columns(net=pl.col("gross") - pl.col(f"cost_{m}")), c)
        by_cost[m] = {
            "sharpe": s["sharpe"],
            "ann_return": s["ann_return"],
            "max_drawdown": s["max_drawdown"],
            "total_cost": float(daily[f"cost_{m}"].sum()),
        }
    by_cost["spread_impact"]["charged"] = impact_how
    top, uni = summarise(daily, c, "top_quantile"), summarise(daily, c, "universe")
    status = pos_.group_by("status").len()
    positions = {s: int(status.filter(pl.col("status") == s)["len"].sum()) for s in STATUSES}
    summary.update(
        {
            "avg_turnover": as_float(daily["turnover"].mean()),
            "total_cost": float(daily["cost"].sum()),
            "cost_model": c.cost_model,
            "by_cost_model": by_cost,
            "avg_long_return": as_float(daily["long"].mean()),
            "avg_short_return": as_float(daily["short"].mean()),
            "avg_names_long": as_float(daily["n_long"].mean()),
            "avg_names_short": as_float(daily["n_short"].mean()),
            "top_quantile_ann_return": top["ann_return"],
            "top_quantile_sharpe": top["sharpe"],
            "universe_ann_return": uni["ann_return"],
            "universe_sharpe": uni["sharpe"],
            "top_minus_universe_ann": top["ann_return"] - uni["ann_return"],
            "n_periods": daily.height,
            "n_skipped_dates": small.height,
            "n_missing_dates": len(missing),
            "n_unrealised_dates": len(unrealised),
            "horizon": h,
            "rebalance_every": h,
            "calendar": "dataset sessions" if market is not None else "prediction dates",
            "periods_per_year": c.periods_per_year / h,
            "mode": "realistic" if realistic else "ideal",
            "positions": {"total": pos_.height, **positions},
            "realism": realism,
            "start": daily[C.DATE].min(),
            "end": daily[C.DATE].max(),
            "rows": preds.height,
            "rows_eligible": el.height,
        }
    )
    quant = metrics.quantile_returns(real.select(C.DATE, "p", "r"), "p", "r", q)
    return BacktestResult(
        daily=daily,
        summary=summary,
        quantiles=quant,
        config=asdict(c),
        positions=pos_.select(C.DATE, C.CODE, "side", "w", "r", "status").sort(C.DATE, C.CODE),
    )


def backtest_both(
    preds: pl.DataFrame, cfg: Any = None, market: Market | None = None, source: str = "", **overrides: Any
) -> tuple[dict[str, BacktestResult], str]:
    """The ideal and the realistic backtest of the same predictions, and which one is the headline
    (`BacktestConfig.headline(source)`)."""
    c = BacktestConfig.from_any(cfg, **overrides)
    out = {
        "ideal": backtest(preds, cfg=c, market=market),
        "realistic": backtest(preds, cfg=c, market=market, realistic=True),
    }
    return out, c.headline(source)
