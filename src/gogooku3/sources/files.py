"""The files source: a user's own long-format price file (CSV or parquet) turned into raw tables.

`import_files(cfg, path)` maps the file's columns (`data.columns`) to `daily_quotes`, derives the
`trading_calendar` from an exchange calendar (`data.calendar`, XTKS by default) or from the file's own dates,
and writes `listed_info` when a sector/market/name column is mapped. Unmapped numeric columns pass through as
`x_<name>` user features. Everything is validated in memory first; on any problem one DataError names the file,
the column and example rows, and nothing is written.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import polars as pl

from gogooku3.core.calendar import TradingCalendar
from gogooku3.core.errors import ConfigError, DataError
from gogooku3.core.scalars import as_date
from gogooku3.sources.file_checks import (
    ROW,
    check_float32,
    check_header,
    check_label_names,
    check_ohlc,
    check_short_rows,
    check_ticks,
    csv_bytes,
)
from gogooku3.sources.file_checks import bad as _bad
from gogooku3.sources.schema import TABLES, conform, replace_raw_tables

if TYPE_CHECKING:
    from gogooku3.config.schema import FilesDataSettings, Settings

log = logging.getLogger(__name__)

# config field -> raw-table column
PRICE_FIELDS = {
    "open": "O",
    "high": "H",
    "low": "L",
    "close": "C",
    "volume": "Vo",
    "turnover": "Va",
    "adj_factor": "AdjFactor",
    "adj_open": "AdjO",
    "adj_high": "AdjH",
    "adj_low": "AdjL",
    "adj_close": "AdjC",
    "adj_volume": "AdjVo",
}
LISTED_FIELDS = {"sector": "S33", "sector17": "S17", "market": "Mkt", "name": "CoName"}
KNOWN_FIELDS = ("date", "code", *PRICE_FIELDS, *LISTED_FIELDS)
POSITIVE = ("O", "H", "L", "C", "AdjO", "AdjH", "AdjL", "AdjC", "AdjFactor")
NON_NEGATIVE = ("Vo", "Va", "AdjVo")
CSV_SUFFIXES = (".csv", ".tsv", ".txt")
PARQUET_SUFFIXES = (".parquet", ".pq")


@dataclass(frozen=True)
class ImportSettings:
    columns: dict[str, str]  # field -> file column (fields mapped to null are left out)
    fmt: str
    separator: str
    null_values: tuple[str, ...]
    date_format: str | None
    calendar: str
    extra_columns: str | tuple[str, ...]
    decimal_comma: bool
    tz: str  # the exchange's time zone: timestamps with a zone are converted to it before taking the date
    allow_columns: tuple[str, ...]
    ohlc_tolerance: float
    bad_ticks: str
    tick_jump: float

    @classmethod
    def from_cfg(cls, data: FilesDataSettings, exchange: str = "XTKS") -> ImportSettings:
        """`exchange`: the calendar whose time zone applies with data.calendar=dates (features.calendar_exchange)."""
        mapping = dataclasses.asdict(data.columns)
        unknown = sorted(set(mapping) - set(KNOWN_FIELDS))
        if unknown:
            raise ConfigError(f"data.columns: unknown field(s) {', '.join(unknown)} (known: {', '.join(KNOWN_FIELDS)})")
        columns = {k: v for k, v in mapping.items() if v}
        for req in ("date", "code"):
            if req not in columns:
                raise ConfigError(f"data.columns.{req} must name a column of the file")
        if "close" not in columns and "adj_close" not in columns:
            raise ConfigError("data.columns: map at least one of close / adj_close")
        extra: str | tuple[str, ...]
        if isinstance(data.extra_columns, str):
            extra = data.extra_columns
            if extra not in ("all", "none"):
                raise ConfigError(f"data.extra_columns='{extra}' must be all, none or a list of column names")
        else:
            extra = tuple(data.extra_columns)
        fmt = data.format.lower()
        if fmt not in ("auto", "csv", "parquet"):
            raise ConfigError(f"data.format='{fmt}' must be auto, csv or parquet")
        return cls(
            columns=columns,
            fmt=fmt,
            separator=data.separator,
            null_values=tuple(data.null_values),
            date_format=data.date_format or None,
            calendar=data.calendar,
            extra_columns=extra,
            decimal_comma=_decimal_comma(data),
            tz=exchange_tz(exchange if data.calendar == "dates" else data.calendar),
            allow_columns=tuple(data.allow_columns),
            ohlc_tolerance=data.ohlc_tolerance,
            bad_ticks=data.bad_ticks,
            tick_jump=data.tick_jump,
        )


def exchange_tz(name: str) -> str:
    """The time zone of exchange calendar `name` (XTKS: Asia/Tokyo); an unknown name is the calendar's ConfigError."""
    import exchange_calendars as xcals

    if name not in xcals.get_calendar_names(include_aliases=True):
        raise ConfigError(
            f"unknown exchange calendar '{name}' (e.g. XTKS, XNYS; or 'dates' for a file's own dates: "
            "data.calendar=dates)"
        )
    factories = getattr(xcals.calendar_utils.global_calendar_dispatcher, "_calendar_factories", {})
    factory = factories.get(xcals.resolve_alias(name))
    return str(factory.tz if factory is not None else xcals.get_calendar(name).tz)


# ---------------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------------
def _format_of(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        return "csv"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    raise ConfigError(f"{path}: cannot tell the format from the suffix '{suffix}'; set data.format=csv|parquet")


def read_user_file(path: Path, s: ImportSettings) -> pl.DataFrame:
    """Read the whole file; the date and code columns of a CSV are read as text (codes keep leading zeros)."""
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a file; give the CSV or parquet file itself")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    fmt = _format_of(path, s.fmt)
    try:
        if fmt == "csv":
            data = csv_bytes(path)
            header = pl.read_csv(data, separator=s.separator, n_rows=0).columns
            _check_separator(header, path, s)
            check_header(data, path, s.separator)
            check_short_rows(data, path, s.separator, len(header))
            text_cols = {s.columns[f]: pl.Utf8 for f in ("date", "code") if s.columns[f] in header}
            df = pl.read_csv(
                data,
                separator=s.separator,
                schema_overrides=text_cols,
                null_values=list(s.null_values),
                infer_schema_length=10_000,
                try_parse_dates=False,
                decimal_comma=s.decimal_comma,
            )
        else:
            df = pl.read_parquet(path)
    except DataError:
        raise
    except Exception as e:  # polars/pyarrow raise many types for malformed input
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        hint = "; the file is not UTF-8 text (Shift-JIS / cp932?): save it as UTF-8" if "utf-8" in first else ""
        raise DataError(f"{path}: cannot read {fmt.upper()} ({type(e).__name__}: {first[:200]}){hint}") from e
    if df.height == 0:
        raise DataError(f"{path}: no data rows")
    return df.with_row_index(ROW, offset=1)


# ---------------------------------------------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------------------------------------------
# an ISO timestamp: date, time of day, optional zone (Z, +09:00, +0900)
_STAMP = r"^(\d{4}-\d{2}-\d{2})[T ](\d{1,2}):(\d{2})(?::(\d{2})(?:[.,]\d+)?)?\s*(Z|z|[+-]\d{2}:?\d{2})?$"
_TIME_DIRECTIVES = ("%H", "%I", "%M", "%S", "%T", "%R", "%z", "%Z", "%c", "%+", "%s")


def _parse_dates(df: pl.DataFrame, col: str, path: Path, fmt: str | None, tz: str) -> pl.Series:
    """The trading date of each row. Timestamps with a zone are converted to the exchange's zone `tz` before the
    date is taken (2024-01-04T15:00:00Z is 2024-01-05 in Tokyo), except at midnight of their own zone (a date written
    as a timestamp, 2024-01-04T00:00:00Z: that date); naive ones must be at midnight."""
    src = df[col]
    if src.dtype == pl.Date:
        return src
    if isinstance(src.dtype, pl.Datetime):
        return _stamp_dates(df, src, col, path, tz)
    text = src.cast(pl.Utf8).str.strip_chars()
    if fmt and any(d in fmt for d in _TIME_DIRECTIVES):
        stamps = text.str.to_datetime(fmt, strict=False)
        bad = stamps.is_null() & src.is_not_null()
        if bad.any():
            raise _bad(df, bad, path, col, f"has dates not in format '{fmt}'", {col: col})
        return _stamp_dates(df, stamps, col, path, tz)
    if fmt:
        out = text.str.to_date(fmt, strict=False)
    else:
        out = _iso_stamp_dates(df, text, col, path, tz)
        iso = text.str.slice(0, 10).str.to_date("%Y-%m-%d", strict=False)
        plain = text.str.len_chars() <= 10
        out = out.fill_null(pl.select(pl.when(plain).then(iso)).to_series()).fill_null(
            text.str.to_date("%Y%m%d", strict=False)
        )
    bad = out.is_null() & src.is_not_null()
    if bad.any():
        hint = f"format '{fmt}'" if fmt else "YYYY-MM-DD or YYYYMMDD (set data.date_format)"
        raise _bad(df, bad, path, col, f"has dates not in {hint}", {col: col})
    if src.is_null().any():
        raise _bad(df, src.is_null(), path, col, "is empty", {col: col})
    return out


def _iso_stamp_dates(df: pl.DataFrame, text: pl.Series, col: str, path: Path, tz: str) -> pl.Series:
    """Dates of the ISO timestamps in `text` (null elsewhere): zoned ones in `tz`, naive ones at midnight."""
    parts = text.str.extract_groups(_STAMP).struct.unnest()
    day, hh, mm, ss, zone = (parts[c] for c in parts.columns)
    if day.is_null().all():
        return pl.Series(col, [None] * len(text), pl.Date)
    clock = hh.cast(pl.Int64) * 3600 + mm.cast(pl.Int64) * 60 + ss.fill_null("0").cast(pl.Int64)
    z = zone.str.to_uppercase().str.replace(":", "", literal=True)
    offset = pl.select(
        pl.when(z == "Z")
        .then(0)
        .otherwise(
            (
                z.str.slice(1, 2).cast(pl.Int64, strict=False) * 3600
                + z.str.slice(3, 2).cast(pl.Int64, strict=False) * 60
            )
            * pl.when(z.str.starts_with("-")).then(-1).otherwise(1)
        )
    ).to_series()
    naive = day.str.to_datetime("%Y-%m-%d", strict=False, time_unit="ms") + pl.Series(clock * 1000).cast(
        pl.Duration("ms")
    )
    utc = (naive - pl.Series(offset.fill_null(0) * 1000).cast(pl.Duration("ms"))).dt.replace_time_zone("UTC")
    zoned = utc.dt.convert_time_zone(tz).dt.date()
    odd = zone.is_null() & (clock != 0).fill_null(False)
    if odd.any():
        raise _naive_times(df, odd, path, col, tz)
    # midnight in its own zone is a date written as a timestamp (2024-01-04T00:00:00Z): that date, in any exchange
    converted = zone.is_not_null() & (clock != 0)
    return pl.select(pl.when(converted).then(zoned).otherwise(naive.dt.date())).to_series().alias(col)


def _stamp_dates(df: pl.DataFrame, stamps: pl.Series, col: str, path: Path, tz: str) -> pl.Series:
    """Dates of a datetime column: zoned -> converted to `tz`; naive -> must be at midnight."""
    dtype = stamps.dtype
    if isinstance(dtype, pl.Datetime) and dtype.time_zone is not None:
        midnight = stamps == stamps.dt.truncate("1d")  # a date written as a timestamp of its zone's midnight
        out = pl.select(
            pl.when(midnight).then(stamps.dt.date()).otherwise(stamps.dt.convert_time_zone(tz).dt.date())
        ).to_series()
    else:
        odd = (stamps != stamps.dt.truncate("1d")).fill_null(False)
        if odd.any():
            raise _naive_times(df, odd, path, col, tz)
        out = stamps.dt.date()
    if stamps.is_null().any():
        raise _bad(df, stamps.is_null(), path, col, "is empty", {col: col})
    return out.alias(col)


def _naive_times(df: pl.DataFrame, mask: pl.Series, path: Path, col: str, tz: str) -> DataError:
    return _bad(
        df,
        mask,
        path,
        col,
        "has times of day without a time zone",
        {col: col},
        hint=f"Which trading date they mean is unclear: give dates, or timestamps with their zone "
        f"(2024-01-04T15:00:00Z), which are converted to the exchange's time zone {tz}",
    )


def _to_float(df: pl.DataFrame, col: str, path: Path, s: ImportSettings | None = None) -> pl.Series:
    """A numeric column as Float64 (NaN -> null); text is parsed by `_parse_numbers`. Non-numeric, ambiguous
    (decimal or thousands comma?) and non-finite values are a DataError naming the column and rows."""
    src = df[col]
    if src.dtype == pl.Boolean:
        return src.cast(pl.Float64)
    if src.dtype.is_numeric():
        out = src.cast(pl.Float64)
    else:
        out, bad, ambiguous = _parse_numbers(src, s)
        if ambiguous.any():
            raise _bad(
                df,
                ambiguous,
                path,
                col,
                "has numbers whose comma or dot may be a decimal mark or a thousands separator",
                {col: col},
                hint=_comma_hint(s),
            )
        if bad.any():
            raise _bad(df, bad, path, col, "has non-numeric values", {col: col})
    _check_finite(df, out, path, col)
    check_float32(df, out, path, col)
    return out.fill_nan(None)


# ---- numbers: decimal commas, thousands separators, non-finite values, text columns ------------------------------
_GROUPED = {
    False: r"^[+-]?\d{1,3}(,\d{3})+(\.\d+)?$",  # 1,234,567.5 (thousands commas, decimal dot)
    True: r"^[+-]?\d{1,3}(\.\d{3})+(,\d+)?$",
}  # 1.234.567,5 (thousands dots, decimal comma)
SEPARATORS = (",", ";", "\t", "|")


def _decimal_comma(data: FilesDataSettings) -> bool:
    """`data.decimal_comma`, refused with the default separator: a comma cannot be both."""
    on = data.decimal_comma
    if on and data.separator == ",":
        raise ConfigError(
            "data.decimal_comma=true needs a field separator other than ','; set data.separator=';' (or the file's own)"
        )
    return on


def _check_separator(header: list[str], path: Path, s: ImportSettings) -> None:
    """A header read as one column that contains another usual separator: the file uses that one."""
    if len(header) != 1:
        return
    found = [sep for sep in SEPARATORS if sep != s.separator and sep in header[0]]
    if found:
        shown = "\\t" if found[0] == "\t" else found[0]
        raise DataError(
            f"{path}: the header is one column {header[0][:80]!r} with separator {s.separator!r}; the "
            f"file looks separated by {shown!r}: set data.separator='{shown}'"
        )


def _comma_hint(s: ImportSettings | None) -> str:
    if s is not None and s.decimal_comma:
        return (
            "With data.decimal_comma=true a comma is the decimal mark and dots may only group thousands "
            "(1.234,5); fix these values or set data.decimal_comma=false"
        )
    return (
        "If the comma is the decimal mark (4117,9), set data.decimal_comma=true (with data.separator=';'); "
        "thousands commas are read only in comma-separated files as 1,234,567.5"
    )


def _parse_numbers(src: pl.Series, s: ImportSettings | None) -> tuple[pl.Series, pl.Series, pl.Series]:
    """Text -> Float64 without guessing: (values, non-numeric mask, ambiguous mask). With `data.decimal_comma` the
    comma is the decimal mark and dots may group thousands; otherwise the dot is the decimal mark and commas may
    group thousands, in comma-separated files only (in a ';' file `4,117` may be 4.117). Any other comma or dot
    use is ambiguous."""
    decimal_comma = bool(s is not None and s.decimal_comma)
    separator = "," if s is None else s.separator
    text = src.cast(pl.Utf8).str.strip_chars()
    grouped = text.str.contains(_GROUPED[decimal_comma]).fill_null(False)
    if decimal_comma:
        cleaned = pl.Series(text).str.replace_all(r"\.", "").str.replace(",", ".")
        ambiguous = text.str.contains(r"\.").fill_null(False) & ~grouped
        cleaned = pl.select(pl.when(grouped | ~ambiguous).then(cleaned).otherwise(None)).to_series()
    else:
        grouped = grouped & (separator == ",")
        ambiguous = text.str.contains(",").fill_null(False) & ~grouped
        cleaned = pl.select(
            pl.when(grouped).then(text.str.replace_all(",", "")).when(ambiguous).then(None).otherwise(text)
        ).to_series()
    out = cleaned.cast(pl.Float64, strict=False)
    bad = out.is_null() & text.is_not_null() & (text != "") & ~ambiguous
    return out, bad, ambiguous


def _check_finite(df: pl.DataFrame, values: pl.Series, path: Path, col: str) -> None:
    """inf / -inf (as written or from overflow) is refused: it would become an infinite return or label."""
    inf = values.is_infinite().fill_null(False)
    if inf.any():
        raise _bad(
            df,
            inf,
            path,
            col,
            "has non-finite values (inf or -inf)",
            {col: col},
            hint="Every numeric value must be a finite number; leave missing values empty",
        )


def _numeric_text(raw: pl.DataFrame, col: str, path: Path, s: ImportSettings) -> bool:
    """Whether an unmapped text column under data.extra_columns=all is numbers written as text (1.234,5; 4,117.5).
    Mostly numbers but some cells not -> a DataError naming them (a column is never dropped for a few bad cells);
    text -> False, with a warning that it is left out."""
    values, bad, ambiguous = _parse_numbers(raw[col], s)
    filled = raw[col].cast(pl.Utf8).str.strip_chars().fill_null("") != ""
    n = int(filled.sum())
    if not n or int((values.is_not_null() & filled).sum()) / n < 0.5:
        log.warning(
            "%s: column '%s' holds text (%s), not imported as a user feature; map it in data.columns or "
            "list the columns to import in data.extra_columns",
            path,
            col,
            raw[col].dtype,
        )
        return False
    if ambiguous.any():
        raise _bad(
            raw,
            ambiguous,
            path,
            col,
            "has numbers whose comma or dot may be a decimal mark or a thousands separator",
            {col: col},
            hint=_comma_hint(s),
        )
    if bad.any():
        raise _bad(
            raw,
            bad,
            path,
            col,
            "is numeric but has non-numeric values",
            {col: col},
            hint="Fix them, add them to data.null_values, or leave the column out with data.extra_columns=[...]",
        )
    return True


def _feature_name(column: str) -> str:
    return "x_" + (re.sub(r"[^0-9A-Za-z]+", "_", column).strip("_").lower() or "col")


# ---------------------------------------------------------------------------------------------------------------
# Building the tables
# ---------------------------------------------------------------------------------------------------------------
def _off_session_hint(off: pl.Series, exchange: str, tz: str) -> str:
    """What to do about rows on non-sessions; when most fall on the day before a session, the dates are likely one
    day early (local-midnight timestamps written in UTC without their zone)."""
    nxt = off.dt.offset_by("1d")
    try:
        early = TradingCalendar.from_exchange(exchange, as_date(nxt.min()), as_date(nxt.max())).is_session(nxt)
    except ConfigError:  # past the calendar's reach: no guess
        early = pl.Series([False])
    text = (
        "Set data.calendar to the file's exchange; data.calendar=dates takes the file's dates as the sessions, right "
        "only if they are the exchange's local trading dates"
    )
    if early.sum() * 2 >= len(early):
        text += (
            f". {int(early.sum())} of these rows fall the day before a session: if the dates come from timestamps "
            f"of {tz} midnight written in UTC, write the timestamps with their zone (2024-01-04T15:00:00Z), which "
            f"are converted to {tz}"
        )
    return text


def _extra_columns(raw: pl.DataFrame, s: ImportSettings, path: Path, used: set[str]) -> dict[str, str]:
    """Unmapped numeric columns -> x_<name>."""
    if s.extra_columns == "none":
        return {}
    if s.extra_columns == "all":
        candidates = [c for c in raw.columns if c not in used and c != ROW]
        picked = [
            c
            for c in candidates
            if raw[c].dtype.is_numeric() or raw[c].dtype == pl.Boolean or _numeric_text(raw, c, path, s)
        ]
    else:
        missing = [c for c in s.extra_columns if c not in raw.columns]
        if missing:
            raise DataError(
                f"{path}: data.extra_columns names missing column(s) {', '.join(missing)}; "
                f"file has {', '.join(c for c in raw.columns if c != ROW)}"
            )
        picked = [c for c in s.extra_columns if c not in used]
    check_label_names(picked, path, s.allow_columns)
    names: dict[str, str] = {}
    for c in picked:
        name = _feature_name(c)
        if name in names.values():
            raise DataError(f"{path}: columns map to the same feature name '{name}'; rename one of them")
        names[c] = name
    return names


def build_tables(raw: pl.DataFrame, path: Path, s: ImportSettings) -> dict[str, pl.DataFrame]:
    """Validate the user's frame and return the raw tables (conformed, in memory)."""
    cols = s.columns
    for req in ("date", "code"):
        if cols[req] not in raw.columns:
            raise DataError(
                f"{path}: missing required column '{cols[req]}' (data.columns.{req}); "
                f"file has {', '.join(c for c in raw.columns if c != ROW)}"
            )
    present = {f: c for f, c in cols.items() if c in raw.columns}
    if "close" not in present and "adj_close" not in present:
        wanted = " or ".join(f"'{cols[f]}' (data.columns.{f})" for f in ("close", "adj_close") if f in cols)
        raise DataError(
            f"{path}: missing required column {wanted}; file has {', '.join(c for c in raw.columns if c != ROW)}"
        )
    absent = [f"{f} ({c})" for f, c in cols.items() if c not in raw.columns]
    if absent:
        log.info("%s: not in the file, so absent: %s", path, ", ".join(absent))

    date_col, code_col = cols["date"], cols["code"]
    code = raw[code_col].cast(pl.Utf8).str.strip_chars()
    if (code.is_null() | (code == "")).any():
        raise _bad(raw, code.is_null() | (code == ""), path, code_col, "is empty", {date_col: date_col})
    out = pl.DataFrame({ROW: raw[ROW], "Date": _parse_dates(raw, date_col, path, s.date_format, s.tz), "Code": code})
    show = {"Code": code_col, "Date": date_col}

    prices = {
        PRICE_FIELDS[f]: _to_float(raw, c, path, s).alias(PRICE_FIELDS[f])
        for f, c in present.items()
        if f in PRICE_FIELDS
    }
    # With only one of close / adj_close, both C and AdjC are that column (open/high/low/volume on its basis).
    if "C" in prices and "AdjC" not in prices:
        prices["AdjC"] = prices["C"].alias("AdjC")
    elif "AdjC" in prices and "C" not in prices:
        prices["C"] = prices["AdjC"].alias("C")
    out = out.with_columns(list(prices.values()))
    src_of = {PRICE_FIELDS[f]: c for f, c in present.items() if f in PRICE_FIELDS}
    src_of.setdefault("AdjC", src_of.get("C", ""))
    src_of.setdefault("C", src_of.get("AdjC", ""))

    # Rows without a close carry no price: dropped (with a warning), not imported as nulls.
    no_close = out["AdjC"].is_null()
    if no_close.any():
        log.warning(
            "%s: dropping %d row(s) with an empty close (column '%s'), e.g. rows %s",
            path,
            int(no_close.sum()),
            src_of["AdjC"],
            out.filter(no_close)[ROW].head(5).to_list(),
        )
    for cols_, test, problem in (
        (POSITIVE, lambda c: c <= 0, "has non-positive prices"),
        (NON_NEGATIVE, lambda c: c < 0, "has negative values"),
    ):
        for col in (c for c in cols_ if c in out.columns):
            bad = test(out[col])
            if bad.any():
                raise _bad(out, bad, path, src_of[col], problem, {**show, col: src_of[col]})
    given = {PRICE_FIELDS[f] for f in present if f in PRICE_FIELDS}
    check_ohlc(out, path, src_of, show, given | ({"C", "AdjC"} & set(prices)), s.ohlc_tolerance)
    check_ticks(out.filter(~no_close), path, src_of, show, s.tick_jump, s.bad_ticks)

    # Adjusted columns not given are derived from the raw ones with the close's adjustment ratio AdjC / C.
    ratio = pl.col("AdjC") / pl.col("C")
    derived = []
    for raw_col, adj_col in (("O", "AdjO"), ("H", "AdjH"), ("L", "AdjL")):
        if raw_col in out.columns and adj_col not in out.columns:
            derived.append((pl.col(raw_col) * ratio).alias(adj_col))
    if "Vo" in out.columns and "AdjVo" not in out.columns:
        derived.append((pl.col("Vo") / ratio).alias("AdjVo"))
    out = out.with_columns(derived)

    dup = out.select("Code", "Date").is_duplicated()
    if dup.any():
        raise _bad(out, dup, path, f"{code_col}, {date_col}", "has duplicate (Code, Date) keys", show)

    dates = out["Date"]
    if s.calendar == "dates":
        calendar = TradingCalendar.from_dates(dates)
        cal_name = "the file's own dates"
    else:
        calendar = TradingCalendar.from_exchange(s.calendar, as_date(dates.min()), as_date(dates.max()))
        cal_name = f"{s.calendar} trading sessions"
        off = ~calendar.is_session(dates)
        if off.any():
            bad = out.filter(off).with_columns(pl.col("Date").dt.strftime("%Y-%m-%d (%a)").alias("Date"))
            raise _bad(
                bad,
                pl.lit(True),
                path,
                date_col,
                f"has rows on days that are not {cal_name}",
                show,
                hint=_off_session_hint(out.filter(off)["Date"], s.calendar, s.tz),
            )

    extras = _extra_columns(raw, s, path, used=set(present.values()))
    if extras:
        out = out.with_columns(_to_float(raw, c, path, s).cast(pl.Float64).alias(n) for c, n in extras.items())
        log.info("%s: %d user feature column(s): %s", path, len(extras), ", ".join(extras.values()))

    listed_cols = {LISTED_FIELDS[f]: c for f, c in present.items() if f in LISTED_FIELDS}
    out = out.with_columns(raw[c].cast(pl.Utf8).str.strip_chars().alias(k) for k, c in listed_cols.items())
    out = out.filter(~no_close).sort("Code", "Date")

    quote_cols = [
        "Date",
        "Code",
        *[c for c in TABLES["daily_quotes"].columns if c in out.columns and c not in ("Date", "Code")],
        *extras.values(),
    ]
    tables = {"daily_quotes": out.select(quote_cols)}
    first, last = as_date(dates.min()), as_date(dates.max())
    days = pl.date_range(first, last, "1d", eager=True).alias("Date")
    tables["trading_calendar"] = pl.DataFrame({"Date": days}).with_columns(
        pl.when(pl.col("Date").is_in(calendar.sessions.implode()))
        .then(pl.lit("1"))
        .otherwise(pl.lit("0"))
        .alias("HolDiv")
    )
    if listed_cols:
        keys = list(listed_cols)
        changed = pl.any_horizontal([pl.col(k).ne_missing(pl.col(k).shift(1).over("Code")) for k in keys])
        first_row = pl.int_range(pl.len()).over("Code") == 0
        tables["listed_info"] = out.filter(first_row | changed).select("Date", "Code", *keys)
    # conform in memory: a schema problem surfaces before anything is written
    return {name: conform(df, name, path) for name, df in tables.items()}


# ---------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------
def source_config(cfg: Settings, source: str) -> Settings:
    """`cfg`, whose `data` group must be the `source` option: every value comes from the composed config (no second
    Hydra load). `gogooku3 data import PATH` / `data fetch` compose with `data=files` / `data=jquants` themselves
    unless the command line picks a data option (`cli._cfg`)."""
    if cfg.data.source != source:
        raise ConfigError(
            f"data.source is '{cfg.data.source}', not '{source}': compose the config with "
            f"data={source} (its keys are data.* of conf/data/{source}.yaml)"
        )
    return cfg


def import_files(cfg: Settings, path: str | Path) -> dict[str, Path]:
    """Import a user's price file as raw tables in `paths.raw_dir`; returns {table: path}."""
    cfg = source_config(cfg, "files")
    data = cast("FilesDataSettings", cfg.data)  # source_config checked data.source
    s = ImportSettings.from_cfg(data, cfg.features.calendar_exchange)
    path = Path(path).expanduser()
    raw = read_user_file(path, s)
    tables = build_tables(raw, path, s)
    from gogooku3.sources.corporate_actions import check_splits

    tables = check_splits(tables, data.adjust_splits, path)  # data.adjust_splits: warn | adjust | off
    dq = tables["daily_quotes"]
    log.info(
        "%s: %d rows, %d codes, %s..%s, calendar %s",
        path,
        dq.height,
        dq["Code"].n_unique(),
        dq["Date"].min(),
        dq["Date"].max(),
        s.calendar,
    )
    again = f"gogooku3 data import {path}"
    return replace_raw_tables(tables, Path(cfg.paths.raw_dir).expanduser(), source="files", again=again)
