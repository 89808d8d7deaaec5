"""Files source: a user's CSV/parquet mapped to raw tables; bad input -> one clear error, nothing written."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest

from gogooku3.config.compose import load_config
from gogooku3.core.errors import ConfigError, DataError
from gogooku3.sources.files import import_files
from gogooku3.sources.schema import read_table, table_path

# XTKS sessions: 2024-01-04 (Thu), 01-05 (Fri), 01-09 (Tue; 01-08 is Coming of Age Day), 01-10 (Wed)
JP_DAYS = ["2024-01-04", "2024-01-05", "2024-01-09", "2024-01-10"]


def _cfg(tmp_path: Path, *overrides: str):
    return load_config(["data=files", f"paths.raw_dir={tmp_path / 'raw'}", *overrides])


def _write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _ohlcv_rows(codes=("01301", "72030")) -> list[str]:
    rows = []
    for i, d in enumerate(JP_DAYS):
        for j, c in enumerate(codes):
            p = 100.0 + i + 10 * j
            rows.append(f"{d},{c},{p},{p + 2},{p - 1},{p + 1},{1000 * (i + 1)},{0.5 * i},hello")
    return rows


@pytest.fixture
def ohlcv_csv(tmp_path: Path) -> Path:
    return _write_csv(tmp_path / "prices.csv", "Date,Code,Open,High,Low,Close,Volume,PER,Note", _ohlcv_rows())


def _raw_files(tmp_path: Path) -> dict[str, bytes]:
    raw = tmp_path / "raw"
    return {p.name: p.read_bytes() for p in raw.iterdir()} if raw.exists() else {}


# ---- happy paths ------------------------------------------------------------------------------------------------
def test_csv_ohlcv_with_extra_numeric_column(tmp_path, ohlcv_csv):
    out = import_files(_cfg(tmp_path), ohlcv_csv)
    assert set(out) == {"daily_quotes", "trading_calendar"}  # no sector column -> no listed_info
    dq = read_table(tmp_path / "raw", "daily_quotes")
    assert dq.height == 8 and dq["Code"].dtype == pl.Utf8
    assert set(dq["Code"]) == {"01301", "72030"}  # leading zero kept
    for col in ("O", "H", "L", "C", "Vo", "AdjO", "AdjH", "AdjL", "AdjC", "AdjVo", "x_per"):
        assert col in dq.columns, col
    assert "x_note" not in dq.columns  # non-numeric extras are skipped
    assert dq["AdjC"].to_list() == dq["C"].to_list()  # only a raw close: AdjC = C
    assert dq.filter((pl.col("Code") == "72030") & (pl.col("Date") == dt.date(2024, 1, 9)))["x_per"].item() == 1.0
    cal = read_table(tmp_path / "raw", "trading_calendar")
    assert cal.height == 7  # every day 01-04..01-10
    assert cal.filter(pl.col("HolDiv") == "1")["Date"].cast(pl.Utf8).to_list() == JP_DAYS
    assert cal.filter(pl.col("Date") == dt.date(2024, 1, 8))["HolDiv"].item() == "0"


def test_close_only_file_with_custom_mapping(tmp_path):
    f = _write_csv(
        tmp_path / "px.csv",
        "day;ticker;px",
        [f"{d};AAPL;{190 + i}" for i, d in enumerate(["2024-01-02", "2024-01-03", "2024-01-04"])],
    )
    cfg = _cfg(
        tmp_path,
        "data.separator=';'",
        "data.calendar=XNYS",
        "data.columns.date=day",
        "data.columns.code=ticker",
        "data.columns.close=px",
    )
    import_files(cfg, f)
    dq = read_table(tmp_path / "raw", "daily_quotes")
    assert sorted(dq.columns) == ["AdjC", "C", "Code", "Date"]  # O/H/L/Vo simply absent
    assert dq["AdjC"].to_list() == [190.0, 191.0, 192.0] and dq["Code"].unique().to_list() == ["AAPL"]


def test_adjusted_close_rescales_raw_open_high_low_volume(tmp_path):
    f = _write_csv(
        tmp_path / "p.csv",
        "Date,Code,Open,High,Low,Close,AdjClose,Volume",
        ["2024-01-04,A,10,12,9,11,5.5,100", "2024-01-05,A,11,12,10,12,12,100"],
    )
    import_files(_cfg(tmp_path, "data.columns.adj_close=AdjClose"), f)
    dq = read_table(tmp_path / "raw", "daily_quotes").sort("Date")
    first = dq.row(0, named=True)
    assert first["C"] == 11 and first["AdjC"] == 5.5
    assert first["AdjO"] == pytest.approx(5.0) and first["AdjH"] == pytest.approx(6.0)
    assert first["AdjVo"] == pytest.approx(200.0)
    assert dq.row(1, named=True)["AdjO"] == pytest.approx(11.0)


def test_sector_column_writes_listed_info_on_changes(tmp_path):
    rows = [
        f"{d},{c},{100 + i},{s}"
        for i, d in enumerate(JP_DAYS)
        for c, s in (("A", "Tech"), ("B", "Bank" if i < 2 else "Insurance"))
    ]
    f = _write_csv(tmp_path / "p.csv", "Date,Code,Close,Sector", rows)
    out = import_files(_cfg(tmp_path, "data.columns.sector=Sector"), f)
    assert "listed_info" in out
    li = read_table(tmp_path / "raw", "listed_info").sort("Code", "Date")
    assert li.select("Code", "S33").rows() == [("A", "Tech"), ("B", "Bank"), ("B", "Insurance")]
    assert li["Date"].to_list() == [dt.date(2024, 1, 4), dt.date(2024, 1, 4), dt.date(2024, 1, 9)]
    assert "x_sector" not in read_table(tmp_path / "raw", "daily_quotes").columns


def test_calendar_from_the_files_own_dates_allows_any_day(tmp_path):
    f = _write_csv(tmp_path / "p.csv", "Date,Code,Close", ["2024-01-06,X,1", "2024-01-07,X,2", "2024-01-09,X,3"])
    import_files(_cfg(tmp_path, "data.calendar=dates"), f)
    cal = read_table(tmp_path / "raw", "trading_calendar")
    assert cal.filter(pl.col("HolDiv") == "1")["Date"].cast(pl.Utf8).to_list() == [
        "2024-01-06",
        "2024-01-07",
        "2024-01-09",
    ]
    assert cal.filter(pl.col("Date") == dt.date(2024, 1, 8))["HolDiv"].item() == "0"


def test_parquet_with_integer_codes_datetimes_and_date_format(tmp_path):
    p = tmp_path / "p.parquet"
    pl.DataFrame(
        {
            "Date": [dt.datetime(2024, 1, 4), dt.datetime(2024, 1, 5)],
            "Code": [7203, 7203],
            "Close": [2500.0, 2510.0],
            "flag": [True, False],
        }
    ).write_parquet(p)
    import_files(_cfg(tmp_path), p)
    dq = read_table(tmp_path / "raw", "daily_quotes")
    assert dq["Code"].to_list() == ["7203", "7203"] and dq["x_flag"].to_list() == [1.0, 0.0]

    f = _write_csv(tmp_path / "eu.csv", "Date,Code,Close", ["04/01/2024,A,1", "05/01/2024,A,2"])
    import_files(_cfg(tmp_path, "data.date_format=%d/%m/%Y"), f)
    assert read_table(tmp_path / "raw", "daily_quotes")["Date"].to_list() == [dt.date(2024, 1, 4), dt.date(2024, 1, 5)]


def test_extra_columns_none_and_explicit_list(tmp_path, ohlcv_csv):
    import_files(_cfg(tmp_path, "data.extra_columns=none"), ohlcv_csv)
    assert not [c for c in read_table(tmp_path / "raw", "daily_quotes").columns if c.startswith("x_")]
    with pytest.raises(DataError, match="'Note' has non-numeric values"):
        import_files(_cfg(tmp_path, "data.extra_columns=[PER,Note]"), ohlcv_csv)


def test_rows_with_empty_close_are_dropped(tmp_path):
    f = _write_csv(tmp_path / "p.csv", "Date,Code,Close", ["2024-01-04,A,1", "2024-01-05,A,", "2024-01-09,A,NaN"])
    import_files(_cfg(tmp_path), f)
    assert read_table(tmp_path / "raw", "daily_quotes").height == 1


def test_import_without_data_files_uses_the_files_option(tmp_path, ohlcv_csv):
    """`gogooku3 data import PATH` composes data=files itself (with the command line's other keys); import_files reads
    only the composed config and refuses one of another data option instead of loading Hydra again."""
    from typer.testing import CliRunner

    from gogooku3.cli import app

    out = CliRunner().invoke(
        app, ["data", "import", str(ohlcv_csv), f"paths.raw_dir={tmp_path / 'raw'}", "data.calendar=XTKS"]
    )
    assert out.exit_code == 0, out.output
    assert read_table(tmp_path / "raw", "daily_quotes").height == 8
    cfg = load_config([f"paths.raw_dir={tmp_path / 'raw2'}"])  # data=synthetic
    with pytest.raises(
        ConfigError,
        match=r"^data\.source is 'synthetic', not 'files': compose the config with "
        r"data=files",
    ):
        import_files(cfg, ohlcv_csv)
    assert not (tmp_path / "raw2").exists()


def test_successful_import_removes_stale_tables(tmp_path, ohlcv_csv):
    raw = tmp_path / "raw"
    raw.mkdir()
    pl.DataFrame({"DiscDate": [dt.date(2024, 1, 4)], "Code": ["1"]}).write_parquet(table_path(raw, "statements"))
    import_files(_cfg(tmp_path), ohlcv_csv)
    assert not table_path(raw, "statements").exists()


# ---- bad input: one clear error, nothing written, previous tables untouched -------------------------------------
BAD_CASES = {
    "missing_column": ("Date,Ticker,Close", ["2024-01-04,A,1"], (), "missing required column 'Code'"),
    "missing_close": ("Date,Code,Price", ["2024-01-04,A,1"], (), "missing required column 'Close'"),
    "duplicate_key": (
        "Date,Code,Close",
        ["2024-01-04,A,1", "2024-01-05,A,2", "2024-01-04,A,3"],
        (),
        r"column 'Code, Date' has duplicate \(Code, Date\) keys in 2 row\(s\): "
        r"row 1 \(Code=A, Date=2024-01-04\); row 3",
    ),
    "non_positive": (
        "Date,Code,Close",
        ["2024-01-04,A,1", "2024-01-05,A,0"],
        (),
        r"column 'Close' has non-positive prices in 1 row\(s\): "
        r"row 2 \(Code=A, Date=2024-01-05, Close=0.0\)",
    ),
    "negative_volume": ("Date,Code,Close,Volume", ["2024-01-04,A,1,-5"], (), "column 'Volume' has negative values"),
    "non_trading_day": (
        "Date,Code,Close",
        ["2024-01-04,A,1", "2024-01-06,A,2"],
        (),
        r"column 'Date' has rows on days that are not XTKS trading sessions in 1 row\(s\): "
        r"row 2 \(Code=A, Date=2024-01-06 \(Sat\)\)\. Set data.calendar",
    ),
    "unparseable_date": (
        "Date,Code,Close",
        ["2024-01-04,A,1", "not-a-date,A,2"],
        (),
        r"column 'Date' has dates not in YYYY-MM-DD or YYYYMMDD.*row 2 \(Date=not-a-date\)",
    ),
    "wrong_date_format": (
        "Date,Code,Close",
        ["2024-01-04,A,1"],
        ("data.date_format=%d/%m/%Y",),
        "column 'Date' has dates not in format '%d/%m/%Y'",
    ),
    "non_numeric_price": (
        "Date,Code,Close",
        ["2024-01-04,A,1", "2024-01-05,A,abc"],
        (),
        r"column 'Close' has non-numeric values in 1 row\(s\): row 2 \(Close=abc\)",
    ),
    "empty_code": ("Date,Code,Close", ["2024-01-04,,1"], (), "column 'Code' is empty"),
    "header_only": ("Date,Code,Close", [], (), "no data rows"),
    "ragged_csv": ("Date,Code,Close", ["2024-01-04,A,1", "2024-01-05,A,2,9,9"], (), "cannot read CSV"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_csv_raises_one_clear_error_and_writes_nothing(tmp_path, ohlcv_csv, case):
    import_files(_cfg(tmp_path), ohlcv_csv)  # a previous good import
    before = _raw_files(tmp_path)
    header, rows, overrides, pattern = BAD_CASES[case]
    f = _write_csv(tmp_path / f"{case}.csv", header, rows)
    with pytest.raises(DataError, match=pattern) as err:
        import_files(_cfg(tmp_path, *overrides), f)
    msg = str(err.value)
    assert msg.startswith(str(f)) and "\n" not in msg
    assert _raw_files(tmp_path) == before  # nothing written, nothing removed


def test_empty_and_corrupt_files(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="file is empty"):
        import_files(_cfg(tmp_path), empty)
    corrupt = tmp_path / "bad.parquet"
    corrupt.write_bytes(b"PAR1 this is not really parquet")
    with pytest.raises(DataError, match="cannot read PARQUET"):
        import_files(_cfg(tmp_path), corrupt)
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"Date,Code,Close\n\xff\xfe\x00garbage\n")
    with pytest.raises(DataError, match="cannot read CSV"):
        import_files(_cfg(tmp_path), binary)
    with pytest.raises(DataError, match="file not found"):
        import_files(_cfg(tmp_path), tmp_path / "nope.csv")
    assert not (tmp_path / "raw").exists()


def test_config_errors(tmp_path, ohlcv_csv):
    with pytest.raises(ConfigError, match="unknown exchange calendar"):
        import_files(_cfg(tmp_path, "data.calendar=NOPE"), ohlcv_csv)
    with pytest.raises(ConfigError, match=r"unknown (key|field)"):
        import_files(_cfg(tmp_path, "+data.columns.colour=X"), ohlcv_csv)
    with pytest.raises(ConfigError, match="close / adj_close"):
        import_files(_cfg(tmp_path, "data.columns.close=null"), ohlcv_csv)
    with pytest.raises(ConfigError, match="cannot tell the format"):
        import_files(_cfg(tmp_path), ohlcv_csv.rename(tmp_path / "prices.dat"))
    assert not (tmp_path / "raw").exists()
