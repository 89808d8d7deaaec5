"""The backtest itself: the cohort schedule, then per cohort the book, its execution and realisation, the daily
P&L and trades of the live cohorts net of costs, and the summary (`backtest`); the ideal and realistic runs side by
side (`backtest_both`). Every definition is in the package docstring (`gogooku3.evaluation.backtest`)."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict, replace
from typing import Any

import polars as pl

from gogooku3.core import columns as C
from gogooku3.core.errors import ConfigError, DataError, rows_hint
from gogooku3.core.scalars import as_float
from gogooku3.evaluation import metrics
from gogooku3.evaluation.backtest.book import eligible, target_book
from gogooku3.evaluation.backtest.config import COST_MODELS, BacktestConfig
from gogooku3.evaluation.backtest.costs import cost_flat, cost_spread_impact, priced_at_entry
from gogooku3.evaluation.backtest.execution import execute, realism_inputs
from gogooku3.evaluation.backtest.market import Market
from gogooku3.evaluation.backtest.predictions import check_input
from gogooku3.evaluation.backtest.realise import STATUSES, cohort_pnl, cohort_trades, price_index, realise
from gogooku3.evaluation.backtest.summary import BacktestResult, annualisation, summarise

log = logging.getLogger(__name__)

DAILY_COLUMNS = (
    C.DATE,
    "n",
    "n_long",
    "n_short",
    "long",
    "short",
    "gross",
    "exposure",
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


def formation_schedule(
    pred_dates: list[dt.date], sessions: list[dt.date], every: int, offset: int = 0
) -> list[dt.date]:
    """Every `every`-th session of `sessions` from the `offset`-th one on the first prediction date or after, through
    the last prediction date (counted in sessions, so a date missing from the predictions does not shift it)."""
    first, last = min(pred_dates), max(pred_dates)
    if first not in set(sessions):
        raise DataError(f"predictions: date {first} is not a session of the dataset's calendar")
    i0 = sessions.index(first) + offset
    return [d for d in sessions[i0::every] if d <= last]


def _one_day_returns(preds: pl.DataFrame, h: int, market: Market | None) -> pl.DataFrame | None:
    """Date, Code, y1 (the 1-day label) for the daily P&L when the market has no prices; None when it has them.
    DataError when h > 1 and neither exists (the h-day label alone cannot say how the P&L arrives day by day)."""
    if market is not None and market.has("px"):
        return None
    y1 = C.target(1)
    if y1 not in preds.columns:
        raise DataError(
            f"predictions: the {h}-day book's daily P&L needs daily prices: set paths.dataset to the dataset the "
            f"predictions come from, or include its {y1} column in the predictions"
        )
    return preds.select(
        pl.col(C.DATE).cast(pl.Date), pl.col(C.CODE).cast(pl.String), y1=pl.col(y1).cast(pl.Float64).fill_nan(None)
    )


def backtest(
    preds: pl.DataFrame,
    horizon: int | None = None,
    cfg: Any = None,
    *,
    market: Market | None = None,
    realistic: bool = False,
    schedule_offset: int | None = None,
    **overrides: Any,
) -> BacktestResult:
    """Backtest `pred_{h}d` (see the package docstring for every definition): the ideal book, or with `realistic` the
    one that trades as the market allows. `market` (the dataset's sessions and prices) gives the calendar, the daily
    prices of held names (and the returns of names that stop trading) and the realism inputs; without it the
    predictions' dates are taken as consecutive sessions, the daily P&L comes from the 1-day labels and every realism
    rule is unavailable.

    `schedule_offset` s (0 ≤ s < h) builds, instead of the overlapping cohorts, the fixed-schedule book that forms a
    cohort with the whole capital every h-th session from the s-th: its figures depend on s (kept to measure that)."""
    if horizon is not None:
        overrides["horizon"] = int(horizon)
    c = BacktestConfig.from_any(cfg, **overrides)
    h = int(c.horizon)
    if schedule_offset is not None and not 0 <= int(schedule_offset) < h:
        raise ConfigError(f"backtest: schedule_offset must be in [0, {h}), got {schedule_offset}")
    every, offset = (1, 0) if schedule_offset is None else (h, int(schedule_offset))
    share = 1.0 / h if schedule_offset is None else 1.0  # each cohort's part of the capital
    pred, target = C.pred(h), C.target(h)
    check_input(preds, pred, target)
    el_all = eligible(preds, h, c, market)
    if el_all.height == 0:
        raise DataError(f"predictions: no row has a {pred} value that passes the filters")

    # ---- cohort schedule in sessions of the dataset's calendar ----------------------------------------------------
    pred_dates = preds[C.DATE].cast(pl.Date).unique().sort().to_list()
    sessions = market.sessions if market is not None else pred_dates
    sched = formation_schedule(pred_dates, sessions, every, offset)
    have = set(el_all[C.DATE].unique().to_list())
    missing = [d for d in sched if d not in have]
    if missing:
        log.warning(
            "backtest: %d cohort date(s) without eligible predictions skipped (their capital stays cash): %s",
            len(missing),
            rows_hint(missing),
        )
    sched = [d for d in sched if d in have]
    # realised: some label of the date exists, or (with the calendar) its exit session lies within the data
    labelled = set(el_all.filter(pl.col("y").is_not_null())[C.DATE].unique().to_list())
    if market is not None:
        pos = {d: i for i, d in enumerate(market.sessions)}
        last = len(market.sessions) - 1
        labelled |= {d for d in sched if pos[d] + market.entry_lag + h <= last}
    realised = [d for d in sched if d in labelled]
    unrealised = [d for d in sched if d not in set(realised)]
    el = el_all.filter(pl.col(C.DATE).is_in(pl.Series(realised, dtype=pl.Date).implode()))
    counts = el.group_by(C.DATE).len()
    small = counts.filter(pl.col("len") < c.min_names)
    if small.height:
        log.warning(
            "backtest: %d cohort date(s) with fewer than %d eligible names skipped: %s",
            small.height,
            c.min_names,
            rows_hint(small.sort(C.DATE)[C.DATE].to_list()),
        )
        el = el.join(small.select(C.DATE), on=C.DATE, how="anti")
    if el.height == 0:
        raise DataError(
            f"predictions: no cohort date has {c.min_names} or more eligible names and a realised {h}-day period"
        )
    reb = el[C.DATE].unique().sort().to_list()

    # ---- each cohort's book: what is known on t, then what the entry close allows ------------------------------
    # Round lots act on the name's position in the whole book (weight · capital: the position of a name the book
    # holds in every live cohort), not on one cohort's 1/h slice: a desk trades the sum of its cohorts, and rounding
    # each slice alone would skip most names at long horizons (at ¥100 M and h = 20, ~¥50 k a name, below one lot
    # of most TSE names), leaving an empty book that no one would run.
    realism = realism_inputs(market, c, realistic)
    book, passed = target_book(el, c, realism["borrow"]["applied"])
    realism["borrow"]["short_names_passed_over"] = passed
    book = execute(book, el, market, c, realism, reb, h)

    # ---- realised returns over each cohort's h sessions (carrying names that stop trading) -----------------------
    real = realise(el.select(C.DATE, C.CODE, "p", "y"), market, h)
    pos_ = book.join(real.select(C.DATE, C.CODE, "r", "status"), on=[C.DATE, C.CODE], how="left")
    pos_ = pos_.with_columns(w=pl.when(pl.col("status") == "unfilled").then(0.0).otherwise(pl.col("w")))

    # ---- the book's rows: every session from the first cohort to the last one's last session --------------------
    k_of = pl.DataFrame({C.DATE: sessions, "k": list(range(len(sessions)))}, schema={C.DATE: pl.Date, "k": pl.Int64})
    lo, k_last = sessions.index(reb[0]), sessions.index(reb[-1])
    hi = min(k_last + h - 1, len(sessions) - 1)
    prices = price_index(real[C.CODE], lo, k_last + h, sessions, market, _one_day_returns(preds, h, market))
    pos_k = pos_.join(k_of, on=C.DATE).select("k", C.CODE, "side", "w", "r")
    pnl = cohort_pnl(pos_k, prices, h, share, hi)
    q = int(c.quantiles)
    bucketed = real.with_columns(bucket=metrics.bucket_expr("p", q).over(C.DATE)).join(k_of, on=C.DATE)
    ew = lambda f: (  # an equal-weight long-only cohort book of the rows `f` selects
        cohort_pnl(
            bucketed.filter(f).select("k", C.CODE, "r", side=pl.lit(1, pl.Int8), w=1.0 / pl.len().over("k")),
            prices,
            h,
            share,
            hi,
        ).select("k", pl.col("long"))
    )
    bench = ew(pl.col("bucket") == q).rename({"long": "top_quantile"}).join(ew(pl.lit(True)), on="k")
    bench = bench.rename({"long": "universe"})
    legs_ = (
        pos_.join(k_of, on=C.DATE)
        .group_by("k")
        .agg(n_long=(pl.col("side") == 1).sum().cast(pl.UInt32), n_short=(pl.col("side") == -1).sum().cast(pl.UInt32))
    )
    n_ = real.join(k_of, on=C.DATE).group_by("k").agg(n=pl.len().cast(pl.UInt32))

    # ---- trades (entering cohort against the exiting one's drifted holdings) and both cost models ---------------
    trades = cohort_trades(pos_k, h, share, hi).join(k_of, on="k").select(C.DATE, C.CODE, "dw")
    undrifted = cohort_trades(pos_k, h, share, hi, drift=False).group_by("k").agg(t=pl.col("dw").abs().sum())
    turn = trades.group_by(C.DATE).agg(turnover=pl.col("dw").abs().sum())
    priced = priced_at_entry(market, el_all, sessions[lo : hi + 1])  # the TSE cost model's inputs (costs.py)
    ppy, ppy_how = annualisation(c, sessions)
    c_ppy = replace(c, periods_per_year=ppy)  # costs (borrow fee a session) use the summary's own figure
    impact, impact_how = cost_spread_impact(
        trades, pos_k, prices, k_of, priced, c_ppy, h=h, share=share, realistic=realistic, realism=realism
    )
    daily = (
        pnl.join(bench, on="k", how="left")
        .join(legs_, on="k", how="left")
        .join(n_, on="k", how="left")
        .join(k_of, on="k")
        .join(turn, on=C.DATE, how="left")
        .join(impact, on=C.DATE, how="left")
        .sort(C.DATE)
        .with_columns(
            pl.col("n", "n_long", "n_short").fill_null(0),
            pl.col("turnover", "cost_spread_impact").fill_null(0.0),
        )
        .with_columns(gross=pl.col("long") - pl.col("short"), cost_flat=cost_flat(c))
        .with_columns(cost=pl.col(f"cost_{c.cost_model}" if realistic else "cost_flat"))  # the ideal book: flat
        .with_columns(net=pl.col("gross") - pl.col("cost"))
        .with_columns(equity=(1.0 + pl.col("net")).cum_prod())
        .with_columns(drawdown=pl.col("equity") / pl.max_horizontal(pl.col("equity").cum_max(), 1.0) - 1.0)
        .select(DAILY_COLUMNS)
    )
    if daily.filter(pl.col("n_long") > 0, pl.col("n_short") > 0).height == 0:
        raise DataError("predictions: no cohort date produced both a long and a short leg")

    summary = summarise(daily, ppy)
    gross = summarise(daily, ppy, "gross")
    summary.update({f"{k}_gross": v for k, v in gross.items() if k in ("ann_return", "sharpe", "max_drawdown")})
    by_cost = {}
    for m in COST_MODELS:
        s = summarise(daily.with_columns(net=pl.col("gross") - pl.col(f"cost_{m}")), ppy)
        by_cost[m] = {
            "sharpe": s["sharpe"],
            "ann_return": s["ann_return"],
            "max_drawdown": s["max_drawdown"],
            "total_cost": float(daily[f"cost_{m}"].sum()),
        }
    by_cost["spread_impact"]["charged"] = impact_how
    top, uni = summarise(daily, ppy, "top_quantile"), summarise(daily, ppy, "universe")
    status = pos_.group_by("status").len()
    positions = {s: int(status.filter(pl.col("status") == s)["len"].sum()) for s in STATUSES}
    formed = daily.filter(pl.col("n_long") > 0)
    summary.update(
        {
            "avg_turnover": as_float(daily["turnover"].mean()),
            "avg_turnover_undrifted": as_float(undrifted["t"].sum() / daily.height),
            "avg_exposure": as_float(daily["exposure"].mean()),
            "total_cost": float(daily["cost"].sum()),
            "cost_model": c.cost_model,
            "by_cost_model": by_cost,
            "avg_long_return": as_float(daily["long"].mean()),
            "avg_short_return": as_float(daily["short"].mean()),
            "avg_names_long": as_float(formed["n_long"].mean()),
            "avg_names_short": as_float(formed["n_short"].mean()),
            "top_quantile_ann_return": top["ann_return"],
            "top_quantile_sharpe": top["sharpe"],
            "universe_ann_return": uni["ann_return"],
            "universe_sharpe": uni["sharpe"],
            "top_minus_universe_ann": top["ann_return"] - uni["ann_return"],
            "n_periods": daily.height,
            "n_cohorts": len(reb),
            "n_skipped_dates": small.height,
            "n_missing_dates": len(missing),
            "n_unrealised_dates": len(unrealised),
            "horizon": h,
            "holding_sessions": h,
            "rebalance_every": every,
            "book": "overlapping cohorts" if schedule_offset is None else f"fixed schedule from offset {offset}",
            "calendar": "dataset sessions" if market is not None else "prediction dates",
            "periods_per_year": ppy,
            "annualisation": ppy_how,
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
