"""The realistic book's TSE cost model (backtest/costs.py): tick floor, Corwin-Schultz half-spread, square-root
impact, participation cap, borrow, limit-locked exits carried; the synthetic market's TSE-like liquidity; capacity."""

from __future__ import annotations

import math
from datetime import date, timedelta

import numpy as np
import polars as pl
import pytest

from gogooku3.core.tse_ticks import tick_size_np
from gogooku3.evaluation.backtest.capacity import capacity
from gogooku3.evaluation.backtest.config import BacktestConfig
from gogooku3.evaluation.backtest.costs import fill_trades, session_costs
from gogooku3.evaluation.backtest.engine import backtest
from gogooku3.evaluation.backtest.market import corwin_schultz, half_spread_from_hlc, market_from_frame, tick_size
from gogooku3.sources.synthetic import SynthParams, simulate_market
from gogooku3.sources.synthetic import universe as U

D = [date(2024, 1, 1) + timedelta(days=k) for k in range(12)]
CODES = [f"1{j:03d}0" for j in range(10)]


def _cfg(**kw) -> BacktestConfig:
    base = {"commission_bps": 2.0, "impact_coef": 0.7, "participation_cap": 0.1, "borrow_fee_annual": 0.01}
    return BacktestConfig.from_any({**base, **kw})


# ---- spread: tick floor and Corwin-Schultz -----------------------------------------------------------------------
def test_tick_table_bands_and_floor():
    prices = [999.0, 3_000.0, 3_001.0, 5_000.0, 5_001.0, 30_000.0, 30_001.0, 60_000_000.0]
    ticks = [1, 1, 5, 5, 10, 10, 50, 100_000]
    assert tick_size_np(np.array(prices)).tolist() == ticks
    expr = pl.DataFrame({"p": prices}).select(tick_size(pl.col("p")).alias("t"))["t"].to_list()
    assert expr == ticks


def test_corwin_schultz_on_a_pure_bid_ask_range():
    # no volatility: both days trade between the same bid (99) and ask (101), so β = 2x², γ = x² with x = ln(101/99),
    # α = x and S = 2(e^x − 1)/(1 + e^x) = 2(101 − 99)/(101 + 99) = 2 %: the quoted spread over the mid
    f = pl.DataFrame({"h0": [101.0], "l0": [99.0], "h1": [101.0], "l1": [99.0]})
    s = f.select(corwin_schultz(pl.col("h0"), pl.col("l0"), pl.col("h1"), pl.col("l1")).alias("s"))["s"][0]
    assert s == pytest.approx(0.02)
    # per row of a dataset: half of it (1 %), above the tick floor (1 yen at 100: 0.5 %); a 0.4 % range falls to it
    rows = [
        {"Date": D[k], "Code": c, "Open": 100.0, "High": hi, "Low": lo, "Close": 100.0, "returns_1d": 0.0}
        for c, hi, lo in (("A", 101.0, 99.0), ("B", 100.2, 99.8))
        for k in range(4)
    ]
    m = market_from_frame(pl.DataFrame(rows), spread_window=3)
    hs = m.rows.sort("Code", "Date")
    assert hs.filter(pl.col("Code") == "A")["half_spread"].to_list()[1:] == pytest.approx([0.01] * 3)
    assert hs.filter(pl.col("Code") == "B")["half_spread"].to_list() == pytest.approx([0.005] * 4)  # the tick floor
    assert m.sources["half_spread"].startswith("Corwin-Schultz")


def test_half_spread_puts_the_previous_day_into_todays_share_basis():
    # a 1:2 split between the days: yesterday's 202/198 is 101/99 in today's basis, no spurious 2-day range
    f = pl.DataFrame(
        {
            "Code": ["A", "A"],
            "Open": [200.0, 100.0],
            "High": [202.0, 101.0],
            "Low": [198.0, 99.0],
            "Close": [200.0, 100.0],
            "returns_1d": [0.0, 0.0],
        }
    )
    out = f.with_columns(hs=half_spread_from_hlc(1, with_open=True))["hs"].to_list()
    assert out[1] == pytest.approx(0.01)


# ---- costs, fills ------------------------------------------------------------------------------------------------
def test_session_costs_by_hand():
    c = _cfg()
    trades = pl.DataFrame({"Date": [D[0], D[0]], "Code": ["A", "B"], "dw": [0.01, -0.04]})
    mkt = pl.DataFrame(
        {"Date": [D[0]] * 2, "Code": ["A", "B"], "adv": [1e9, 4e9], "vol": [0.02, 0.01], "half_spread": [5e-4, 2e-3]}
    )
    shorts = pl.DataFrame({"Date": [D[0]], "short": [1.0]})
    out, how = session_costs(trades, shorts, mkt, 1e9, c, sessions_per_year=250.0)
    r = out.row(0, named=True)
    # A: ¥10 M of ¥1 bn ADV: impact 0.7·2 %·√0.01 = 14 bps; B: ¥40 M of ¥4 bn: 0.7·1 %·√0.01 = 7 bps
    assert r["commission"] == pytest.approx(0.05 * 2e-4)
    assert r["spread"] == pytest.approx(0.01 * 5e-4 + 0.04 * 2e-3)
    assert r["impact"] == pytest.approx(0.01 * 14e-4 + 0.04 * 7e-4)
    assert r["borrow"] == pytest.approx(0.01 / 250)  # 1 %/yr on a short gross of 1, one session
    assert r["total"] == pytest.approx(r["commission"] + r["spread"] + r["impact"] + r["borrow"])
    assert "sqrt impact" in how and "borrow" in how


def test_participation_cap_carries_the_rest_to_the_next_sessions():
    # ADV ¥100 M, capital ¥1 bn, cap 10 %: at most 0.01 of capital a session; a 0.025 order fills 0.01, 0.01, 0.005
    c = _cfg()
    trades = pl.DataFrame({"Date": [D[0]], "Code": ["A"], "dw": [0.025]})
    growth = pl.DataFrame({"Date": D[:4], "Code": ["A"] * 4, "g": [None, 1.0, 1.0, 1.0]})
    mkt = pl.DataFrame({"Date": D[:4], "Code": ["A"] * 4, "adv": [1e8] * 4, "at_e": [True] * 4})
    filled, dev, unfilled = fill_trades(trades, growth, mkt, 1e9, c, limits=True)
    assert filled["dw"].to_list() == pytest.approx([0.01, 0.01, 0.005])
    assert dev["D"].to_list() == pytest.approx([-0.015, -0.005])  # held − wanted after each session
    assert unfilled["reason"].to_list() == ["cap", "cap"]


def test_a_locked_exit_is_carried_and_its_drift_retraded():
    # held 0.5 (bought on D0), sold on D1 at a limit-down close: no fill; on D2 the price is 10 % lower, the
    # retried sale is 0.5·0.9 = 0.45 of capital; a halted name (no row on e) does not trade either
    c = _cfg()
    trades = pl.DataFrame({"Date": [D[0], D[1], D[0]], "Code": ["A", "A", "B"], "dw": [0.5, -0.5, 0.2]})
    growth = pl.DataFrame({"Date": D[:3] * 2, "Code": ["A"] * 3 + ["B"] * 3, "g": [None, 1.0, 0.9, None, 1.0, 1.0]})
    mkt = pl.DataFrame(
        {
            "Date": D[:3] * 2,
            "Code": ["A"] * 3 + ["B"] * 3,
            "limit_down": [False, True, False, False, False, False],
            "at_e": [True, True, True, False, True, True],
        }
    )
    filled, _, unfilled = fill_trades(trades, growth, mkt, 1e9, c, limits=True)
    a = filled.filter(pl.col("Code") == "A")
    assert a["Date"].to_list() == [D[0], D[2]] and a["dw"].to_list() == pytest.approx([0.5, -0.45])
    assert filled.filter(pl.col("Code") == "B")["Date"].to_list() == [D[1]]  # halted on D0, bought on D1
    assert unfilled.sort("Code")["reason"].to_list() == ["limit", "halt"]
    without = fill_trades(trades, growth, mkt, 1e9, c, limits=False)[0].filter(pl.col("Code") == "A")
    assert without["dw"].to_list() == pytest.approx([0.5, -0.5])


def _toy(closes: dict[str, list[float]]) -> pl.DataFrame:
    rows = []
    for code, cl in closes.items():
        for k, px in enumerate(cl):
            rows.append(
                {
                    "Date": D[k],
                    "Code": code,
                    "Close": px,
                    "returns_1d": None if k == 0 else px / cl[k - 1] - 1,
                    "target_1d": cl[k + 2] / cl[k + 1] - 1 if k + 2 < len(cl) else None,
                }
            )
    return pl.DataFrame(rows)


def test_backtest_carries_an_exit_locked_at_limit_down():
    # c9 is the top long on D0 (entry at D1's close, 1,000 yen) and leaves the book on D1; at D2's close (its
    # exit) it is limit-down (700 = 1,000 − 300, the TSE table) and it falls to 600 on D3: the realistic book
    # holds it (worth 0.5·0.7 of capital by then) one more session and pays the opportunity cost 0.35·(1 − 600/700)
    closes = {c: [1000.0] * 6 for c in CODES}
    closes[CODES[9]] = [1000.0, 1000.0, 700.0, 600.0, 600.0, 600.0]
    ds = _toy(closes)
    pred = ds.filter(pl.col("Date").is_in(D[:2])).with_columns(
        pred_1d=pl.when((pl.col("Code") == CODES[9]) & (pl.col("Date") == D[1]))
        .then(4.5)
        .otherwise(pl.col("Code").str.slice(1, 3).cast(pl.Float64))
    )
    kw = {"min_names": 5, "borrow_only": False, "lot_size": 0, "commission_bps": 0.0, "borrow_fee_annual": 0.0}
    res = backtest(pred, cfg=kw, market=market_from_frame(ds), realistic=True)
    re_ = res.summary["realism"]
    assert re_["fills"]["unfilled_orders"]["limit"] == 1
    assert re_["costs"]["opportunity"] == pytest.approx(0.35 * (1 - 600 / 700))
    ideal = backtest(pred, cfg=kw, market=market_from_frame(ds))
    assert ideal.daily["net"].sum() > res.daily["net"].sum()


def test_capacity_impact_grows_as_the_square_root_of_capital():
    rng = np.random.default_rng(0)
    closes = {c: list(1000.0 * np.cumprod(1 + 0.01 * rng.standard_normal(12))) for c in CODES}
    ds = _toy(closes).with_columns(volume_ma_20=pl.lit(1e8), volatility_20d=pl.lit(0.02 * math.sqrt(252)))
    pred = ds.filter(pl.col("Date").is_in(D[:9])).with_columns(pred_1d=pl.col("target_1d"))
    cfg = {"min_names": 5, "lot_size": 0, "borrow_only": False, "participation_cap": 1.0}
    rows = capacity(pred, cfg, market_from_frame(ds), [1e8, 1e10])
    small, big = rows[0]["costs"], rows[1]["costs"]
    assert big["impact"] == pytest.approx(10 * small["impact"])  # √(100): no cap binds at participation_cap 1
    assert big["spread"] == pytest.approx(small["spread"]) and rows[0]["sharpe"] > rows[1]["sharpe"]


def test_report_capacity_reuses_the_realistic_book_run_at_the_configured_capital():
    from gogooku3.evaluation.report import _capacity

    rng = np.random.default_rng(1)
    closes = {c: list(1000.0 * np.cumprod(1 + 0.01 * rng.standard_normal(12))) for c in CODES}
    ds = _toy(closes).with_columns(volume_ma_20=pl.lit(1e6), volatility_20d=pl.lit(0.02 * math.sqrt(252)))
    pred = ds.filter(pl.col("Date").is_in(D[:9])).with_columns(pred_1d=pl.col("target_1d"))
    c = _cfg(min_names=5, lot_size=0, borrow_only=False, capital=1e9, capacity_capitals=[1e8, 1e9, 1e10])
    market = market_from_frame(ds)
    run = {"realistic": backtest(pred, cfg=c, market=market, realistic=True)}
    reused, fresh = _capacity(pred, c, market, run), capacity(pred, c, market)
    flat = lambda rows: pl.json_normalize(rows).to_dicts()
    # the engine's cost sums vary in the last bit from run to run (the same call twice), hence approx
    assert [r["capital"] for r in reused] == [1e8, 1e9, 1e10]
    assert flat(reused) == [pytest.approx(r, rel=1e-12) for r in flat(fresh)]


# ---- the synthetic market's liquidity ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synth() -> dict[str, pl.DataFrame]:
    return simulate_market(SynthParams(n_stocks=300, n_days=120, seed=21))


def test_synthetic_adv_per_segment_in_the_tse_ranges(synth):
    # median yen ADV per segment (see sources/synthetic/universe.py): Prime ~¥0.3-2 bn with a long right tail,
    # Standard ~¥10-100 M, Growth ~¥50-500 M
    q = synth["daily_quotes"].join(synth["listed_info"].select("Code", "Mkt"), on="Code")
    adv = q.group_by("Code", "Mkt").agg(adv=pl.col("Va").mean())
    by = {r["Mkt"]: r for r in adv.group_by("Mkt").agg(med=pl.median("adv"), mean=pl.mean("adv")).to_dicts()}
    assert 3e8 <= by["0111"]["med"] <= 2e9 and by["0111"]["mean"] > 2 * by["0111"]["med"]
    assert 1e7 <= by["0112"]["med"] <= 1e8
    assert 5e7 <= by["0113"]["med"] <= 5e8


def test_synthetic_spreads_per_segment_and_recovered_by_corwin_schultz(synth):
    q = synth["daily_quotes"].sort("Code", "Date")
    ds = q.select(
        "Date",
        "Code",
        Open="O",
        High="H",
        Low="L",
        Close="C",
        returns_1d=pl.col("AdjC") / pl.col("AdjC").shift(1).over("Code") - 1,
    )
    est = market_from_frame(ds).rows.group_by("Code").agg(pl.col("half_spread").drop_nulls().median())
    seg = synth["listed_info"].select("Code", "Mkt")
    by = est.join(seg, on="Code").group_by("Mkt").agg(pl.median("half_spread"))
    med = {r["Mkt"]: r["half_spread"] * 1e4 for r in by.to_dicts()}
    assert 3 <= med["0111"] <= 15  # bps: Prime a tick or two
    assert 20 <= med["0112"] <= 80 and 20 <= med["0113"] <= 80


def test_liquidity_calibration_does_not_move_prices(monkeypatch):
    p = SynthParams(n_stocks=30, n_days=40, seed=3)
    a = simulate_market(p)["daily_quotes"]
    monkeypatch.setattr(U, "TURNOVER_MEDIAN", (0.02, 0.02, 0.02))
    monkeypatch.setattr(U, "HALF_SPREAD_BPS", (50.0, 50.0, 50.0))
    b = simulate_market(p)["daily_quotes"]
    for col in ("O", "C", "AdjC", "AdjO"):
        assert a[col].equals(b[col]), col
    assert not a["Vo"].equals(b["Vo"]) and (b["H"] >= a["H"]).all()
