"""The raw tables: the only contract between the sources (synthetic, jquants, files) and the dataset builder.

Every source writes `<raw_dir>/<table>.parquet` with J-Quants V2-style column names and the dtypes below.
`Code` is always a string (the 5-digit LocalCode for Japanese data), dates are `pl.Date`.

daily_quotes       Date, Code, O, H, L, C, Vo, Va, AdjFactor, AdjO, AdjH, AdjL, AdjC, AdjVo, UL, LL
                   Raw (O..C, Vo, Va) and split-adjusted (Adj*) prices. AdjFactor is set on the ex-date row
                   (1:2 split -> 0.5); adjusted(t) = raw(t) * prod_{s>t} AdjFactor(s). Only Date, Code, AdjC are
                   required (user files); the builder skips the feature blocks whose inputs are absent.
                   UL / LL: "1" when the day hit the upper / lower daily price limit (J-Quants), kept as sent.
listed_info        Date, Code, CoName, S17, S33, Mkt, ScaleCat
                   (snapshots; Mkt 0111 Prime / 0112 Standard / 0113 Growth)
topix              Date, O, H, L, C
trading_calendar   Date, HolDiv   (J-Quants HolidayDivision: "1" session, "2" half-day session, "0"/"3" closed)
statements         DiscDate, DiscTime ("HH:MM:SS", JST), Code, CurPerType (1Q/2Q/3Q/FY), CurFYSt, CurFYEn,
                   Sales, OP, NP, EPS, Eq, TA, FOP, FNP, FEPS, FDivAnn, ShOut (issued shares at period end),
                   ChgAcEst, RetroRst (accounting-estimate change / retrospective restatement flags),
                   TrShFY (treasury shares at period end), NxFSales, NxFOP, NxFNp, NxFEPS, NxFDivAnn (next-year
                   forecasts, given with the FY results)
investor_types     PubDate, StDate, EnDate, Section, then {Frgn, Ind, Prop, Brk, TrstBnk, InvTr, Tot} x
                   {Sell, Buy, Tot, Bal} (e.g. FrgnBal = foreigners' net buying, value in JPY); weekly
margin_interest    PubDate, Date, Code, ShrtVol, LongVol, ShrtNegVol, LongNegVol, ShrtStdVol, LongStdVol, IssType;
                   weekly
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from gogooku3.core.errors import DataError, SchemaError, rows_hint
from gogooku3.core.io import crash_point, read_json, write_json, write_parquet

log = logging.getLogger(__name__)

INVESTORS = ("Frgn", "Ind", "Prop", "Brk", "TrstBnk", "InvTr", "Tot")
FLOW_KINDS = ("Sell", "Buy", "Tot", "Bal")


@dataclass(frozen=True)
class TableSpec:
    name: str
    required: dict[str, pl.DataType]
    optional: dict[str, pl.DataType] = field(default_factory=dict)
    key: tuple[str, ...] = ()
    positive: tuple[str, ...] = ()  # columns that must be > 0 where not null

    @property
    def columns(self) -> dict[str, pl.DataType]:
        return {**self.required, **self.optional}


F64, DATE, STR = pl.Float64(), pl.Date(), pl.Utf8()

TABLES: dict[str, TableSpec] = {
    "daily_quotes": TableSpec(
        "daily_quotes",
        required={"Date": DATE, "Code": STR, "AdjC": F64},
        optional={
            **{c: F64 for c in ("O", "H", "L", "C", "Vo", "Va", "AdjFactor", "AdjO", "AdjH", "AdjL", "AdjVo")},
            "UL": STR,
            "LL": STR,
        },
        key=("Code", "Date"),
        positive=("O", "H", "L", "C", "AdjO", "AdjH", "AdjL", "AdjC", "AdjFactor"),
    ),
    "listed_info": TableSpec(
        "listed_info",
        required={"Date": DATE, "Code": STR},
        optional={"CoName": STR, "S17": STR, "S33": STR, "Mkt": STR, "ScaleCat": STR},
        key=("Code", "Date"),
    ),
    "topix": TableSpec(
        "topix",
        required={"Date": DATE, "C": F64},
        optional={"O": F64, "H": F64, "L": F64},
        key=("Date",),
        positive=("O", "H", "L", "C"),
    ),
    "trading_calendar": TableSpec("trading_calendar", required={"Date": DATE, "HolDiv": STR}, key=("Date",)),
    "statements": TableSpec(
        "statements",
        required={"DiscDate": DATE, "Code": STR},
        optional={
            "DiscTime": STR,
            "CurPerType": STR,
            "CurFYSt": DATE,
            "CurFYEn": DATE,
            **{
                c: F64
                for c in (
                    "Sales",
                    "OP",
                    "NP",
                    "EPS",
                    "Eq",
                    "TA",
                    "FOP",
                    "FNP",
                    "FEPS",
                    "FDivAnn",
                    "ShOut",
                    "TrShFY",
                    "NxFSales",
                    "NxFOP",
                    "NxFNp",
                    "NxFEPS",
                    "NxFDivAnn",
                )
            },
            "ChgAcEst": STR,
            "RetroRst": STR,
        },
    ),
    "investor_types": TableSpec(
        "investor_types",
        required={"PubDate": DATE, "Section": STR},
        optional={"StDate": DATE, "EnDate": DATE, **{f"{i}{k}": F64 for i in INVESTORS for k in FLOW_KINDS}},
        key=("Section", "PubDate", "StDate"),
    ),
    "margin_interest": TableSpec(
        "margin_interest",
        required={"Date": DATE, "Code": STR},
        optional={
            "PubDate": DATE,
            **{c: F64 for c in ("ShrtVol", "LongVol", "ShrtNegVol", "LongNegVol", "ShrtStdVol", "LongStdVol")},
            "IssType": STR,
        },
        key=("Code", "Date"),
    ),
}


def table_path(raw_dir: str | Path, name: str) -> Path:
    return Path(raw_dir) / f"{name}.parquet"


# An import writes its tables one by one: this mark, written first and removed last, tells readers that the tables
# of the directory may be a mix of two imports (the command was killed or is still running).
UNFINISHED = ".import_unfinished.json"
AGAIN = {"synthetic": "gogooku3 data synth", "jquants": "gogooku3 data fetch", "files": "gogooku3 data import PATH"}


def check_finished(raw_dir: str | Path) -> None:
    """Raise DataError when the last import into `raw_dir` did not finish (its tables may be half old)."""
    mark = Path(raw_dir) / UNFINISHED
    if not mark.exists():
        return
    try:
        info = read_json(mark)
    except DataError:
        info = {}
    source = str(info.get("source", "?"))
    again = str(info.get("again") or AGAIN.get(source, "gogooku3 data import|fetch|synth"))
    raise DataError(
        f"{raw_dir}: the last import into it ({source}) was interrupted before all its tables were written (or is "
        f"still running); run `{again}` again"
    )


def conform(df: pl.DataFrame, name: str, source: str | Path = "<memory>") -> pl.DataFrame:
    """Validate `df` against table `name` and cast it to the schema's dtypes (extra columns kept as they are).

    Raises SchemaError naming the source, the column and example rows.
    """
    spec = TABLES[name]
    missing = [c for c in spec.required if c not in df.columns]
    if missing:
        raise SchemaError(f"{source}: table '{name}' lacks required column(s) {', '.join(missing)}")
    if df.height == 0:
        raise DataError(f"{source}: table '{name}' is empty")
    casts = []
    for col, dtype in spec.columns.items():
        if col not in df.columns or df.schema[col] == dtype:
            continue
        if dtype == pl.Utf8:
            casts.append(pl.col(col).cast(pl.Utf8))
        elif dtype == pl.Date:
            casts.append(
                pl.col(col).cast(pl.Date, strict=False)
                if df.schema[col] != pl.Utf8
                else pl.col(col).str.to_date(strict=False)
            )
        else:
            casts.append(pl.col(col).cast(dtype, strict=False))
    out = df.with_columns(casts) if casts else df
    for col in spec.columns:
        if col in df.columns and col in out.columns:
            bad = out[col].is_null() & df[col].is_not_null()
            if bad.any():
                rows = (bad.arg_true() + 0).to_list()
                examples = df[col].filter(bad).head(3).to_list()
                raise SchemaError(
                    f"{source}: column '{col}' has values not convertible to {spec.columns[col]} "
                    f"at rows {rows_hint(rows)} (e.g. {examples})"
                )
    for col in spec.required:
        nulls = out[col].is_null()
        if nulls.any():
            raise SchemaError(
                f"{source}: required column '{col}' is null at rows {rows_hint(nulls.arg_true().to_list())}"
            )
    _check_finite(out, name, source)
    for col in spec.positive:
        if col in out.columns:
            bad = out[col] <= 0
            if bad.any():
                raise SchemaError(
                    f"{source}: column '{col}' must be > 0; non-positive at rows {rows_hint(bad.arg_true().to_list())}"
                )
    if spec.key:
        dup = out.select(spec.key).is_duplicated()
        if dup.any():
            ex = out.filter(dup).select(spec.key).unique(maintain_order=True).head(3).rows()
            raise SchemaError(
                f"{source}: duplicate ({', '.join(spec.key)}) keys at rows "
                f"{rows_hint(dup.arg_true().to_list())}, e.g. {ex}"
            )
    return out


def _check_finite(df: pl.DataFrame, name: str, source: str | Path) -> None:
    """No float column of a raw table may hold inf / -inf (it would become an infinite return or label)."""
    for col, dtype in df.schema.items():
        if dtype.is_float():
            bad = df[col].is_infinite()
            if bad.any():
                raise SchemaError(
                    f"{source}: table '{name}' column '{col}' holds non-finite values (inf) at rows "
                    f"{rows_hint(bad.arg_true().to_list())}; every number must be finite (missing "
                    f"values are null)"
                )


def write_table(df: pl.DataFrame, raw_dir: str | Path, name: str) -> Path:
    """Validate and atomically write one raw table; returns its path."""
    return _write_conformed(conform(df, name), raw_dir, name)


def _write_conformed(df: pl.DataFrame, raw_dir: str | Path, name: str) -> Path:
    sort = [c for c in (TABLES[name].key or ("Date",)) if c in df.columns]
    return write_parquet(df.sort(sort) if sort else df, table_path(raw_dir, name))


def scan_table(raw_dir: str | Path, name: str) -> pl.LazyFrame | None:
    """Lazily scan a raw table, or None when the source does not provide it. Corrupt files raise DataError."""
    p = table_path(raw_dir, name)
    if not p.exists():
        return None
    check_finished(raw_dir)
    try:
        lf = pl.scan_parquet(p)
        lf.collect_schema()
    except Exception as e:  # polars raises ComputeError/OSError variants on corrupt footers
        raise DataError(f"{p}: cannot read parquet ({type(e).__name__}: {str(e).splitlines()[0]})") from e
    return lf


def read_table(raw_dir: str | Path, name: str) -> pl.DataFrame | None:
    """Read and validate a raw table (None when absent)."""
    lf = scan_table(raw_dir, name)
    if lf is None:
        return None
    p = table_path(raw_dir, name)
    try:
        df = lf.collect()
    except Exception as e:
        raise DataError(f"{p}: cannot read parquet ({type(e).__name__}: {str(e).splitlines()[0]})") from e
    return conform(df, name, p)


def replace_raw_tables(
    frames: dict[str, pl.DataFrame],
    raw_dir: str | Path,
    source: str,
    on_table: Callable[[str], None] | None = None,
    again: str | None = None,
) -> dict[str, Path]:
    """Validate every table, write them atomically, then remove raw tables this source did not provide.

    Used by every source (synthetic, files, jquants): tables left over from another source
    (e.g. synthetic statements) would otherwise be mixed with the new data. The tables are published as one unit:
    the `UNFINISHED` mark (with `again`, the command that redoes the import) is written before the first table and
    removed after the last step, so a reader of a half-written directory is told to import again (`check_finished`).
    """
    raw_dir = Path(raw_dir)
    checked = {name: conform(df, name, f"{source}:{name}") for name, df in frames.items()}
    mark = raw_dir / UNFINISHED
    write_json(mark, {"source": source, "again": again or AGAIN.get(source, "")})
    written: dict[str, Path] = {}
    for name, df in checked.items():
        written[name] = _write_conformed(df, raw_dir, name)  # validated above, before any write
        if on_table is not None:
            on_table(name)
    for name in TABLES:
        stale = table_path(raw_dir, name)
        if name not in written and stale.exists():
            log.info("removing stale raw table %s (not provided by source %s)", stale, source)
            stale.unlink()
            crash_point(f"remove {stale.name}")
    with contextlib.suppress(FileNotFoundError):
        mark.unlink()
    crash_point("import finished")
    for name, p in written.items():
        log.info("wrote %s (%d rows)", p, checked[name].height)
    return written
