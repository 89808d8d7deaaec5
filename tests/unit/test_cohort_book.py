"""The overlapping-cohort book (issue 21): a 3-stock, 5-session, h = 2 example by hand (weights that drift, daily
P&L, turnover with and without the drift); h = 1 is the daily book; the Sharpe no longer depends on the start day
(the cohort book is the average of the h fixed-schedule books); the annualisation counts the calendar's sessions."""

from __future__ import annotations

import math
from datetime import date, timedelta

import numpy as np
import polars as pl
import pytest

from gogooku3.evaluation.backtest.config import BacktestConfig
from gogooku3.evaluation.backtest.costs import weight_changes
from gogooku3.evaluation.backtest.engine import backtest
from gogooku3.evaluation.backtest.market import market_from_frame
from gogooku3.evaluation.backtest.realise import cohort_holdings, price_index
from gogooku3.evaluation.backtest.summary import TSE_SESSIONS_PER_YEAR, annualisation, sessions_per_year

D = [date(2024, 1, 1) + timedelta(days=k) for k in range(5)]  # five sessions
CLOSES = {  # A +10 %, +10 %, 0, +10 % ; B 0, −10 %, +10 %, 0 ; C −5 %, 0, +20 %, 0
    "A": [100.0, 110.0, 121.0, 121.0, 133.1],
    "B": [100.0, 100.0, 90.0, 99.0, 99.0],
    "C": [100.0, 95.0, 95.0, 114.0, 114.0],
}
RANK = [("A", "B", "C"), ("B", "A", "C"), ("A", "C", "B"), ("A", "B", "C"), ("A", "B", "C")]  # best first
HAND = {"long_fraction": 1 / 3, "short_fraction": 1 / 3, "min_names": 3, "cost_bps": 10.0, "realism": "ideal"}


def _hand() -> tuple[pl.DataFrame, pl.DataFrame]:
    """Dataset rows (Date, Code, Close) and predictions (pred_2d, target_2d = Close(t+2)/Close(t) − 1, entry lag 0)."""
    ds = pl.DataFrame(
        [{"Date": D[k], "Code": c, "Close": v[k]} for c, v in CLOSES.items() for k in range(5)],
        schema={"Date": pl.Date, "Code": pl.String, "Close": pl.Float64},
    )
    preds = [
        {
            "Date": D[k],
            "Code": c,
            "pred_2d": float(2 - RANK[k].index(c)),
            "target_2d": CLOSES[c][k + 2] / CLOSES[c][k] - 1 if k + 2 < 5 else None,
        }
        for k in range(5)
        for c in CLOSES
    ]
    return ds, pl.DataFrame(
        preds, schema={"Date": pl.Date, "Code": pl.String, "pred_2d": pl.Float64, "target_2d": pl.Float64}
    )


def test_three_stocks_five_sessions_h2_by_hand():
    ds, preds = _hand()
    market = market_from_frame(ds, entry_lag=0)
    res = backtest(preds, horizon=2, cfg=HAND, market=market)
    d = res.daily
    # cohorts on D0 (long A short C), D1 (long B short C), D2 (long A short B), each half the capital; D3 and D4
    # cannot be realised (exit beyond D4); rows run to the last cohort's last session, D3
    assert d["Date"].to_list() == D[:4] and res.summary["n_cohorts"] == 3 and res.summary["n_unrealised_dates"] == 2
    # D0→D1: A +10 % on 0.5 (+0.05), short C −5 % (+0.025)
    # D1→D2: cohort D0 A 0.55 +10 % (+0.055); cohort D1 B 0.5 −10 % (−0.05), C flat
    # D2→D3: cohort D1 B 0.45 +10 % (+0.045), C −0.5 +20 % (−0.1); cohort D2 A flat, short B 0.5 +10 % (−0.05)
    # D3→D4: cohort D2 A 0.5 +10 % (+0.05)
    assert d["long"].to_list() == pytest.approx([0.05, 0.005, 0.045, 0.05])
    assert d["short"].to_list() == pytest.approx([-0.025, 0.0, 0.15, 0.0])
    assert d["gross"].to_list() == pytest.approx([0.075, 0.005, -0.105, 0.05])
    # each cohort's P&L over its two sessions is half its label return: D0 0.5·0.21 + 0.5·0.05 = 0.13, ...
    assert d["gross"].sum() == pytest.approx(0.13 - 0.105 + 0.0)
    # the book's weights at the start of each session: the live cohorts' weights drifted since their entry
    pos_k = res.positions.with_columns(k=pl.col("Date").dt.day().cast(pl.Int64) - 1)
    prices = price_index(pl.Series(["A", "B", "C"]), 0, 5, market.sessions, market, None)
    w = cohort_holdings(pos_k, prices, 2, 0.5, 3)
    book = {(r["k"], r["Code"]): r["w"] for r in w.iter_rows(named=True)}
    want = {
        (0, "A"): 0.5, (0, "C"): -0.5,
        (1, "A"): 0.55, (1, "B"): 0.5, (1, "C"): -0.475 - 0.5,
        (2, "A"): 0.5, (2, "B"): 0.45 - 0.5, (2, "C"): -0.5,
        (3, "A"): 0.5, (3, "B"): -0.55,
    }  # fmt: skip
    assert book.keys() == want.keys() and [book[k] for k in want] == pytest.approx(list(want.values()))
    assert d["exposure"].to_list() == pytest.approx([1.0, 2.025, 1.05, 1.05])
    # turnover: D2 buys cohort D2 (A +0.5, B −0.5) and sells cohort D0 as it drifted (A −0.605, C +0.475);
    # D3 sells cohort D1 as it drifted (B −0.495, C +0.6). Without the drift: 1.0 each.
    assert d["turnover"].to_list() == pytest.approx([1.0, 1.0, 0.105 + 0.5 + 0.475, 0.495 + 0.6])
    assert res.summary["avg_turnover_undrifted"] == pytest.approx(1.0)
    assert d["cost_flat"].to_list() == pytest.approx([1e-3 * t for t in d["turnover"]])


def _panel(n_days: int, n_codes: int, seed: int) -> tuple[pl.DataFrame, pl.DataFrame, list[date]]:
    """A random market (Close, returns_1d) and predictions with 1-, 5-day labels (entry lag 1), weakly predictive."""
    rng = np.random.default_rng(seed)
    days = [date(2023, 1, 2) + timedelta(days=k) for k in range(n_days)]
    r = rng.normal(0.0, 0.02, size=(n_days, n_codes))
    px = 1000.0 * np.cumprod(1 + r, axis=0)
    codes = [f"{1000 + j}" for j in range(n_codes)]
    rows = []
    for k in range(n_days):
        for j, c in enumerate(codes):
            row = {"Date": days[k], "Code": c, "Close": px[k, j], "returns_1d": r[k, j] if k else None}
            for h in (1, 5):
                row[f"target_{h}d"] = px[k + 1 + h, j] / px[k + 1, j] - 1 if k + 1 + h < n_days else None
            fut = px[min(k + 6, n_days - 1), j] / px[min(k + 1, n_days - 1), j] - 1
            for h in (1, 5):
                row[f"pred_{h}d"] = fut + rng.normal(0.0, 0.05)
            rows.append(row)
    df = pl.DataFrame(rows)
    return df.select("Date", "Code", "Close", "returns_1d"), df.drop("Close", "returns_1d"), days


def test_h1_is_the_daily_book():
    ds, preds, _ = _panel(40, 20, 0)
    for market in (market_from_frame(ds), None):
        res = backtest(preds, horizon=1, market=market, cost_bps=0.0)
        pos = res.positions
        per_day = pos.group_by("Date").agg(g=(pl.col("w") * pl.col("r")).sum()).sort("Date")
        assert res.daily["Date"].to_list() == per_day["Date"].to_list()
        assert res.daily["gross"].to_list() == pytest.approx(per_day["g"].to_list(), abs=1e-12)
        old = weight_changes(pos.select("Date", "Code", "w"), per_day["Date"].to_list())
        old_turn = old.group_by("Date").agg(t=pl.col("dw").abs().sum())["t"].mean()
        assert res.summary["avg_turnover_undrifted"] == pytest.approx(old_turn, abs=1e-12)
        assert res.summary["avg_turnover"] > res.summary["avg_turnover_undrifted"]  # the drift is traded too
        same = backtest(preds, horizon=1, market=market, cost_bps=0.0, schedule_offset=0)
        assert same.daily["net"].to_list() == res.daily["net"].to_list()


def test_cohort_book_is_the_average_of_the_h_fixed_schedule_books():
    ds, preds, days = _panel(90, 30, 1)
    market = market_from_frame(ds)
    h = 5
    cohort = backtest(preds, horizon=h, market=market, cost_bps=0.0)
    offsets = [backtest(preds, horizon=h, market=market, cost_bps=0.0, schedule_offset=s) for s in range(h)]
    # the old schedule's Sharpe (non-overlapping h-day returns of a book formed every h sessions from s) moves with s
    ppy = cohort.summary["periods_per_year"]
    old = []
    for s, res in enumerate(offsets):
        pos = res.positions.filter(pl.col("Date").is_in(days[s::h]))
        g = pos.group_by("Date").agg(g=(pl.col("w") * pl.col("r")).sum())["g"].to_numpy()
        old.append(g.mean() / g.std(ddof=1) * math.sqrt(ppy / h))
    assert max(old) - min(old) > 0.5
    # the cohort book's daily P&L is the mean of the h fixed-schedule books' (each in cash before its first cohort)
    frame = cohort.daily.select("Date", "gross")
    for s, res in enumerate(offsets):
        frame = frame.join(res.daily.select("Date", pl.col("gross").alias(f"g{s}")), on="Date", how="left")
    mean = frame.select(pl.mean_horizontal(pl.col(f"g{s}").fill_null(0.0) for s in range(h)))
    assert frame["gross"].to_list() == pytest.approx(mean.to_series().to_list(), abs=1e-12)
    assert cohort.summary["book"] == "overlapping cohorts" and offsets[2].summary["book"].endswith("offset 2")


def test_sessions_per_year_from_the_calendar():
    weekdays = [date(2022, 12, 1) + timedelta(days=i) for i in range(800)]
    weekdays = [d for d in weekdays if d.weekday() < 5]
    n, how = sessions_per_year(weekdays)  # whole years 2023 (260 weekdays) and 2024 (262)
    assert n == pytest.approx(261.0) and "2023-2024" in how
    no_whole_year = weekdays[65:365]  # March 2023 to April 2024: over a year, no calendar year whole
    span = (no_whole_year[-1] - no_whole_year[0]).days + 1
    assert sessions_per_year(no_whole_year)[0] == pytest.approx(300 * 365.25 / span)
    assert sessions_per_year(weekdays[:100])[0] == TSE_SESSIONS_PER_YEAR == 245.0  # under a year: the TSE's
    assert annualisation(BacktestConfig.from_any({"periods_per_year": 252}), weekdays) == (
        252.0,
        "portfolio.periods_per_year",
    )
    assert annualisation(BacktestConfig.from_any(None), weekdays)[0] == pytest.approx(261.0)
