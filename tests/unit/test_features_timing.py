"""When outside information becomes visible: statements by disclosure time vs the close, weekly data the session
after publication, Japanese holidays from the calendar (never weekday arithmetic)."""

from __future__ import annotations

import dataclasses
import datetime as dt

import polars as pl
import pytest

from gogooku3.core.calendar import TradingCalendar
from gogooku3.features.statements import effective_dates

D = dt.date


@pytest.fixture(scope="module")
def xtks() -> TradingCalendar:
    return TradingCalendar.from_exchange("XTKS", "2023-12-01", "2025-03-31")


def eff(cal, cfg, rows):
    st = pl.DataFrame(
        {"DiscDate": [r[0] for r in rows], "DiscTime": [r[1] for r in rows]},
        schema={"DiscDate": pl.Date, "DiscTime": pl.Utf8},
    )
    return effective_dates(st, cal, dataclasses.asdict(cfg.features.statements)).to_list()


def test_statement_effective_dates(xtks, cfg):
    rows = [
        (D(2024, 3, 12), "13:00:00"),  # before the close: that session
        (D(2024, 3, 12), "15:00:00"),  # at the close: next session
        (D(2024, 3, 12), "16:30"),  # after the close, HH:MM
        (D(2024, 3, 12), None),  # no time: next session
        (D(2024, 1, 5), "15:30:00"),  # Friday after the close, Monday 2024-01-08 is Coming of Age Day
        (D(2024, 1, 6), "10:00:00"),  # a Saturday: next session
        (D(2024, 10, 31), "15:15:00"),  # before 2024-11-05 the close is 15:00
        (D(2024, 11, 5), "15:15:00"),  # from 2024-11-05 the close is 15:30
        (D(2024, 11, 5), "15:30:00"),
        (D(2024, 12, 30), "16:00:00"),  # year end: next session is 2025-01-06
    ]
    assert eff(xtks, cfg, rows) == [
        D(2024, 3, 12),
        D(2024, 3, 13),
        D(2024, 3, 13),
        D(2024, 3, 13),
        D(2024, 1, 9),
        D(2024, 1, 9),
        D(2024, 11, 1),
        D(2024, 11, 5),
        D(2024, 11, 6),
        D(2025, 1, 6),
    ]


def test_half_day_close(cfg):
    sessions = [D(2024, 3, 11), D(2024, 3, 12), D(2024, 3, 13)]
    cal = TradingCalendar.from_table(pl.DataFrame({"Date": sessions, "HolDiv": ["1", "2", "1"]}))
    assert eff(
        cal, cfg, [(D(2024, 3, 12), "11:00:00"), (D(2024, 3, 12), "12:00:00"), (D(2024, 3, 11), "12:00:00")]
    ) == [D(2024, 3, 12), D(2024, 3, 13), D(2024, 3, 11)]


def test_statement_features_switch_on_the_effective_session(mini_built, mini_tables, mini_calendar):
    st = mini_tables["statements"].sort("Code", "DiscDate")
    df = mini_built.df
    for row in st.head(4).iter_rows(named=True):
        s = df.filter(pl.col("Code") == row["Code"])
        d = row["DiscDate"]
        before = row["DiscTime"] is not None and row["DiscTime"] < "15:00:00"
        expect = d if before else mini_calendar.next_after(pl.Series([d]))[0]
        imp = s.filter(pl.col("stmt_imp_statement") == 1)["Date"].to_list()
        assert expect in imp
        on = s.filter(pl.col("Date") == expect)
        assert on["stmt_days_since_statement"][0] == 0
        assert on["stmt_opm"][0] == pytest.approx(row["OP"] / row["Sales"], rel=1e-5)
        prev = s.filter(pl.col("Date") < expect).tail(1)
        if prev.height and prev["stmt_opm"][0] is not None:
            assert prev["stmt_opm"][0] != pytest.approx(row["OP"] / row["Sales"], rel=1e-9)


def test_weekly_data_only_from_the_session_after_publication(mini_built, mini_tables, mini_calendar):
    df = mini_built.df
    inv = mini_tables["investor_types"].filter(pl.col("Section") == "TSEPrime").sort("PubDate")
    code = df.filter(pl.col("Section") == "TSEPrime")["Code"][0]
    s = df.filter(pl.col("Code") == code)
    starts = s.filter(pl.col("flow_impulse") == 1)["Date"].to_list()
    pubs = inv["PubDate"].filter(inv["PubDate"] <= s["Date"].max())
    expected = [d for d in mini_calendar.next_after(pubs).to_list() if d is not None and d <= s["Date"].max()]
    assert starts == expected
    for pub, start in list(zip(pubs.to_list(), expected, strict=True))[:5]:
        row = inv.filter(pl.col("PubDate") == pub)
        on_pub = s.filter(pl.col("Date") == pub)
        on_start = s.filter(pl.col("Date") == start)
        want = row["FrgnBal"][0] / row["FrgnTot"][0]
        assert on_start["flow_foreign_net_ratio"][0] == pytest.approx(want, rel=1e-5)
        assert on_pub["flow_foreign_net_ratio"][0] is None or on_pub["flow_foreign_net_ratio"][0] != pytest.approx(
            want, rel=1e-9
        )
    mg = s.filter(pl.col("margin_impulse") == 1)["Date"].to_list()
    mpub = mini_tables["margin_interest"].filter(pl.col("Code") == code)["PubDate"]
    assert mg == [d for d in mini_calendar.next_after(mpub).to_list() if d <= s["Date"].max()]


def test_weekly_publication_before_a_holiday(cfg):
    """A Thursday publication before a Friday holiday (2024-02-23, Emperor's Birthday) is effective on Monday."""
    from gogooku3.features.flows import weekly_features

    cal = TradingCalendar.from_exchange("XTKS", "2024-01-01", "2024-03-31")
    row = {"PubDate": D(2024, 2, 22), "Section": "TSEPrime"}
    for i in ("Frgn", "Ind", "Prop", "Brk", "TrstBnk", "InvTr", "Tot"):
        row |= {f"{i}Tot": 10.0, f"{i}Bal": 1.0}
    wk = weekly_features(pl.DataFrame([row]), cal, dataclasses.asdict(cfg.features.flows))
    assert wk["_eff"].to_list() == [D(2024, 2, 26)]


def test_section_mapping_and_fallback(mini_factory, cfg):
    from gogooku3.features.build import build_features

    t = mini_factory()
    t["listed_info"] = t["listed_info"].with_columns(
        pl.when(pl.col("Code") == t["listed_info"]["Code"][5])
        .then(pl.lit("0199"))
        .otherwise(pl.col("Mkt"))
        .alias("Mkt")
    )
    b = build_features(t, TradingCalendar.from_table(t["trading_calendar"]), cfg.features, cfg.labels)
    first = b.df.group_by("Code", maintain_order=True).first()
    assert first["Section"].to_list() == [
        "TSEPrime",
        "TSEStandard",
        "TSEGrowth",
        "TSEPrime",
        "TSEStandard",
        "AllMarket",
    ]
    assert first["is_section_fallback"].to_list() == [0, 0, 0, 0, 0, 1]
    fb = b.df.filter(pl.col("Section") == "AllMarket")
    assert fb["flow_foreign_net_ratio"].null_count() == fb.height and fb["is_flow_valid"].sum() == 0
    grow = b.df.filter(pl.col("Section") == "TSEGrowth")
    assert grow["is_flow_valid"].sum() > 0.9 * grow.height


def test_listed_info_is_as_of(mini_factory, cfg):
    """A sector change is visible from its snapshot date on, never before."""
    t = mini_factory()
    code = t["listed_info"]["Code"][0]
    change = t["daily_quotes"]["Date"].unique().sort()[100]
    t["listed_info"] = pl.concat(
        [
            t["listed_info"],
            t["listed_info"]
            .filter(pl.col("Code") == code)
            .with_columns(pl.lit(change).alias("Date"), pl.lit("9050").alias("S33")),
        ]
    )
    from gogooku3.features.build import build_features

    b = build_features(t, TradingCalendar.from_table(t["trading_calendar"]), cfg.features, cfg.labels)
    s = b.df.filter(pl.col("Code") == code)
    assert set(s.filter(pl.col("Date") < change)["S33"]) == {"0050"}
    assert set(s.filter(pl.col("Date") >= change)["S33"]) == {"9050"}
