"""Backtest on hand-made toy markets: point-in-time universe, names that stop trading, the session schedule, and
each trading-realism rule (borrowability, price limits, round lots, cost models) on a 10-stock book."""

from __future__ import annotations

import math
from datetime import date, timedelta

import polars as pl
import pytest

from gogooku3.evaluation.backtest.book import _ranked_legs, eligible
from gogooku3.evaluation.backtest.config import BacktestConfig
from gogooku3.evaluation.backtest.engine import backtest, backtest_both
from gogooku3.evaluation.backtest.market import (
    LIMITS,
    borrowable_from_margin,
    market_from_frame,
    price_limit,
)

CODES = [f"1{j:03d}0" for j in range(10)]
S = [date(2024, 1, 1) + timedelta(days=k) for k in range(20)]  # the toy calendar: every day a session


def _dataset(
    closes: dict[str, list[float | None]], horizons=(1, 5), lag: int = 1, extra: dict | None = None
) -> pl.DataFrame:
    """Dataset rows (Date, Code, Close, returns_1d, target_{h}d) from per-code closes on S (None: no row)."""
    rows = []
    for code, cl in closes.items():
        prev = None
        for k, c in enumerate(cl):
            if c is None:
                continue
            r = {"Date": S[k], "Code": code, "Close": float(c), "returns_1d": None if prev is None else c / prev - 1}
            for h in horizons:
                a = cl[k + lag] if k + lag < len(cl) else None
                b = cl[k + lag + h] if k + lag + h < len(cl) else None
                r[f"target_{h}d"] = None if a is None or b is None else b / a - 1
            for name, per_code in (extra or {}).items():
                r[name] = per_code[code][k] if isinstance(per_code[code], list) else per_code[code]
            rows.append(r)
            prev = c
    return pl.DataFrame(rows, infer_schema_length=None).sort("Code", "Date")


def _preds(ds: pl.DataFrame, dates: list[date], h: int) -> pl.DataFrame:
    """Predictions on `dates` for every listed code: pred = the code's index (c9 highest, c0 lowest)."""
    return (
        ds.filter(pl.col("Date").is_in(dates))
        .with_columns(pl.col("Code").str.slice(1, 3).cast(pl.Float64).alias(f"pred_{h}d"))
        .select("Date", "Code", f"pred_{h}d", f"target_{h}d")
    )


def _flat(n: int = 20, price: float = 1000.0) -> list[float]:
    return [price] * n


# ---- names that stop trading while held -----------------------------------------------------------------------
def test_delisted_long_name_loses_its_delisting_return():
    closes = {c: _flat() for c in CODES}
    closes[CODES[9]] = [1000.0, 1000.0, 900.0, 800.0] + [None] * 16  # delisted after D3: last close 800
    ds = _dataset(closes)
    preds = _preds(ds, [S[0]], 5)
    assert preds.filter(pl.col("Code") == CODES[9])["target_5d"].to_list() == [None]  # the label cannot exist
    res = backtest(preds, horizon=5, cost_bps=0.0, min_names=5, market=market_from_frame(ds))
    pos = res.positions.filter(pl.col("side") == 1)
    assert pos["Code"].to_list() == [CODES[8], CODES[9]]  # the universe did not drop it on t
    c9 = pos.filter(pl.col("Code") == CODES[9]).row(0, named=True)
    assert c9["status"] == "delisted" and c9["r"] == pytest.approx(800 / 1000 - 1)
    # one cohort of 1/5 of the capital: c9's −20 % arrives on the sessions it fell (D1→D2, D2→D3), then nothing
    assert res.daily["gross"].to_list() == pytest.approx([0.1 * -0.1, 0.1 * -0.1, 0.0, 0.0, 0.0])
    assert res.summary["positions"]["delisted"] == 1 and res.summary["positions"]["normal"] == 3
    # without prices the missing label is not invented: r = 0, counted as unpriced
    one_day = ds.select("Date", "Code", "target_1d")
    bare = backtest(preds.join(one_day, on=["Date", "Code"]), horizon=5, cost_bps=0.0, min_names=5)
    assert bare.summary["positions"]["unpriced"] == 1
    assert bare.positions.filter(pl.col("Code") == CODES[9])["r"].to_list() == [0.0]


def test_suspended_name_is_carried_and_realises_on_resumption():
    closes = {c: _flat() for c in CODES}
    c9 = [1000.0] * 5 + [1100.0, None, None, 1200.0] + [1250.0] * 11  # no rows on D6 (exit of D0), D7
    closes[CODES[9]] = c9
    ds = _dataset(closes)
    res = backtest(_preds(ds, [S[0]], 5), horizon=5, cost_bps=0.0, min_names=5, market=market_from_frame(ds))
    row = res.positions.filter(pl.col("Code") == CODES[9]).row(0, named=True)
    assert row["status"] == "suspended" and row["r"] == pytest.approx(1200 / 1000 - 1)  # the next available close
    # 1/5 of the capital: +10 % on D4→D5; the exit on D6 finds no close, the rest (1100→1200) is booked at the exit
    assert res.daily["gross"].to_list() == pytest.approx([0.0, 0.0, 0.0, 0.1 * 0.1, 0.1 * 0.1])
    assert res.summary["positions"]["suspended"] == 1


def test_name_without_an_entry_close_is_unfilled():
    closes = {c: _flat() for c in CODES}
    closes[CODES[8]] = [1000.0, None] + [1500.0] * 18  # suspended on the entry session D1
    ds = _dataset(closes)
    res = backtest(_preds(ds, [S[0]], 1), horizon=1, cost_bps=0.0, min_names=5, market=market_from_frame(ds))
    row = res.positions.filter(pl.col("Code") == CODES[8]).row(0, named=True)
    assert row["status"] == "unfilled" and row["w"] == 0.0 and row["r"] == 0.0
    assert res.summary["positions"]["unfilled"] == 1


def test_universe_on_t_is_identical_whether_or_not_future_rows_exist():
    closes = {c: [1000.0 + 10 * k * (j - 4) for k in range(20)] for j, c in enumerate(CODES)}
    closes[CODES[1]] = closes[CODES[1]][:4] + [None] * 16  # delisted after D3
    closes[CODES[6]] = closes[CODES[6]][:3] + [None] * 3 + closes[CODES[6]][6:]  # suspended D3..D5
    full = _dataset(closes)
    t = S[2]
    known = _dataset({c: v[:3] + [None] * 17 for c, v in closes.items()})  # the dataset as built on t
    for h in (1, 5):
        a = eligible(_preds(full, [t], h), h)
        b = eligible(_preds(known, [t], h), h)
        assert a.select("Date", "Code", "p").equals(b.select("Date", "Code", "p"))
        assert a.height == 10 and a["y"].null_count() > 0 and b["y"].null_count() == 10
        c = BacktestConfig.from_any(None, horizon=h)
        assert _ranked_legs(a, c, False)[0].equals(_ranked_legs(b, c, False)[0])


# ---- schedule ------------------------------------------------------------------------------------------------
def test_h5_forms_a_cohort_every_session_and_a_missing_date_leaves_its_share_in_cash():
    ds = _dataset({c: [1000.0 + k * (j + 1) for k in range(20)] for j, c in enumerate(CODES)})
    market = market_from_frame(ds)
    full = backtest(_preds(ds, S[:14], 5), horizon=5, min_names=5, market=market)
    # cohorts on D0..D13 (entry D1..D14, exit D6..D19); rows until the last cohort's last session
    assert full.summary["n_cohorts"] == 14 and full.daily["Date"].to_list() == S[:18]
    assert full.summary["calendar"] == "dataset sessions" and full.summary["n_missing_dates"] == 0
    # a session without predictions forms no cohort (counted); its 1/5 of the capital is cash for 5 sessions
    res = backtest(_preds(ds, [d for d in S[:14] if d != S[2]], 5), horizon=5, min_names=5, market=market)
    assert res.summary["n_missing_dates"] == 1 and res.summary["n_cohorts"] == 13
    assert res.daily["Date"].to_list() == S[:18] and res.daily["n_long"][2] == 0
    gap = (full.daily["exposure"] - res.daily["exposure"]).to_list()
    assert gap[:2] == [0.0, 0.0] and all(0.39 < g < 0.41 for g in gap[2:7]) and gap[7:] == pytest.approx([0.0] * 11)
    # dates whose exit session lies beyond the data are not realised (counted)
    res = backtest(_preds(ds, S[:20], 5), horizon=5, min_names=5, market=market)
    assert res.summary["n_cohorts"] == 14 and res.summary["n_unrealised_dates"] == 6


# ---- trading realism on a 10-stock book -----------------------------------------------------------------------
def test_shorts_only_where_borrowable_filled_from_the_next_names():
    borrow = {c: (0 if c == CODES[0] else 1) for c in CODES}
    ds = _dataset({c: _flat() for c in CODES}, extra={"is_borrowable": borrow})
    preds = _preds(ds, S[:3], 1)
    both, headline = backtest_both(preds, {"min_names": 5}, market_from_frame(ds), source="synthetic")
    assert headline == "realistic"  # portfolio.realism: realistic for every source (issue 21: TSE-like costs)
    short = lambda r: r.positions.filter(pl.col("side") == -1).filter(pl.col("Date") == S[0])["Code"].to_list()
    assert short(both["ideal"]) == [CODES[0], CODES[1]]
    assert short(both["realistic"]) == [CODES[1], CODES[2]]  # c0 not loan-eligible: c2 fills the leg
    b = both["realistic"].summary["realism"]["borrow"]
    assert b["applied"] and b["source"] == "dataset is_borrowable" and b["short_names_passed_over"] == 3
    assert BacktestConfig.from_any({"realism": "auto"}).headline("jquants") == "realistic"
    assert BacktestConfig.from_any({"realism": "auto"}).headline("synthetic") == "ideal"
    # without the data the rule is reported unavailable, not silently applied
    bare = backtest(preds, min_names=5, realistic=True).summary["realism"]["borrow"]
    assert bare == {"enabled": True, "available": False, "applied": False, "source": None, "short_names_passed_over": 0}


def test_borrowability_from_margin_interest_is_point_in_time():
    mi = pl.DataFrame(
        {
            "PubDate": [S[0], S[4], S[1]],
            "Date": [S[0] - timedelta(days=6)] * 2 + [S[0]],
            "Code": [CODES[0], CODES[0], CODES[1]],
            "IssType": ["1", "2", "2"],
        }
    ).lazy()
    keys = pl.DataFrame({"Date": S[:7] * 2, "Code": [CODES[0]] * 7 + [CODES[1]] * 7})
    out = borrowable_from_margin(mi, keys, S).sort("Code", "Date")
    # c0: type 1 from D1 (the session after PubDate D0), type 2 only from D5 (after PubDate D4); c1 from D2
    assert out.filter(pl.col("Code") == CODES[0])["borrowable"].to_list() == [False] * 5 + [True] * 2
    assert out.filter(pl.col("Code") == CODES[1])["borrowable"].to_list() == [False] * 2 + [True] * 5


def test_price_limit_flags_skip_new_entries_only():
    # UL on D1 (the entry close of signal D0) for c9 and on D2 for c8; LL on D1 for c0
    ul = {c: [0] * 20 for c in CODES}
    ll = {c: [0] * 20 for c in CODES}
    ul[CODES[9]][1] = 1
    ul[CODES[8]][2] = 1
    ll[CODES[0]][1] = 1
    ds = _dataset({c: _flat() for c in CODES}, extra={"UL": ul, "LL": ll})
    res = backtest(_preds(ds, S[:3], 1), min_names=5, cost_bps=0.0, market=market_from_frame(ds), realistic=True)
    held = {d: res.positions.filter(pl.col("Date") == d).sort("Code")["Code"].to_list() for d in S[:3]}
    assert held[S[0]] == [CODES[1], CODES[8]]  # c9 (new long) and c0 (new short) hit their limits
    assert held[S[1]] == [CODES[0], CODES[1], CODES[8], CODES[9]]  # c8 limit-up on D2 but already held: kept
    lim = res.summary["realism"]["price_limits"]
    assert lim["source"] == "UL/LL flags" and lim["skipped_long"] == 1 and lim["skipped_short"] == 1
    assert res.positions.filter(pl.col("Date") == S[0])["w"].abs().sum() == pytest.approx(1.0)  # skipped = cash


def test_price_limit_table_from_the_previous_close():
    ref = pl.DataFrame({"ref": [99.0, 100.0, 999.0, 1000.0, 2_999.0, 49_999_999.0, 60_000_000.0]})
    lim = ref.select(price_limit(pl.col("ref")).alias("lim"))["lim"].to_list()
    assert lim == [30, 50, 150, 300, 500, 7_000_000, 10_000_000]
    assert len(LIMITS) == 34
    closes = {c: _flat(20, 99.0) for c in CODES}
    closes[CODES[9]] = [99.0, 129.0] + [129.0] * 18  # +30 on a 99 yen base: limit-up
    closes[CODES[8]] = [99.0, 128.0] + [128.0] * 18  # +29: not at the limit
    closes[CODES[0]] = [99.0, 69.0] + [69.0] * 18  # −30: limit-down
    m = market_from_frame(_dataset(closes))
    d1 = m.rows.filter(pl.col("Date") == S[1]).sort("Code")
    assert m.sources["price_limits"] == "TSE price-limit table"
    assert d1["limit_up"].to_list() == [False] * 9 + [True]
    assert d1["limit_down"].to_list() == [True] + [False] * 9


def test_round_lots_with_capital():
    prices = {c: 1000.0 for c in CODES}
    prices[CODES[9]] = 6000.0  # one lot = 600,000 yen > its 500,000 target
    prices[CODES[8]] = 1234.0
    ds = _dataset({c: _flat(20, p) for c, p in prices.items()})
    res = backtest(
        _preds(ds, S[:2], 1),
        min_names=5,
        cost_bps=0.0,
        market=market_from_frame(ds),
        realistic=True,
        capital=1_000_000.0,
        price_limits=False,
    )
    d0 = res.positions.filter(pl.col("Date") == S[0]).sort("Code")
    assert d0["Code"].to_list() == [CODES[0], CODES[1], CODES[8]]  # c9 skipped
    assert d0.filter(pl.col("Code") == CODES[8])["w"][0] == pytest.approx(400 * 1234 / 1e6)  # 4 lots of 100
    assert d0.filter(pl.col("Code") == CODES[0])["w"][0] == pytest.approx(-0.5)  # 5 lots at 1000
    lots = res.summary["realism"]["round_lots"]
    assert lots["applied"] and lots["skipped"] == 2  # c9 on both dates


def test_flat_and_spread_impact_costs_by_hand():
    ds = _dataset(
        {c: _flat() for c in CODES},
        extra={"volume_ma_20": {c: 1e5 for c in CODES}, "volatility_20d": {c: 0.02 * math.sqrt(252) for c in CODES}},
    )
    preds = _preds(ds, S[:2], 1).join(ds.select("Date", "Code", "volume_ma_20", "Close"), on=["Date", "Code"])
    c = {
        "min_names": 5,
        "capital": 1e7,
        "commission_bps": 1.0,
        "half_spread_bps": 3.0,
        "impact_coef": 0.5,
        "cost_model": "spread_impact",
        "borrow_fee_annual": 0.0252,
        "periods_per_year": 252,
    }
    res = backtest(preds, cfg=c, market=market_from_frame(ds))  # the ideal book: net pays flat, the TSE model reported
    d = res.daily
    # build on D0: four names of |w| 0.5; ADV = 1e5 shares x 1000 yen; σ = 2 % a day; no High/Low: the half-spread is
    # half a tick (1 yen at 1,000 yen: 5 bps); borrow 0.0252/252 = 1 bp a session on the short gross 1
    per_name = 0.5 * (1e-4 + 5e-4 + 0.5 * 0.02 * math.sqrt(0.5 * 1e7 / 1e8))
    assert d["cost_spread_impact"][0] == pytest.approx(4 * per_name + 1e-4)
    assert d["cost_flat"][0] == pytest.approx(2.0 * 5e-4)
    assert d["cost"][0] == d["cost_flat"][0] and d["cost_spread_impact"][1] == pytest.approx(1e-4)  # D1: borrow only
    by = res.summary["by_cost_model"]
    assert by["flat"]["total_cost"] == pytest.approx(1e-3) and "impact" in by["spread_impact"]["charged"]
    assert res.summary["cost_model"] == "spread_impact"
    real = backtest(preds, cfg=c, market=market_from_frame(ds), realistic=True, lot_size=0)
    assert real.daily["cost"].to_list() == real.daily["cost_spread_impact"].to_list()  # the realistic book pays it


def test_sharpe_tstat_is_newey_west():
    ds = _dataset({c: [1000.0 * (1 + 0.01 * ((k * (j + 3)) % 7 - 3)) for k in range(20)] for j, c in enumerate(CODES)})
    res = backtest(_preds(ds, S[:18], 1), min_names=5, market=market_from_frame(ds))
    s = res.summary
    from gogooku3.evaluation.metrics import mean_tstat

    t = mean_tstat(res.daily["net"], 1)
    assert s["sharpe_tstat"] == pytest.approx(t["tstat"]) and s["hac_lag"] == t["hac_lag"]
    assert s["tstat_method"] == "newey_west" and s["sharpe_tstat_naive"] == pytest.approx(t["tstat_naive"])
