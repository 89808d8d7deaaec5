"""Hostile or broken user files (issue 20): each is refused (or repaired) with one clear line naming file, column and
rows, nothing written; no column that knows a future return becomes a feature, by its name or by its values."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from gogooku3.config.compose import load_config
from gogooku3.core.calendar import TradingCalendar
from gogooku3.core.errors import DataError
from gogooku3.features.build import build_features
from gogooku3.features.leak_check import forward_windows
from gogooku3.sources import schema
from gogooku3.sources.file_checks import label_like_column
from gogooku3.sources.files import import_files
from gogooku3.sources.schema import read_table

JP_DAYS = ["2024-01-04", "2024-01-05", "2024-01-09", "2024-01-10"]  # XTKS sessions (01-08 a holiday)


def _cfg(tmp_path: Path, *overrides: str):
    return load_config(["data=files", f"paths.raw_dir={tmp_path / 'raw'}", *overrides])


def _csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _raw_files(tmp_path: Path) -> dict[str, bytes]:
    raw = tmp_path / "raw"
    return {p.name: p.read_bytes() for p in raw.iterdir()} if raw.exists() else {}


def _refused(tmp_path: Path, f: Path, pattern: str, *overrides: str) -> str:
    """Import `f` over a previous good import: a one-line DataError starting with the file, nothing written."""
    good = _csv(tmp_path / "good.csv", "Date,Code,Close", [f"{d},A,{100 + i}" for i, d in enumerate(JP_DAYS)])
    import_files(_cfg(tmp_path), good)
    before = _raw_files(tmp_path)
    with pytest.raises(DataError, match=pattern) as err:
        import_files(_cfg(tmp_path, *overrides), f)
    msg = str(err.value)
    assert msg.startswith(str(f)) and "\n" not in msg, msg
    assert _raw_files(tmp_path) == before
    return msg


# ---- 1a. label-like names -------------------------------------------------------------------------------------------
LABEL_NAMES = [
    "target",
    "target_5d",
    "fwd_ret_1d",
    "label_1d",
    "y_1d",
    "feat_ret_1d",
    "next_day_return",
    "NextDayReturn",
    "ret_fwd_5d",
    "forward_return",
    "future_ret",
    "lead_ret_1d",
    "return_t+1",
    "fwdret",
]
HONEST_NAMES = ["PER", "yield", "forward_pe", "forward_eps", "next_earnings_days", "leader_score", "lead_time", "ytd"]


@pytest.mark.parametrize("name", LABEL_NAMES)
def test_label_like_names(name):
    assert label_like_column(name)


@pytest.mark.parametrize("name", HONEST_NAMES)
def test_honest_names(name):
    assert not label_like_column(name)


def test_label_like_columns_are_refused_by_name_and_the_allow_list_keeps_them(tmp_path):
    rows = [f"{d},A,{100 + i},{0.01 * i},{i},{2 * i}" for i, d in enumerate(JP_DAYS)]
    f = _csv(tmp_path / "p.csv", "Date,Code,Close,fwd_ret_1d,label_1d,PER", rows)
    msg = _refused(tmp_path, f, r"column\(s\) 'fwd_ret_1d', 'label_1d' read like a label or a future return")
    assert "data.allow_columns=[fwd_ret_1d,label_1d]" in msg
    _refused(tmp_path, f, "'fwd_ret_1d'", "data.extra_columns=[fwd_ret_1d]")  # an explicit list is no exemption
    import_files(_cfg(tmp_path, "data.allow_columns=[fwd_ret_1d,label_1d]"), f)
    cols = read_table(tmp_path / "raw", "daily_quotes").columns
    assert {"x_fwd_ret_1d", "x_label_1d", "x_per"} <= set(cols)


# ---- 1b. the content check at build time ---------------------------------------------------------------------------
def _panel(n_stocks: int = 30, n_days: int = 80, seed: int = 0) -> tuple[pl.DataFrame, TradingCalendar]:
    """Close-only quotes on weekdays with an innocently named column `x_signal` = the next session's return and an
    honest weak one `x_weak` (0.1 of the next return's z-score plus unit noise: daily RankIC about 0.1)."""
    rng = np.random.default_rng(seed)
    days = [d for d in (dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(n_days * 2)) if d.weekday() < 5]
    days = days[:n_days]
    r = rng.normal(0, 0.02, (n_days, n_stocks))
    px = 100 * np.exp(np.cumsum(r, axis=0))
    nxt = np.vstack([px[1:] / px[:-1] - 1, np.full((1, n_stocks), np.nan)])
    weak = 0.1 * np.nan_to_num(nxt) / 0.02 + rng.normal(size=nxt.shape)
    dq = pl.DataFrame(
        {
            "Date": [d for d in days for _ in range(n_stocks)],
            "Code": [f"{i:04d}" for i in range(n_stocks)] * n_days,
            "AdjC": px.ravel(),
            "x_signal": nxt.ravel(),
            "x_weak": weak.ravel(),
        }
    ).with_columns(pl.col("x_signal").fill_nan(None))
    return dq, TradingCalendar.from_dates(pl.Series(days))


def test_forward_windows_cover_the_labels_and_the_entry_lag():
    assert forward_windows([1, 5], 1) == [(0, 1), (0, 5), (1, 2), (1, 6)]
    assert forward_windows([2], 0) == [(0, 2)]


def test_a_column_that_is_the_next_days_return_is_refused_whatever_its_name():
    cfg = load_config()
    dq, cal = _panel()
    with pytest.raises(DataError) as err:
        build_features({"daily_quotes": dq}, cal, cfg.features, cfg.labels)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("daily_quotes column 'x_signal' tracks a future return: median |daily RankIC| 1.00 with ")
    assert "from t+0 to t+1 sessions" in msg and "above 0.5 on 100% of 79 days" in msg
    assert "features.user.allow=[x_signal]" in msg and "x_weak" not in msg


def test_an_honest_weak_signal_is_accepted_and_the_allow_list_keeps_a_flagged_column():
    cfg = load_config()
    dq, cal = _panel()
    b = build_features({"daily_quotes": dq.drop("x_signal")}, cal, cfg.features, cfg.labels)
    assert b.groups["x_weak"] == "user"
    user = dataclasses.replace(cfg.features.user, allow=["x_signal"])
    b = build_features({"daily_quotes": dq}, cal, dataclasses.replace(cfg.features, user=user), cfg.labels)
    assert {"x_signal", "x_weak"} <= set(b.groups)


def test_too_few_stocks_a_day_are_not_judged():
    cfg = load_config()
    dq, cal = _panel(n_stocks=6)  # below features.user.min_stocks=10: RankIC over 6 names is noise
    assert "x_signal" in build_features({"daily_quotes": dq}, cal, cfg.features, cfg.labels).groups


# ---- 2. a file cut off mid-row ---------------------------------------------------------------------------------------
def test_a_csv_cut_off_mid_row_is_refused_naming_the_line(tmp_path):
    f = tmp_path / "cut.csv"
    f.write_text(
        "Date,Code,Open,High,Low,Close,Volume\n"
        "2024-01-04,A,150,152,147,151,1000\n"
        "2024-01-05,A,150,152,147,151,1000\n"
        "2024-01-09,A,150,152,147,15"
    )
    _refused(tmp_path, f, r"1 row\(s\) have fewer fields than the header \(7\): line 4 \(6 field\(s\): '2024-01-09,A")
    blank = _csv(tmp_path / "b.csv", "Date,Code,Close", ["2024-01-04,A,1", "", "2024-01-05,A,2"])
    _refused(tmp_path, blank, r"1 row\(s\) have fewer fields than the header \(3\): line 3 \(empty\)")
    quoted = _csv(
        tmp_path / "q.csv", "Date,Code,Close,Name", [f'{d},A,{100 + i},"Foo, Inc."' for i, d in enumerate(JP_DAYS)]
    )
    import_files(_cfg(tmp_path, "data.extra_columns=none"), quoted)  # separators inside quotes are no fields


# ---- 3. OHLC consistency -------------------------------------------------------------------------------------------
def test_high_below_low_is_refused_with_rows(tmp_path):
    rows = [f"{d},A,100,{95 if i >= 2 else 102},98,101" for i, d in enumerate(JP_DAYS)]
    f = _csv(tmp_path / "p.csv", "Date,Code,Open,High,Low,Close", rows)
    msg = _refused(tmp_path, f, r"column 'High' is below the day's Open/Close/Low in 2 row\(s\): row 3 ")
    assert "High=95.0" in msg and "Low=98.0" in msg and "data.ohlc_tolerance" in msg


def test_partial_ohlc_checks_what_is_there(tmp_path):
    f = _csv(
        tmp_path / "p.csv",
        "Date,Code,Low,Close",
        [f"{d},A,{103 if i == 1 else 99},{100 + i}" for i, d in enumerate(JP_DAYS)],
    )
    _refused(
        tmp_path,
        f,
        r"column 'Low' is above the day's Close in 1 row\(s\): row 2",
        "data.columns.open=null",
        "data.columns.high=null",
    )
    ok = _csv(
        tmp_path / "ok.csv", "Date,Code,High,Close", [f"{d},A,{100.05 + i},{100 + i}" for i, d in enumerate(JP_DAYS)]
    )
    import_files(_cfg(tmp_path, "data.columns.open=null", "data.columns.low=null"), ok)
    rounded = _csv(
        tmp_path / "r.csv", "Date,Code,High,Close", [f"{d},A,{99.95 + i},{100 + i}" for i, d in enumerate(JP_DAYS)]
    )
    import_files(_cfg(tmp_path, "data.columns.open=null", "data.columns.low=null"), rounded)  # within 0.1 %


# ---- 4. time zones ---------------------------------------------------------------------------------------------------
def test_utc_timestamps_of_tokyo_midnight_land_on_the_tokyo_date(tmp_path):
    stamps = ["2024-01-03T15:00:00Z", "2024-01-04T15:00:00Z", "2024-01-09T00:00:00+09:00", "2024-01-09T15:00:00.000Z"]
    f = _csv(tmp_path / "p.csv", "Date,Code,Close", [f"{s},A,{100 + i}" for i, s in enumerate(stamps)])
    import_files(_cfg(tmp_path), f)
    got = read_table(tmp_path / "raw", "daily_quotes")["Date"].cast(pl.Utf8).to_list()
    assert got == JP_DAYS
    p = tmp_path / "p.parquet"
    pl.DataFrame(
        {"Date": pl.Series([dt.datetime(2024, 1, 3, 15), dt.datetime(2024, 1, 4, 15)]).dt.replace_time_zone("UTC")}
    ).with_columns(pl.lit("A").alias("Code"), pl.Series("Close", [1.0, 2.0])).write_parquet(p)
    import_files(_cfg(tmp_path, "data.calendar=dates"), p)  # dates: the zone of features.calendar_exchange (XTKS)
    assert read_table(tmp_path / "raw", "daily_quotes")["Date"].cast(pl.Utf8).to_list() == JP_DAYS[:2]
    # New York: a date written as UTC midnight stays that date; a 16:00 close in UTC is that New York day
    us = _csv(tmp_path / "us.csv", "Date,Code,Close", ["2024-01-04T00:00:00Z,A,1", "2024-01-05T21:00:00Z,A,2"])
    import_files(_cfg(tmp_path, "data.calendar=XNYS"), us)
    assert read_table(tmp_path / "raw", "daily_quotes")["Date"].cast(pl.Utf8).to_list() == ["2024-01-04", "2024-01-05"]


def test_naive_times_of_day_are_refused_and_midnight_is_a_date(tmp_path):
    f = _csv(tmp_path / "p.csv", "Date,Code,Close", ["2024-01-04 00:00:00,A,1", "2024-01-04 15:00,B,2"])
    msg = _refused(tmp_path, f, r"column 'Date' has times of day without a time zone in 1 row\(s\): row 2")
    assert "Asia/Tokyo" in msg
    ok = _csv(tmp_path / "ok.csv", "Date,Code,Close", ["2024-01-04 00:00:00,A,1", "2024-01-05T00:00,A,2"])
    import_files(_cfg(tmp_path), ok)
    assert read_table(tmp_path / "raw", "daily_quotes")["Date"].cast(pl.Utf8).to_list() == JP_DAYS[:2]


def test_dates_one_day_early_get_a_hint_about_time_zones(tmp_path):
    early = ["2024-01-03", "2024-01-04", "2024-01-07", "2024-01-08"]  # the UTC dates of Tokyo midnights
    f = _csv(tmp_path / "p.csv", "Date,Code,Close", [f"{d},A,{100 + i}" for i, d in enumerate(early)])
    msg = _refused(tmp_path, f, "has rows on days that are not XTKS trading sessions")
    assert "2 of these rows fall the day before a session" in msg and "2024-01-04T15:00:00Z" in msg
    assert "data.calendar=dates takes the file's dates as the sessions" in msg


# ---- 5. bad ticks --------------------------------------------------------------------------------------------------
def _ticks(tmp_path: Path, closes: list[float], name: str = "t.csv") -> Path:
    days = TradingCalendar.from_exchange("XTKS", "2024-01-04", "2024-03-29").sessions.to_list()[: len(closes)]
    return _csv(tmp_path / name, "Date,Code,Close", [f"{d},A,{c}" for d, c in zip(days, closes, strict=True)])


def test_a_one_day_bad_tick_is_refused_or_logged(tmp_path, caplog):
    closes = [100.0, 101.0, 101000.0, 102.0, 101.0]
    msg = _refused(tmp_path, _ticks(tmp_path, closes), r"column 'Close' has one-day spikes .* in 1 row\(s\): row 3 ")
    assert "Close=101000.0" in msg and "data.bad_ticks=warn" in msg
    import_files(_cfg(tmp_path, "data.bad_ticks=warn"), _ticks(tmp_path, closes))
    assert "one-day spikes" in caplog.text
    assert read_table(tmp_path / "raw", "daily_quotes").height == 5


def test_a_lasting_jump_is_no_bad_tick(tmp_path):
    closes = [100.0, 101.0, 10.1, 10.2, 10.0]  # a 10:1 move that lasts (an unadjusted split, left to adjust_splits)
    import_files(_cfg(tmp_path), _ticks(tmp_path, closes))
    assert read_table(tmp_path / "raw", "daily_quotes").height == 5


# ---- 6. float32 range --------------------------------------------------------------------------------------------
def test_values_beyond_float32_are_refused(tmp_path):
    f = _csv(tmp_path / "p.csv", "Date,Code,Close,PER", ["2024-01-04,A,1e308,1", "2024-01-05,A,2,1e39"])
    _refused(tmp_path, f, r"column 'Close' has values beyond float32's range .* in 1 row\(s\): row 1 \(Close=1e\+308\)")


# ---- 7. encodings, duplicate headers, interrupted imports ----------------------------------------------------------
def test_utf16_files_are_read_and_utf16_without_a_mark_is_named(tmp_path):
    text = "Date,Code,Close\n" + "".join(f"{d},A,{100 + i}\n" for i, d in enumerate(JP_DAYS))
    f = tmp_path / "u16.csv"
    f.write_bytes(text.encode("utf-16"))
    import_files(_cfg(tmp_path), f)
    assert read_table(tmp_path / "raw", "daily_quotes")["AdjC"].to_list() == [100.0, 101.0, 102.0, 103.0]
    g = tmp_path / "u16le.csv"
    g.write_bytes(text.encode("utf-16-le"))
    _refused(tmp_path, g, r"cannot read CSV: the file holds NUL bytes \(UTF-16 without a byte-order mark")
    sj = tmp_path / "sjis.csv"
    sj.write_bytes("Date,Code,Close,Name\n2024-01-04,A,1,トヨタ\n".encode("cp932"))
    _refused(tmp_path, sj, r"cannot read CSV .*save it as UTF-8")


def test_a_header_naming_a_column_twice_is_refused(tmp_path):
    f = _csv(tmp_path / "p.csv", "Date,Code,Close,PER,Close", ["2024-01-04,A,1,2,3"])
    _refused(tmp_path, f, r"the header names column 'Close' twice \(columns 3 and 5\)")


def test_an_interrupted_import_is_named_and_a_new_import_repairs_it(tmp_path, monkeypatch):
    good = _csv(tmp_path / "good.csv", "Date,Code,Close", [f"{d},A,{100 + i}" for i, d in enumerate(JP_DAYS)])
    import_files(_cfg(tmp_path, "data.calendar=dates"), good)
    written = schema._write_conformed

    def killed(df, raw_dir, name):
        if name == "trading_calendar":
            raise KeyboardInterrupt  # the process dies between two tables
        return written(df, raw_dir, name)

    monkeypatch.setattr(schema, "_write_conformed", killed)
    with pytest.raises(KeyboardInterrupt):
        import_files(_cfg(tmp_path), good)
    monkeypatch.undo()
    with pytest.raises(
        DataError, match=rf"the last import into it \(files\) was interrupted .*run `gogooku3 data import {good}` again"
    ):
        read_table(tmp_path / "raw", "daily_quotes")

    from typer.testing import CliRunner

    from gogooku3.cli import app

    out = CliRunner().invoke(
        app, ["data", "build", f"paths.raw_dir={tmp_path / 'raw'}", f"paths.output_dir={tmp_path / 'out'}"]
    )
    assert out.exit_code == 2, out.output
    lines = [x for x in out.output.splitlines() if x.startswith("error: ")]
    assert len(lines) == 1 and "was interrupted" in lines[0], out.output
    import_files(_cfg(tmp_path), good)
    assert read_table(tmp_path / "raw", "daily_quotes").height == 4


def test_refusals_through_the_cli_are_one_line_and_exit_2(tmp_path):
    from typer.testing import CliRunner

    from gogooku3.cli import app

    f = _csv(tmp_path / "p.csv", "Date,Code,Open,High,Low,Close", ["2024-01-04,A,100,95,98,101"])
    out = CliRunner().invoke(app, ["data", "import", str(f), f"paths.raw_dir={tmp_path / 'raw'}"])
    assert out.exit_code == 2, out.output
    lines = [x for x in out.output.splitlines() if x.startswith("error: ")]
    assert len(lines) == 1 and "column 'High' is below the day's Open/Close/Low" in lines[0], out.output
    assert not (tmp_path / "raw").exists()
