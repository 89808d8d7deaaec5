"""The synthetic TSE market: contracts of the raw tables, realism checks and the planted signal."""

from __future__ import annotations

import math
import re

import numpy as np
import polars as pl
import pytest

from gogooku3.config.compose import load_config
from gogooku3.core.calendar import TradingCalendar
from gogooku3.core.errors import ConfigError
from gogooku3.sources import schema
from gogooku3.sources.synthetic import (
    ORACLE_FILE,
    SynthParams,
    oracle_ic_daily,
    oracle_rank_ic,
    realized_labels,
    simulate_market,
    synthesize,
)
from gogooku3.sources.synthetic.statements import close_time
from gogooku3.sources.synthetic.universe import SECTORS33

SMALL = SynthParams(n_stocks=40, n_days=300, seed=11)
WIDE = SynthParams(n_stocks=150, n_days=300, seed=5)


@pytest.fixture(scope="module")
def market() -> dict[str, pl.DataFrame]:
    return simulate_market(SMALL)


@pytest.fixture(scope="module")
def wide() -> dict[str, pl.DataFrame]:
    return simulate_market(WIDE)


def test_deterministic_for_a_seed():
    p = SynthParams(n_stocks=12, n_days=60, seed=3)
    a, b = simulate_market(p), simulate_market(p)
    for name in a:
        assert a[name].equals(b[name]), name
    c = simulate_market(p.replace(seed=4))
    assert not a["daily_quotes"].equals(c["daily_quotes"])


JQUANTS_ONLY = {"UL", "LL", "TrShFY", "NxFSales", "NxFOP", "NxFNp", "NxFEPS", "NxFDivAnn"}


def test_every_table_passes_the_schema(market):
    assert set(schema.TABLES) | {"oracle"} == set(market)
    for name, spec in schema.TABLES.items():
        df = schema.conform(market[name], name)
        # every column of the contract is provided, except what only J-Quants sends (limit flags, treasury shares,
        # next-year forecasts): the synthetic market has no daily price limits and no FY forecast revisions
        assert set(spec.columns) - JQUANTS_ONLY <= set(df.columns), name
        assert df.height > 0


def test_only_xtks_sessions_and_full_calendar(market):
    dates = market["daily_quotes"]["Date"].unique().sort()
    xtks = TradingCalendar.from_exchange("XTKS", dates[0], "2025-12-30").sessions
    assert dates.is_in(xtks.implode()).all()
    assert len(dates) == SMALL.n_days and dates[-1].isoformat() == "2025-12-30"
    cal = market["trading_calendar"]
    days = (cal["Date"][-1] - cal["Date"][0]).days + 1
    assert cal.height == days and cal["Date"].is_sorted()
    assert set(cal["HolDiv"].unique()) == {"0", "1"}
    assert cal.filter(pl.col("HolDiv") == "1")["Date"].equals(dates)
    assert market["topix"]["Date"].equals(dates)


def test_codes_sectors_and_segments(market, wide):
    info = market["listed_info"]
    assert info["Code"].is_unique().all()
    assert all(re.fullmatch(r"[1-9]\d{3}0", c) for c in info["Code"])
    assert set(market["daily_quotes"]["Code"].unique()) == set(info["Code"])
    w = wide["listed_info"]
    assert w["S33"].n_unique() == 33 and w["S17"].n_unique() == 17
    for s33, s17 in w.select("S33", "S17").unique().rows():
        assert SECTORS33[s33][0] == s17
    shares = w["Mkt"].value_counts(normalize=True).sort("Mkt")
    assert shares["Mkt"].to_list() == ["0111", "0112", "0113"]
    prime = shares["proportion"][0]
    assert 0.3 < prime < 0.6
    assert set(w.filter(pl.col("Mkt") != "0111")["ScaleCat"]) == {"-"}


def test_ohlc_volume_consistency(market):
    q = market["daily_quotes"]
    for pre in ("", "Adj"):
        o, h, lo, c = (q[f"{pre}{x}"] for x in "OHLC")
        assert (h >= np.maximum(o, c) - 1e-9).all() and (lo <= np.minimum(o, c) + 1e-9).all()
    assert (q["Vo"] % 100 == 0).all() and (q["Vo"] > 0).all()
    assert np.allclose(q["Va"], q["C"] * q["Vo"])
    assert q.select("Code", "Date").is_duplicated().sum() == 0
    assert q.equals(q.sort("Code", "Date"))


def _with_cum(q: pl.DataFrame) -> pl.DataFrame:
    """cum = prod_{s>t} AdjFactor(s) per code (J-Quants convention)."""
    return q.sort("Code", "Date").with_columns(
        (pl.col("AdjFactor").log().reverse().cum_sum().reverse().over("Code") - pl.col("AdjFactor").log())
        .exp()
        .alias("cum")
    )


def test_split_adjustment_convention(market):
    q = _with_cum(market["daily_quotes"])
    ex = q.filter(pl.col("AdjFactor") != 1.0)
    assert ex.height >= 1
    assert np.allclose(q["AdjC"], q["C"] * q["cum"], rtol=1e-9)
    assert np.allclose(q["AdjO"], q["O"] * q["cum"], rtol=1e-9)
    assert np.allclose(q["AdjVo"], q["Vo"] / q["cum"], rtol=1e-9)
    jumps = q.with_columns(
        (pl.col("C") / pl.col("C").shift().over("Code")).log().alias("raw_lr"),
        (pl.col("AdjC") / pl.col("AdjC").shift().over("Code")).log().alias("adj_lr"),
    ).filter(pl.col("AdjFactor") != 1.0)
    for f, raw_lr, adj_lr in jumps.select("AdjFactor", "raw_lr", "adj_lr").rows():
        assert abs(adj_lr) < 0.25  # adjusted close continuous across the ex-date
        assert abs(raw_lr - math.log(f)) < 0.25 and abs(raw_lr) > 0.5  # raw close jumps by the split ratio


def test_ipo_delisting_and_missing_days(market):
    q = market["daily_quotes"]
    first, last = q["Date"].min(), q["Date"].max()
    span = q.group_by("Code").agg(pl.col("Date").min().alias("a"), pl.col("Date").max().alias("b"), pl.len())
    assert (span["a"] > first).any()  # IPO
    assert (span["b"] < last).any()  # delisting
    ses = q["Date"].unique().sort()
    idx = pl.DataFrame({"Date": ses, "i": np.arange(len(ses))})
    gaps = span.join(idx.rename({"Date": "a", "i": "ia"}), on="a").join(idx.rename({"Date": "b", "i": "ib"}), on="b")
    assert (gaps["ib"] - gaps["ia"] + 1 > gaps["len"]).any()  # some suspended days


def test_statements_timing(market):
    st = market["statements"]
    ses = market["daily_quotes"]["Date"].unique()
    assert st["DiscDate"].is_in(ses.implode()).all()
    assert set(st["CurPerType"].unique()) == {"1Q", "2Q", "3Q", "FY"}
    closes = close_time(st["DiscDate"].to_numpy().astype("datetime64[D]"))
    after = st["DiscTime"].to_numpy() >= closes
    assert after.any() and (~after).any() and after.mean() > 0.3
    assert st.select("Code", "DiscDate").is_duplicated().sum() == 0
    lag = (st["DiscDate"] - st["CurFYSt"]).dt.total_days()
    assert (lag > 0).all()
    assert (st["ShOut"] > 0).all() and np.allclose(st["EPS"], st["NP"] / st["ShOut"])
    fy = st.filter(pl.col("CurPerType") == "FY")
    assert ((fy["CurFYEn"] - fy["CurFYSt"]).dt.total_days().is_between(360, 366)).all()


def test_weekly_tables_publication_lag(market):
    it = market["investor_types"]
    assert set(it["Section"].unique()) == {"TSEPrime", "TSEStandard", "TSEGrowth"}
    assert (it["PubDate"] > it["EnDate"]).all() and (it["EnDate"] >= it["StDate"]).all()
    assert np.allclose(it["TotBal"], 0.0) and np.allclose(it["FrgnTot"], it["FrgnSell"] + it["FrgnBuy"])
    mi = market["margin_interest"]
    assert (mi["PubDate"] > mi["Date"]).all()
    assert np.allclose(mi["ShrtVol"], mi["ShrtNegVol"] + mi["ShrtStdVol"])


def test_topix_continuous(market):
    tp = market["topix"]
    lr = np.diff(np.log(tp["C"].to_numpy()))
    assert np.abs(lr).max() < 0.15
    assert (tp["H"] >= np.maximum(tp["O"], tp["C"]) - 1e-9).all()
    assert (tp["L"] <= np.minimum(tp["O"], tp["C"]) + 1e-9).all()


def test_oracle_rank_ic_positive_at_default(wide):
    ic = {h: oracle_rank_ic(wide, h) for h in (1, 5)}
    assert ic[1] > 0.06 and ic[5] > 0.06
    daily = oracle_ic_daily(wide, 1)
    assert daily.height > 250 and daily["n"].min() >= 5


def test_oracle_is_flat_and_uninformative_without_signal():
    zero = simulate_market(WIDE.replace(signal_strength=0.0))
    assert zero["oracle"]["oracle_1d"].n_unique() == 1  # alpha == 0: every stock has the same expectation
    # the oracle's ranking of an (almost) signal-free market carries nothing about realised returns
    tiny = simulate_market(WIDE.replace(signal_strength=1e-3, seed=8))
    ic = oracle_ic_daily(tiny, 1)["rank_ic"]
    assert abs(ic.mean()) < 4 * ic.std() / math.sqrt(len(ic)) + 0.005


def test_realized_labels_follow_the_definition(market):
    q = market["daily_quotes"]
    ses = q["Date"].unique().sort()
    full = q.group_by("Code").len().filter(pl.col("len") == len(ses))["Code"].sort()  # no IPO/delisting/gap
    code = full[0]
    px = q.filter(pl.col("Code") == code)["AdjC"].to_numpy()
    lab = realized_labels(q, 5, 1, market["trading_calendar"]).filter(pl.col("Code") == code).sort("Date")
    expect = px[6:] / px[1:-5] - 1.0  # AdjC(t+1+5) / AdjC(t+1) - 1
    got = lab["target_5d"].to_numpy()
    assert np.allclose(got[: len(expect)], expect) and lab["target_5d"].tail(6).is_null().all()


def test_synthesize_writes_raw_tables_and_keeps_oracle_apart(tmp_path):
    raw, oracle = tmp_path / "raw", tmp_path / "oracle"
    cfg = load_config(
        [f"paths.raw_dir={raw}", f"paths.oracle_dir={oracle}", "data.n_stocks=15", "data.n_days=80", "seed=2"]
    )
    paths = synthesize(cfg)
    assert paths["oracle"] == oracle / ORACLE_FILE and paths["oracle"].exists()
    assert not any("oracle" in p.name for p in raw.iterdir())
    for name in schema.TABLES:
        df = schema.read_table(raw, name)
        assert df is not None and not any(c.startswith("oracle") for c in df.columns)
    orc = pl.read_parquet(paths["oracle"])
    assert orc.columns == ["Code", "Date", "oracle_1d", "oracle_5d", "oracle_10d", "oracle_20d"]
    assert orc.height == schema.read_table(raw, "daily_quotes").height


def test_params_from_config_and_validation():
    cfg = load_config(["data.n_stocks=33", "data.signal_strength=0.5", "seed=9"])
    p = SynthParams.from_config(cfg)
    assert (p.n_stocks, p.signal_strength, p.seed, p.n_days) == (33, 0.5, 9, 750)
    with pytest.raises(ConfigError):
        SynthParams(n_stocks=2)
    with pytest.raises(ConfigError):
        SynthParams(signal_strength=-1.0)
    with pytest.raises(ConfigError):
        simulate_market(SynthParams(n_stocks=10, n_days=30, end_date="1997-01-10"))  # before XTKS's first session
