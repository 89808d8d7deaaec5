"""Likely unadjusted splits in users' raw prices: detected with code, date and ratio; warn | adjust | off."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from gogooku3.config.compose import load_config
from gogooku3.core.calendar import TradingCalendar
from gogooku3.core.errors import ConfigError
from gogooku3.sources.corporate_actions import (
    adjust_splits,
    check_splits,
    detect_splits,
)
from gogooku3.sources.files import import_files
from gogooku3.sources.schema import read_table

DAYS = TradingCalendar.from_exchange("XNYS", "2022-01-03", "2022-12-30").sessions.to_list()
# code -> (ex-date row, price multiplier): a 1:2 split, a 1:4 split and a 10:1 reverse split
PLANTED = {"S03": (100, 0.5), "S11": (180, 0.25), "S20": (60, 10.0)}


def raw_prices(n: int = 30, seed: int = 0, volume: bool = True) -> pl.DataFrame:
    """Raw daily OHLCV of n random walks (2 % daily vol) over XNYS 2022 with the PLANTED splits left unadjusted."""
    rng = np.random.default_rng(seed)
    t = len(DAYS)
    r = rng.normal(0, 0.02, (t, n))
    adj = 50 * np.exp(np.cumsum(r, axis=0))
    k = np.ones((t, n))
    planted = {int(code[1:]): v for code, v in PLANTED.items() if int(code[1:]) < n}
    for j, (row, mult) in planted.items():
        k[:row, j] = 1 / mult  # raw before the ex-date = adjusted / multiplier
    close = adj * k
    opn = np.vstack([close[:1], close[:-1] * np.exp(rng.normal(0, 0.005, (t - 1, n)))])
    for j, (row, mult) in planted.items():
        opn[row, j] = close[row - 1, j] * mult * np.exp(rng.normal(0, 0.005))
    vo = rng.lognormal(12, 0.4, (t, n)) / k
    codes = [f"S{j:02d}" for j in range(n)]
    df = pl.DataFrame(
        {
            "Date": np.repeat(np.array(DAYS, dtype="datetime64[D]"), n).astype("datetime64[D]"),
            "Code": codes * t,
            "O": opn.ravel(),
            "C": close.ravel(),
            "Vo": vo.ravel(),
        }
    )
    df = df.with_columns(
        pl.col("Date").cast(pl.Date), pl.col("C").alias("AdjC"), pl.col("O").alias("AdjO"), pl.col("Vo").alias("AdjVo")
    )
    return df if volume else df.select("Date", "Code", "C", "AdjC")


def test_planted_splits_are_found_with_code_date_and_ratio_and_nothing_else():
    found = detect_splits(raw_prices())
    got = {(r["Code"], r["Date"], r["ratio"], r["evidence"]) for r in found.iter_rows(named=True)}
    assert got == {
        ("S03", DAYS[100], "1:2", "volume"),
        ("S11", DAYS[180], "1:4", "volume"),
        ("S20", DAYS[60], "10:1", "volume"),
    }


def test_without_volume_only_a_tight_price_match_counts():
    found = detect_splits(raw_prices(volume=False))
    # close to close carries the day's own move too: the planted 2 % vol leaves some within 2 % of the ratio
    assert set(found["evidence"]) <= {"price"} and set(found["Code"]) <= set(PLANTED)
    assert found.height >= 1


def test_a_real_minus_50_percent_day_without_volume_evidence_is_not_a_split():
    df = raw_prices(n=6)
    crash = (pl.col("Code") == "S01") & (pl.col("Date") >= DAYS[150])
    df = df.with_columns(
        [pl.when(crash).then(pl.col(x) * 0.5).otherwise(pl.col(x)).alias(x) for x in ("O", "C", "AdjO", "AdjC")]
    )  # price halves, volume unchanged
    assert "S01" not in detect_splits(df)["Code"].to_list()


def test_adjust_makes_the_adjusted_series_continuous_and_records_the_factor():
    raw = raw_prices()
    out = adjust_splits(raw, detect_splits(raw))
    assert out.columns == [*raw.columns, "AdjFactor"] and out.height == raw.height
    s = out.filter(pl.col("Code") == "S03").sort("Date")
    assert s["C"].equals(raw.filter(pl.col("Code") == "S03").sort("Date")["C"])  # raw untouched
    r = (s["AdjC"] / s["AdjC"].shift(1)).log().abs()
    assert r.max() < 0.15  # no -69 % day left
    af = s["AdjFactor"].to_list()
    assert af[100] == 0.5 and af[:100] + af[101:] == [1.0] * (len(af) - 1)
    assert s["AdjC"][:100].to_numpy() == pytest.approx(s["C"][:100].to_numpy() * 0.5)
    assert s["AdjVo"][:100].to_numpy() == pytest.approx(s["Vo"][:100].to_numpy() * 2.0)
    rev = out.filter(pl.col("Code") == "S20").sort("Date")
    assert rev["AdjFactor"][60] == 10.0 and rev["AdjC"][0] == pytest.approx(rev["C"][0] * 10.0)
    assert detect_splits(out).height == 0  # nothing left to find


def test_policies(caplog):
    raw = {"daily_quotes": raw_prices()}
    caplog.set_level("INFO")
    same = check_splits(raw, "warn", "p.csv")
    assert same["daily_quotes"] is raw["daily_quotes"]
    assert "3 likely unadjusted split(s): S03 2022-05-26 1:2" in caplog.text
    assert "set data.adjust_splits=adjust" in caplog.text
    caplog.clear()
    assert check_splits(raw, "off", "p.csv") is raw and not caplog.text
    adj = check_splits(raw, "adjust", "p.csv")["daily_quotes"]
    assert adj["AdjFactor"].to_list().count(0.25) == 1
    with pytest.raises(ConfigError, match=r"data.adjust_splits='yes' must be one of warn, adjust, off"):
        check_splits(raw, "yes", "p.csv")


def test_files_import_adjusts_on_request(tmp_path: Path, caplog):
    f = tmp_path / "raw.csv"
    raw_prices(n=25).rename({"O": "open", "C": "close", "Vo": "volume"}).select(
        "Date", "Code", "open", "close", "volume"
    ).write_csv(f)
    keys = [
        "data=files",
        f"paths.raw_dir={tmp_path / 'raw'}",
        "data.calendar=XNYS",
        "data.columns.open=open",
        "data.columns.close=close",
        "data.columns.volume=volume",
        "data.columns.high=null",
        "data.columns.low=null",
    ]
    caplog.set_level("WARNING")
    import_files(load_config(keys), f)  # default: warn, prices unchanged
    assert "S03 2022-05-26 1:2" in caplog.text
    assert "AdjFactor" not in read_table(tmp_path / "raw", "daily_quotes").columns
    import_files(load_config([*keys, "data.adjust_splits=adjust"]), f)
    dq = read_table(tmp_path / "raw", "daily_quotes").filter(pl.col("Code") == "S11").sort("Date")
    assert dq["AdjFactor"][180] == 0.25 and dq["AdjC"][0] == pytest.approx(dq["C"][0] * 0.25)
    assert dq["Date"][180] == DAYS[180]
